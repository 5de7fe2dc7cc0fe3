"""Request dependencies: the lifespan's resources and the API-key check, as ``Annotated`` aliases."""

import hmac
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, status

from mess.ingest.resources import IngestResources


def _resources(request: Request) -> IngestResources:
    resources: IngestResources = request.app.state.resources
    return resources


Resources = Annotated[IngestResources, Depends(_resources)]


def require_api_key(
    resources: Resources, x_api_key: Annotated[str | None, Header(description="an ingest API key")] = None
) -> None:
    """401 unless ``X-API-Key`` is one of the configured keys (compared in constant time)."""
    if not x_api_key:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "send an API key in the X-API-Key header")
    offered = x_api_key.encode("utf-8")
    # Compare with every key, without stopping early, so timing says nothing about which key came close.
    matches = [hmac.compare_digest(offered, key.encode("utf-8")) for key in resources.settings.api_key_list()]
    if not any(matches):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "the X-API-Key is not valid")


ApiKey = Depends(require_api_key)
