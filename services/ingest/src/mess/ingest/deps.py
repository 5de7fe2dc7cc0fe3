"""Request dependencies: the lifespan's resources and the API-key checks, as ``Annotated`` aliases."""

import logging
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader

from mess.ingest.access import IngestAccess
from mess.ingest.resources import IngestResources
from mess.runtime.access import KEY_HEADER, retry_after

log = logging.getLogger(__name__)


def _resources(request: Request) -> IngestResources:
    resources: IngestResources = request.app.state.resources
    return resources


Resources = Annotated[IngestResources, Depends(_resources)]

_write_key = APIKeyHeader(name=KEY_HEADER, auto_error=False, description="an ingest API key (writes)")


def require_api_key(request: Request, x_api_key: Annotated[str | None, Security(_write_key)] = None) -> None:
    """401 unless ``X-API-Key`` is a write key; 429 with ``Retry-After`` once the key's rate is spent."""
    access: IngestAccess = request.app.state.access
    entry = access.write_keys.match(x_api_key)
    if entry is None:
        # The key is never logged, whether it was right or wrong; the label of a right one is.
        log.info("refused %s %s: %s", request.method, request.url.path, "unknown key" if x_api_key else "no key")
        if not x_api_key:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "send an API key in the X-API-Key header")
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "the X-API-Key is not valid")
    request.state.api_key_label = entry.label
    if access.write_rate is not None:
        wait_s = access.write_rate.take(entry.digest)
        if wait_s > 0:
            log.info("rate limited %s %s for key %s", request.method, request.url.path, entry.label)
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                f"too many writes with this key; try again in {retry_after(wait_s)} s",
                headers={"Retry-After": retry_after(wait_s)},
            )
    log.debug("%s %s by key %s", request.method, request.url.path, entry.label)


def require_read_key(request: Request) -> None:
    """With ``REQUIRE_READ_KEY`` on (the only case this runs), 401 unless ``X-API-Key`` is a read or write key.
    Read from the headers directly so the OpenAPI document stays the same whichever way it is set."""
    access: IngestAccess = request.app.state.access
    if access.read_keys is None:
        return
    offered = request.headers.get(KEY_HEADER)
    if access.read_keys.match(offered) is None:
        log.info("refused %s %s: %s", request.method, request.url.path, "unknown key" if offered else "no key")
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "this service needs an API key in the X-API-Key header")


ApiKey = Depends(require_api_key)
ReadKey = Depends(require_read_key)
