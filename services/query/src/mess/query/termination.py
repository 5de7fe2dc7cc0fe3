"""When the service was told to stop, and how much of its grace period is left.

uvicorn (run by ``mess.runtime.serving``) owns SIGTERM: it closes the
listening socket, lets in-flight requests finish for up to the grace period,
and only then runs the lifespan shutdown, which flushes the queued analytics
events. That flush must fit in what is left of the *same* grace period,
counted from the signal, or the pod is killed mid-flush; so
``watch_signals`` puts a small handler in front of the one uvicorn installed
that notes the moment, then hands the signal on unchanged.

Where no Python-level handler is installed (the app driven by a test's own
lifespan, say), the clock starts when the lifespan shutdown begins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Termination:
    """One grace period, counted from the first stop request."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self._since: float | None = None

    def request(self) -> None:
        """Start the clock (once)."""
        if self._since is None:
            self._since = time.monotonic()
            log.info("stop requested: in-flight requests and queued events have %.0f s to finish", self.grace_s)

    def remaining(self) -> float:
        """Seconds left of the grace period (all of it while no stop was requested)."""
        if self._since is None:
            return float(self.grace_s)
        return max(0.0, self._since + self.grace_s - time.monotonic())

    @contextlib.contextmanager
    def watch_signals(self) -> Iterator[None]:
        """Within this block, SIGTERM/SIGINT also call ``request`` before reaching the server's handler."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        chained: dict[int, Any] = {}

        def on_signal(signum: int, frame: FrameType | None) -> None:
            # A signal handler may run between any two bytecodes of the loop's own code:
            # only the thread-safe entry point may touch the loop from here.
            loop.call_soon_threadsafe(self.request)
            chained[signum](signum, frame)

        for sig in _SIGNALS:
            signum = int(sig)
            current = signal.getsignal(signum)
            # Only in front of a Python handler (uvicorn's): replacing SIG_DFL would swallow the signal.
            if callable(current):
                chained[signum] = current
                signal.signal(signum, on_signal)
        try:
            yield
        finally:
            for signum, previous in chained.items():
                if signal.getsignal(signum) is on_signal:
                    signal.signal(signum, previous)
