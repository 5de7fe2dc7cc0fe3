"""When the service was told to stop, and how much of its grace period is left.

uvicorn (run by ``mess.runtime.serving``) owns SIGTERM: it closes the
listening socket, lets in-flight requests finish for up to the grace period,
and only then runs the lifespan shutdown. Background loops cannot wait that
long to hear of it: a service's workers (ingest's SQS worker, drop scan,
reconciler and status consumer, say) must stop taking new work at the signal,
while requests are still streaming in. And every wait of the lifespan
shutdown (ingest's commits, query's analytics flush) must fit in what is left
of one grace period counted from the signal, not in a fresh one, or the pod is
killed mid-commit. So ``watch_signals`` puts a small handler in
front of the one uvicorn installed: it notes the moment and wakes the loops,
then hands the signal on unchanged.

Where no Python-level handler is installed (the app driven by a test's own
uvicorn task, say), the clock starts when the lifespan shutdown begins.
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
    """One grace period, counted from the first stop request; ``requested`` is set at that moment."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.requested = asyncio.Event()
        self._since: float | None = None

    def request(self) -> None:
        """Start the clock (once) and wake everything waiting on ``requested``."""
        if self._since is None:
            self._since = time.monotonic()
            log.info("stop requested: taking no new work; in-flight work has %.0f s to finish", self.grace_s)
        self.requested.set()

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


async def wait_or_stop(stopping: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; True as soon as ``stopping`` is set (then the caller should return)."""
    try:
        await asyncio.wait_for(stopping.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True


async def finish_within(tasks: list[asyncio.Task[None]], seconds: float, what: str) -> None:
    """Let ``tasks`` finish on their own for up to ``seconds``; cancel whatever is still running then."""
    if not tasks:
        return
    if seconds > 0:
        await asyncio.wait(tasks, timeout=seconds)
    for task in tasks:
        if task.done():
            continue
        log.warning("%s: %s did not finish within the grace period; cancelling it", what, task.get_name())
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
