"""`Annotated` dependency aliases: routes declare what they need, the lifespan provides it."""

import logging
from typing import Annotated, cast

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader

from mess.query.access import ClientBuckets
from mess.query.resources import Resources
from mess.runtime.access import KEY_HEADER, KeyStore, retry_after
from mess.runtime.guards import client_of

log = logging.getLogger(__name__)


def _resources(request: Request) -> Resources:
    return cast(Resources, request.app.state.resources)


ResourcesDep = Annotated[Resources, Depends(_resources)]

_read_key = APIKeyHeader(name=KEY_HEADER, auto_error=False, description="a read API key")


def require_read_key(request: Request, x_api_key: Annotated[str | None, Security(_read_key)] = None) -> None:
    """401 unless ``X-API-Key`` is a read key (only mounted when ``REQUIRE_READ_KEY`` is on)."""
    keys: KeyStore = request.app.state.read_keys
    entry = keys.match(x_api_key)
    if entry is None:
        # The key is never logged, whether it was right or wrong; the label of a right one is.
        log.info("refused %s %s: %s", request.method, request.url.path, "unknown key" if x_api_key else "no key")
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "this service needs an API key in the X-API-Key header")
    request.state.api_key_label = entry.label


ReadKey = Depends(require_read_key)


def limit_read_rate(request: Request) -> None:
    """429 with ``Retry-After`` once a client has spent its read budget (only mounted when a rate is set).

    Runs after ``require_read_key``: a keyed client is counted by its key's label, an open one by address."""
    buckets: ClientBuckets = request.app.state.read_rate
    label = getattr(request.state, "api_key_label", None)
    client = f"key:{label}" if label else f"addr:{client_of(request.scope)}"
    wait_s = buckets.take(client)
    if wait_s > 0:
        cast(Resources, request.app.state.resources).metrics.rate_limited.inc()
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"too many reads from this client; try again in {retry_after(wait_s)} s",
            headers={"Retry-After": retry_after(wait_s)},
        )


ReadRate = Depends(limit_read_rate)
