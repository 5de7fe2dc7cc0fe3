"""Answering "what sounds like this track?": snapshot, cache, search, strategy.

A request takes the serving searcher once and uses only it, so a swap in the
middle of a request cannot mix two snapshots. The response body is computed
(or read from Redis) as JSON bytes; the per-request fields ``cached`` and
``computation_time_ms`` are appended at the end, so a cache hit never
re-serialises the body.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from mess.contracts.events import RecommendationServed, RecommendedItem, RecommendRequestSummary
from mess.query.analytics import AnalyticsPublisher
from mess.query.catalog import CatalogBusyError, CatalogUnavailableError, TrackCatalog, TrackRecord
from mess.query.metrics import QueryMetrics
from mess.query.models import RecommendationResponse, RecommendedTrack, TrackOut
from mess.query.recommendation_cache import RecommendationCache, cache_key
from mess.query.searcher import Neighbour, SnapshotSearcher
from mess.query.snapshot_follower import SnapshotFollower
from mess.query.strategies import (
    ALGORITHM,
    MAX_SEED,
    Candidate,
    Pick,
    Strategy,
    StrategyParams,
    complementary,
    diverse,
    exploration,
    hybrid,
    similarity,
)

T = TypeVar("T")

# Extra neighbours fetched so that tracks removed from the registry (but still in
# the snapshot until the next one) can be skipped without returning fewer than k.
_REMOVED_MARGIN = 5


class NotReadyError(Exception):
    """No snapshot is loaded yet."""


class TrackNotFoundError(Exception):
    def __init__(self, track_id: str) -> None:
        super().__init__(f"unknown track {track_id}")
        self.track_id = track_id


class TrackNotIndexedError(Exception):
    def __init__(self, track_id: str, status: str, snapshot_version: str) -> None:
        super().__init__(
            f"track {track_id} is {status}, not in the serving snapshot {snapshot_version}; "
            "recommendations are possible once it is indexed"
        )
        self.track_id = track_id
        self.status = status
        self.snapshot_version = snapshot_version


@dataclass(frozen=True)
class Served:
    body: bytes  # the full JSON response
    cached: bool
    snapshot_version: str


class Recommender:
    def __init__(
        self,
        follower: SnapshotFollower,
        catalog: TrackCatalog,
        cache: RecommendationCache,
        analytics: AnalyticsPublisher,
        metrics: QueryMetrics,
        executor: ThreadPoolExecutor,
        search_concurrency: int,
        redis_prefix: str,
    ) -> None:
        self._follower = follower
        self._catalog = catalog
        self._cache = cache
        self._analytics = analytics
        self._metrics = metrics
        self._executor = executor
        self._admission = asyncio.Semaphore(search_concurrency)
        self._prefix = redis_prefix

    def searcher(self) -> SnapshotSearcher:
        snapshot = self._follower.current
        if snapshot is None:
            raise NotReadyError("no snapshot is loaded yet; the service is not ready")
        return snapshot

    async def _off_loop(self, function: Any, *args: Any) -> Any:
        """Run blocking numpy/FAISS work in the search pool, a bounded number at a time."""
        async with self._admission:
            return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def recommend(
        self, track_id: str, k: int, strategy: Strategy, params: StrategyParams, request_id: str
    ) -> Served:
        started = time.perf_counter()
        snapshot = self.searcher()  # this request's snapshot, whatever swaps meanwhile
        if track_id not in snapshot:
            record = await self._catalog.get(track_id)
            if record is None or record.status == "removed":
                raise TrackNotFoundError(track_id)
            raise TrackNotIndexedError(track_id, record.status, snapshot.version)
        if strategy is Strategy.exploration and params.seed is None:
            # A fresh draw per request; the seed is reported so the answer can be reproduced.
            params = StrategyParams(pool=params.pool, floor=params.floor, seed=random.randint(0, MAX_SEED))
            key = None  # caching a random draw would freeze it
        else:
            key = cache_key(self._prefix, snapshot.version, track_id, k, strategy.value, params.as_dict())
        body, cached = await self._cache.get_or_compute(
            key, lambda: self._compute(snapshot, track_id, k, strategy, params)
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
        self._metrics.recommendations.labels(strategy.value, str(cached).lower()).inc()
        full = body[:-1] + b',"cached":%s,"computation_time_ms":%.3f}' % (b"true" if cached else b"false", elapsed_ms)
        self._publish(request_id, track_id, k, strategy, params, body, snapshot.version, elapsed_ms, cached)
        return Served(full, cached, snapshot.version)

    async def _compute(
        self, snapshot: SnapshotSearcher, track_id: str, k: int, strategy: Strategy, params: StrategyParams
    ) -> tuple[bytes, bool]:
        """(body, cacheable); a degraded body (the catalog was down) is not cacheable."""
        self._metrics.computed.labels(strategy.value).inc()
        pool = params.pool or k
        neighbours: list[Neighbour] = await self._off_loop(self._search, snapshot, track_id, pool + 1 + _REMOVED_MARGIN)
        degraded = False
        try:
            records = await self._catalog.get_many([track_id, *(n.track_id for n in neighbours)])
        except (CatalogUnavailableError, CatalogBusyError):
            # The snapshot alone can answer "what sounds like this": serve the neighbours
            # without titles (and without removals made since the snapshot) rather than a 503.
            records = {}
            degraded = True
            self._metrics.degraded.inc()
        kept = [
            n
            for n in neighbours
            if n.track_id != track_id and (n.track_id not in records or records[n.track_id].status != "removed")
        ][:pool]
        candidates = [Candidate(n.track_id, n.score) for n in kept]
        picks: list[Pick]
        if strategy is Strategy.similar:
            picks = similarity(candidates, k)
        elif strategy is Strategy.balanced:
            assert params.weights is not None
            reference = _affinity_fields(records.get(track_id))
            metadata = {n.track_id: _affinity_fields(records.get(n.track_id)) for n in kept}
            picks = hybrid(candidates, k, params.weights, reference, metadata)
        elif strategy is Strategy.diverse:
            assert params.lambda_ is not None
            picks = await self._off_loop(_with_vectors, diverse, snapshot, kept, candidates, k, params.lambda_)
        elif strategy is Strategy.complementary:
            picks = await self._off_loop(_with_vectors, complementary, snapshot, kept, candidates, k)
        else:
            assert params.floor is not None and params.seed is not None
            picks = exploration(candidates, k, params.floor, params.seed)
        response = RecommendationResponse(
            reference_track=TrackOut.build(track_id, records.get(track_id), snapshot.version),
            recommendations=[
                RecommendedTrack(
                    **TrackOut.build(pick.track_id, records.get(pick.track_id), snapshot.version).model_dump(),
                    rank=rank,
                    similarity_score=round(pick.similarity, 6),
                    strategy_score=round(pick.score, 6),
                    explanation=pick.explanation,
                )
                for rank, pick in enumerate(picks, start=1)
            ],
            strategy=strategy,
            algorithm=ALGORITHM[strategy],
            params=params.as_dict(),
            k=k,
            snapshot_version=snapshot.version,
            degraded=degraded,
        )
        return response.model_dump_json(exclude={"cached", "computation_time_ms"}).encode("utf-8"), not degraded

    def _search(self, snapshot: SnapshotSearcher, track_id: str, n: int) -> list[Neighbour]:
        started = time.perf_counter()
        found = snapshot.search(snapshot.vector_of(track_id), n)
        self._metrics.search_seconds.observe(time.perf_counter() - started)
        return found

    def _publish(
        self,
        request_id: str,
        track_id: str,
        k: int,
        strategy: Strategy,
        params: StrategyParams,
        body: bytes,
        snapshot_version: str,
        latency_ms: float,
        cached: bool,
    ) -> None:
        if not self._analytics.accepting:
            self._analytics.count_unavailable()
            return
        served_at = datetime.now(UTC)  # the event is built later, in the background

        def build() -> RecommendationServed:
            results = json.loads(body)["recommendations"]
            return RecommendationServed(
                request_id=request_id,
                request=RecommendRequestSummary(
                    track_id=track_id, k=k, strategy=strategy.value, params=params.as_dict()
                ),
                results=[
                    RecommendedItem(track_id=r["track_id"], score=r["similarity_score"], rank=r["rank"])
                    for r in results
                ],
                snapshot_version=snapshot_version,
                latency_ms=latency_ms,
                cached=cached,
                occurred_at=served_at,
            )

        self._analytics.offer(build)


def _affinity_fields(record: TrackRecord | None) -> dict[str, str | None]:
    if record is None:
        return {}
    return {"composer": record.composer, "era": record.era, "form": record.form}


def _with_vectors(
    strategy: Any, snapshot: SnapshotSearcher, kept: list[Neighbour], candidates: list[Candidate], *args: Any
) -> list[Pick]:
    picks: list[Pick] = strategy(candidates, snapshot.vectors_of(kept), *args)
    return picks
