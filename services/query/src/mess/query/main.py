"""Builds the query app: lifespan resources, middleware and routers, nothing else."""

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mess.query.access import open_read_keys, open_read_rate
from mess.query.catalog_map import CatalogMaps
from mess.query.config import Settings
from mess.query.deps import ReadKey, ReadRate
from mess.query.errors import install_error_handlers
from mess.query.metrics import QueryMetrics
from mess.query.resources import open_resources
from mess.query.routes import catalog_map, health, media, recommendations, search, tracks
from mess.query.routes.explorer import install_explorer
from mess.runtime.access import allow_origins
from mess.runtime.guards import ClientGuard, readable_validation_errors
from mess.runtime.http import InternalErrors


class RequestTimer:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware): latency per route template and status."""

    def __init__(self, app: ASGIApp, metrics: QueryMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            template = getattr(route, "path_format", None) or "unmatched"
            self.metrics.requests.labels(template, str(status)).observe(time.perf_counter() - started)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = QueryMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Keys first: a bad keys file stops the start before anything is connected.
        app.state.read_keys = open_read_keys(settings)
        app.state.read_rate = open_read_rate(settings)
        async with open_resources(settings, metrics) as resources:
            app.state.resources = resources
            app.state.catalog_maps = CatalogMaps()
            try:
                yield
            finally:
                app.state.catalog_maps.close()

    app = FastAPI(
        title="mess query",
        description="Music similarity search: tracks, recommendations, audio and waveforms.",
        version="1",
        lifespan=lifespan,
        # A slash redirect would be built from the client's Host header: an open redirect on our origin.
        redirect_slashes=False,
    )
    app.add_middleware(RequestTimer, metrics=metrics)
    app.add_middleware(InternalErrors)
    # Outermost: slow or hostile clients are answered before anything else holds a slot for them.
    app.add_middleware(ClientGuard, limits=settings.client_limits())
    allow_origins(
        app,
        settings.cors_origin_list,
        ["GET", "POST"],
        ["X-Cache", "X-Snapshot-Version", "X-Request-ID", "Content-Range", "Accept-Ranges", "Retry-After"],
    )
    install_error_handlers(app)
    readable_validation_errors(app)
    # Health and metrics stay open whatever the setting: probes and scrapers carry no key.
    reads = [ReadKey] if settings.require_read_key else []
    if settings.read_rate_per_s:
        reads.append(ReadRate)
    app.include_router(health.router)
    app.include_router(tracks.router, dependencies=reads)
    app.include_router(recommendations.router, dependencies=reads)
    app.include_router(search.router, dependencies=reads)
    app.include_router(media.router, dependencies=reads)
    app.include_router(catalog_map.router, dependencies=reads)
    # The page and its files carry no data: open to all, so a person can load it and then enter a key.
    install_explorer(app, settings)
    return app
