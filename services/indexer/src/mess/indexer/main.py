"""Builds the indexer app: lifespan resources, middleware and routers, nothing else."""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from mess.indexer.config import Settings
from mess.indexer.indexer import Indexer
from mess.indexer.metrics import IndexerMetrics
from mess.runtime.http import health_router
from mess.runtime.termination import Termination

log = logging.getLogger(__name__)

FatalHandler = Callable[[BaseException], None]


def create_app(settings: Settings | None = None, on_fatal: FatalHandler | None = None) -> FastAPI:
    """``on_fatal`` is called when the indexer stops on an error (the command
    line shuts the server down with it, so the process exits and restarts
    from LATEST)."""
    settings = settings or Settings()
    metrics = IndexerMetrics()
    indexer = Indexer(settings, metrics)

    async def serve() -> None:
        # Loading a large snapshot takes a while: the routes answer meanwhile
        # (live, not ready) instead of the process looking hung.
        await indexer.start()
        await indexer.run()

    def finished(task: "asyncio.Task[None]") -> None:
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        assert error is not None
        log.critical("the indexer stopped on an error", exc_info=error)
        if on_fatal is not None:
            on_fatal(error)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The grace is counted from the signal, not from the end of uvicorn's HTTP drain.
        termination = Termination(settings.shutdown_grace_s)
        task = asyncio.create_task(serve(), name="indexer")
        task.add_done_callback(finished)
        with termination.watch_signals():
            try:
                yield
            finally:
                termination.request()  # a no-op after SIGTERM; starts the clock when the stop came another way
                # The applied changes are published before the process exits.
                await indexer.shut_down(task, termination.remaining())

    app = FastAPI(title="mess indexer", lifespan=lifespan)
    app.state.indexer = indexer
    app.include_router(health_router(indexer.readiness, metrics.registry))
    return app
