"""Builds the ingest app: lifespan resources, error handlers and routers, nothing else."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from mess.ingest.access import open_access
from mess.ingest.config import Settings
from mess.ingest.deps import ReadKey
from mess.ingest.outages import BACKEND_ERRORS
from mess.ingest.resources import open_resources
from mess.ingest.routes import drops, tracks
from mess.runtime.access import allow_origins
from mess.runtime.http import InternalErrors, health_router

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Keys first: a bad keys file stops the start before anything is connected.
        app.state.access = open_access(settings)
        async with open_resources(settings) as resources:
            app.state.resources = resources
            yield

    app = FastAPI(title="mess ingest", lifespan=lifespan)

    async def backend_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # Postgres, S3 or the pool is unavailable right now: the request may be retried as is. What failed
        # goes to the log only: the exception's text names hosts, ports and buckets.
        log.warning("%s %s: a backing service did not answer: %r", request.method, request.url.path, exc)
        return JSONResponse(
            {"error": "unavailable", "detail": "a backing service did not answer; try again"},
            status_code=503,
            headers={"Retry-After": "1"},
        )

    for error in BACKEND_ERRORS:
        app.add_exception_handler(error, backend_unavailable)

    async def readiness() -> dict[str, bool]:
        resources = getattr(app.state, "resources", None)
        if resources is None:
            return {"started": False}
        checks: dict[str, bool] = await resources.readiness()
        return checks

    app.add_middleware(InternalErrors)
    allow_origins(app, settings.cors_origin_list, ["GET", "POST", "DELETE"], ["Retry-After", "X-Request-ID"])
    # Health and metrics stay open whatever the setting: probes and scrapers carry no key.
    reads = [ReadKey] if settings.require_read_key else []
    app.include_router(health_router(readiness))
    app.include_router(tracks.router, dependencies=reads)
    app.include_router(drops.router, dependencies=reads)
    return app
