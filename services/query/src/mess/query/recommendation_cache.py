"""The Redis cache of recommendation responses, with single-flight.

Keys carry the snapshot version, so a swap invalidates every entry by
construction and nothing is ever deleted by hand. Concurrent requests for one
key share a single lookup-and-compute in this process.

Redis is an optimisation, never a dependency: any Redis error (or a command
slower than the timeout) marks it down for a short while, during which
requests skip it and are answered uncached; readiness reports "degraded".

Trust. Keys are built only from canonical, quantised parameters (see
``mess.query.strategies``), so a client cannot multiply entries by spelling
one value many ways. Redis itself is outside the trust boundary: whoever can
write to it could otherwise choose every answer. With ``cache_hmac_key`` set,
each entry carries an HMAC-SHA256 tag over its key and body, and an entry
whose tag does not verify is ignored (counted, recomputed, overwritten).
Without a key, an entry is still checked to be a JSON object before use, so
a poisoned entry costs a recomputation, never a 500 or a stopped task.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from mess.query.metrics import QueryMetrics

log = logging.getLogger(__name__)

# A computation answers (body, cacheable): a body built while a dependency was down
# (say, without metadata) is served but never cached, or it would outlive the outage.
Compute = Callable[[], Awaitable[tuple[bytes, bool]]]


def cache_key(prefix: str, snapshot_version: str, track_id: str, k: int, strategy: str, params: dict[str, Any]) -> str:
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
    return f"{prefix}rec:{snapshot_version}:{track_id}:{k}:{strategy}:{digest}"


class RecommendationCache:
    def __init__(
        self,
        redis: Redis | None,
        metrics: QueryMetrics,
        ttl_s: int,
        timeout_s: float,
        retry_s: float,
        hmac_key: bytes | None = None,
    ) -> None:
        self._hmac_key = hmac_key
        self._redis = redis
        self._metrics = metrics
        self._ttl = ttl_s
        self._timeout = timeout_s
        self._retry = retry_s
        self._down_until = 0.0
        self._inflight: dict[str, asyncio.Future[tuple[bytes, bool]]] = {}

    @property
    def enabled(self) -> bool:
        return self._redis is not None

    @property
    def available(self) -> bool:
        return self._redis is not None and time.monotonic() >= self._down_until

    def _failed(self, what: str, exc: BaseException) -> None:
        self._metrics.cache_errors.inc()
        if time.monotonic() >= self._down_until:
            log.warning("Redis %s failed (%s); answering uncached for %.0fs", what, exc, self._retry)
        self._down_until = time.monotonic() + self._retry

    async def ping(self) -> bool:
        """Readiness probe; a success ends a 'down' period early."""
        if self._redis is None:
            return False
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("ping", exc)
            return False
        self._down_until = 0.0
        return True

    async def _get(self, key: str) -> bytes | None:
        if self._redis is None or not self.available:
            return None
        try:
            async with asyncio.timeout(self._timeout):
                value = await self._redis.get(key)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("get", exc)
            return None
        if not isinstance(value, bytes):
            return None
        body = self._open(key, value)
        if body is None:
            self._metrics.cache_rejected.inc()
            log.warning("ignored cache entry %s: not an entry this service wrote", key)
        return body

    def _tag(self, key: str, body: bytes) -> bytes:
        if self._hmac_key is None:
            return b""
        return hmac.new(self._hmac_key, key.encode("utf-8") + b"\0" + body, hashlib.sha256).digest()

    def _seal(self, key: str, body: bytes) -> bytes:
        return self._tag(key, body) + body

    def _open(self, key: str, value: bytes) -> bytes | None:
        """The body of a stored entry, or None when it fails its tag or is not a JSON object."""
        size = len(self._tag(key, b""))
        tag, body = value[:size], value[size:]
        if size and not hmac.compare_digest(tag, self._tag(key, body)):
            return None
        if not (body.startswith(b"{") and body.endswith(b"}")):
            return None
        try:
            parsed = json.loads(body)
        except ValueError:
            return None
        return body if isinstance(parsed, dict) and isinstance(parsed.get("recommendations"), list) else None

    async def _set(self, key: str, value: bytes) -> None:
        if self._redis is None or not self.available:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.set(key, self._seal(key, value), ex=self._ttl)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("set", exc)

    async def get_or_compute(self, key: str | None, compute: Compute) -> tuple[bytes, bool]:
        """(body, came from the cache). ``key`` None means "do not cache this one"."""
        if key is None:
            return (await compute())[0], False
        while (running := self._inflight.get(key)) is not None:
            # Another request is already looking this key up: share its answer.
            # shield: one waiter giving up must not cancel the others' result.
            try:
                return await asyncio.shield(running)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if running.cancelled() and task is not None and not task.cancelling():
                    continue  # the request that computed it went away; look again ourselves
                raise
        future: asyncio.Future[tuple[bytes, bool]] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            cached = await self._get(key)
            if cached is not None:
                result = (cached, True)
            else:
                body, cacheable = await compute()
                if cacheable:
                    await self._set(key, body)
                result = (body, False)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            # Waiters re-raise it; retrieve it here so an unwaited future logs nothing.
            future.exception()
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._inflight[key]
