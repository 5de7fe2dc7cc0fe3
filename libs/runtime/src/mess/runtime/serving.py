"""Running a service's ASGI app, with the shutdown Kubernetes expects.

On SIGTERM (or SIGINT) uvicorn stops accepting connections, lets in-flight
requests finish (up to ``graceful_s``), then runs the app's lifespan shutdown,
where consumers finish and commit their in-flight batch. uvicorn then
re-raises the signal so the process dies *by* it (exit status -15); a
service that shut down cleanly should exit 0 instead, so rollouts and
supervisors can tell a clean stop from a crash.

It also puts every service behind the same defences against slow and
hostile clients (``mess.runtime.guards``): a deadline for request headers,
per-client connection and request limits, body and response deadlines with a
minimum rate, a cap on the size of an incomplete request head, and 422 bodies
that survive non-finite inputs. ``redirect_slashes`` is turned off: its
redirect was built from the client's ``Host`` header.
"""

import contextlib
import signal
import threading
from collections.abc import Generator
from typing import Any

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp

from mess.runtime.guards import ClientGuard, ClientLimits, protocol_class, readable_validation_errors
from mess.runtime.logging import RequestContext

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STARTUP_FAILURE = 3
SHUTDOWN_FAILURE = 4
# The largest request line plus headers h11 buffers before answering 400
# (uvicorn's default, stated so it is a decision).
MAX_REQUEST_HEAD = 16 * 1024
# An idle keep-alive connection is closed after this long.
KEEP_ALIVE_S = 5
# Connections plus requests in flight, per process, beyond which uvicorn answers 503.
LIMIT_CONCURRENCY = 2048


class GracefulServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)
        # Unlike uvicorn, do not re-raise the captured signal: the shutdown was clean.


def guarded(app: Any, limits: ClientLimits) -> ASGIApp:
    """``app`` behind ``ClientGuard`` (once: an app that installed it itself is left as it is)."""
    if isinstance(app, FastAPI):
        readable_validation_errors(app)
        app.router.redirect_slashes = False
        if any(getattr(middleware, "cls", None) is ClientGuard for middleware in app.user_middleware):
            return RequestContext(app)
    return RequestContext(ClientGuard(app, limits))


def serve(
    app: Any,
    *,
    host: str,
    port: int,
    graceful_s: int = 30,
    access_log: bool = False,
    limits: ClientLimits | None = None,
) -> int:
    """Run until told to stop; returns the process exit status: 0 after a clean
    shutdown, 3 when the app never started, 4 when its shutdown raised."""
    limits = limits or ClientLimits()
    config = uvicorn.Config(
        guarded(app, limits),
        host=host,
        port=port,
        log_config=None,
        access_log=access_log,
        timeout_graceful_shutdown=graceful_s,
        http=protocol_class(limits),
        timeout_keep_alive=KEEP_ALIVE_S,
        h11_max_incomplete_event_size=MAX_REQUEST_HEAD,
        limit_concurrency=LIMIT_CONCURRENCY,
    )
    server = GracefulServer(config)
    server.run()
    # A lifespan that failed to start (a model that would not load, a bad
    # setting) leaves the server unstarted: that is a failure, not a stop.
    if not server.started:
        return STARTUP_FAILURE
    # A shutdown that raised may have left work uncommitted: say so to the supervisor.
    if getattr(getattr(server, "lifespan", None), "shutdown_failed", False):
        return SHUTDOWN_FAILURE
    return 0
