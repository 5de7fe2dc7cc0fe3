"""An S3 endpoint that passes every request through to the real one (moto)
and can hold chosen requests until the test lets them go.

Shutdown tests point a service's ``MESS_S3_ENDPOINT_URL`` here to catch it in
the middle of its work without sleeps: a request matching ``hold`` (say, the
GET of a track's audio) waits, so the test knows the work has started and
cannot have finished; it sends SIGTERM, checks the process is still
finishing, then releases the requests and the work completes against the
real endpoint. The pass-through itself is the fault suite's ``S3Proxy``.
"""

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from mess.dev.backing import S3Proxy

HOLD_LIMIT_S = 120.0  # a test that forgets to release must not hang for ever


@dataclass
class HeldS3:
    """``hold(method, path)`` says which requests wait for ``release()``."""

    upstream: str
    hold: Callable[[str, str], bool]
    seen: list[tuple[str, str]] = field(default_factory=list)
    held: list[tuple[str, str]] = field(default_factory=list)
    _released: threading.Event = field(default_factory=threading.Event)
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _proxy: S3Proxy | None = None

    @property
    def url(self) -> str:
        assert self._proxy is not None, "not started"
        return self._proxy.url

    def release(self) -> None:
        """Let every held request (and every later one) through."""
        self._released.set()

    def wait_held(self, count: int, timeout: float = 60.0) -> list[tuple[str, str]]:
        """Block until ``count`` requests are being held; returns them."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.held) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{len(self.held)} requests held, not {count}; seen: {self.seen}")
                self._changed.wait(remaining)
            return list(self.held)

    def _intercept(self, method: str, path: str) -> bool:
        held = self.hold(method, path)
        with self._changed:
            self.seen.append((method, path))
            if held:
                self.held.append((method, path))
            self._changed.notify_all()
        if held:
            self._released.wait(HOLD_LIMIT_S)
        return False  # never refused: held at most, then passed through

    @contextmanager
    def running(self) -> Iterator["HeldS3"]:
        with S3Proxy(self.upstream, self._intercept).running() as proxy:
            self._proxy = proxy
            try:
                yield self
            finally:
                self.release()
