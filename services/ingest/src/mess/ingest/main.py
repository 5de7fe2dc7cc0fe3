"""Builds the ingest app: lifespan resources, error handlers and routers, nothing else."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from mess.ingest.config import Settings
from mess.ingest.outages import BACKEND_ERRORS
from mess.ingest.resources import open_resources
from mess.ingest.routes import drops, tracks
from mess.runtime.http import health_router


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_resources(settings) as resources:
            app.state.resources = resources
            yield

    app = FastAPI(title="mess ingest", lifespan=lifespan)

    async def backend_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # Postgres, S3 or the pool is unavailable right now: the request may be retried as is.
        return JSONResponse(
            {"error": "unavailable", "detail": f"a backing service did not answer: {type(exc).__name__}: {exc}"},
            status_code=503,
        )

    for error in BACKEND_ERRORS:
        app.add_exception_handler(error, backend_unavailable)

    async def readiness() -> dict[str, bool]:
        resources = getattr(app.state, "resources", None)
        if resources is None:
            return {"started": False}
        checks: dict[str, bool] = await resources.readiness()
        return checks

    app.include_router(health_router(readiness))
    app.include_router(tracks.router)
    app.include_router(drops.router)
    return app
