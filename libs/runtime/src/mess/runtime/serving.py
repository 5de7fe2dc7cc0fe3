"""Running a service's ASGI app, with the shutdown Kubernetes expects.

On SIGTERM (or SIGINT) uvicorn stops accepting connections, lets in-flight
requests finish (up to ``graceful_s``), then runs the app's lifespan shutdown,
where consumers finish and commit their in-flight batch. uvicorn then
re-raises the signal so the process dies *by* it (exit status -15); a
service that shut down cleanly should exit 0 instead, so rollouts and
supervisors can tell a clean stop from a crash. That is the one thing this
module changes.
"""

import contextlib
import signal
import threading
from collections.abc import Generator
from typing import Any

import uvicorn

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STARTUP_FAILURE = 3
SHUTDOWN_FAILURE = 4


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


def serve(app: Any, *, host: str, port: int, graceful_s: int = 30, access_log: bool = False) -> int:
    """Run until told to stop; returns the process exit status: 0 after a clean
    shutdown, 3 when the app never started, 4 when its shutdown raised."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=access_log,
        timeout_graceful_shutdown=graceful_s,
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
