"""The embedder's own routes: readiness checks and the model it runs."""

from fastapi import APIRouter, FastAPI, HTTPException, Request

from mess.contracts.events import ModelIdentity
from mess.embedder.lifespan import EmbedderResources
from mess.runtime.http import ReadinessCheck


def _resources(app: FastAPI) -> EmbedderResources | None:
    resources: EmbedderResources | None = getattr(app.state, "resources", None)
    return resources


def readiness(app: FastAPI) -> ReadinessCheck:
    async def checks() -> dict[str, bool]:
        resources = _resources(app)
        if resources is None:
            return {"model": False, "batcher": False, "broker": False}
        return {
            "model": True,
            "batcher": resources.batcher.running,
            "broker": bool(await resources.broker.ping(timeout=2.0)),
        }

    return checks


router = APIRouter(tags=["embedder"])


@router.get("/model", response_model=ModelIdentity)
async def model(request: Request) -> ModelIdentity:
    """The identity every TrackEmbedded of this process carries."""
    resources = _resources(request.app)
    if resources is None:
        raise HTTPException(status_code=503, detail="the model is not loaded yet")
    return resources.embedder.identity
