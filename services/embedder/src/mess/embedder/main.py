"""Builds the embedder app: lifespan resources, middleware and routers, nothing else."""

from fastapi import FastAPI

from mess.embedder import clips
from mess.embedder.config import Settings
from mess.embedder.lifespan import lifespan
from mess.embedder.routes import readiness, router
from mess.runtime.http import health_router


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(title="mess embedder", lifespan=lifespan(settings))
    app.include_router(health_router(readiness(app)))
    app.include_router(router)
    app.include_router(clips.router)
    return app
