"""Builds the ingest app: lifespan resources, middleware and routers, nothing else."""

from fastapi import FastAPI

from mess.ingest.config import Settings
from mess.runtime.http import health_router


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(title="mess ingest")

    async def readiness() -> dict[str, bool]:
        return {"started": True}

    app.include_router(health_router(readiness))
    return app
