"""Who may call the query service, and how often: the read keys when a setting asks for them, and an
optional per-client read rate limit (like ingest's per-key write limit)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from mess.query.config import Settings
from mess.runtime.access import KeyStore


def open_read_keys(settings: Settings) -> KeyStore | None:
    """None when reads are open; raises ``KeyConfigError`` (so the service does not start) on a bad keys file
    or on no key at all."""
    if not settings.require_read_key:
        return None
    return KeyStore(
        settings.read_key_entries(),
        file=settings.read_api_keys_file,
        check_interval_s=settings.api_keys_check_s,
        require_keys=True,
        name="query read keys",
    )


class ClientBuckets:
    """A token bucket per client (its key's label, else its address), at most ``max_clients`` of them.

    Reads may come without a key, so clients are not bounded by configuration as ingest's keys are: the
    table keeps the most recently seen clients and forgets the others. A forgotten client comes back with
    a full bucket, which is what an idle one would have had anyway.
    """

    def __init__(
        self, rate_per_s: float, burst: int, max_clients: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least 1")
        self._rate = rate_per_s
        self._burst = float(burst)
        self._max = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str) -> float:
        """Spend one token: 0.0 when granted, else the seconds until one is there."""
        now = self._clock()
        tokens, then = self._buckets.pop(client, (self._burst, now))
        tokens = min(self._burst, tokens + (now - then) * self._rate)
        granted = tokens >= 1.0
        self._buckets[client] = (tokens - 1.0 if granted else tokens, now)
        if len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return 0.0 if granted else (1.0 - tokens) / self._rate


def open_read_rate(settings: Settings) -> ClientBuckets | None:
    return ClientBuckets(settings.read_rate_per_s, settings.read_burst) if settings.read_rate_per_s else None
