"""Request dependencies: the lifespan's resources and the API-key check, as ``Annotated`` aliases."""

import hashlib
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
    # Digests have one length, and every key is compared without stopping early, so the time taken
    # says nothing about a key's length or which key came close.
    offered = hashlib.sha256(x_api_key.encode("utf-8")).digest()
    matches = [
        hmac.compare_digest(offered, hashlib.sha256(key.encode("utf-8")).digest())
        for key in resources.settings.api_key_list()
    ]
    if not any(matches):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "the X-API-Key is not valid")


ApiKey = Depends(require_api_key)
