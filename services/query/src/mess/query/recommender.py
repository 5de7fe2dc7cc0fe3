"""Answering "what sounds like this track?": one pipeline from request to body.

plan (``build_strategy``: parameters checked, cost bounded) -> snapshot ->
cache -> propose (FAISS neighbours, on the search threads) -> registry rows ->
drop removed tracks -> re-rank candidates (``CandidateReranker``) -> choose
(``Strategy.choose``: cheap ones inline, heavy ones on the strategy threads)
-> body.

A request takes the serving searcher once and uses only it, so a swap in the
middle of a request cannot mix two snapshots. The response body is computed
(or read from Redis) as JSON bytes; the per-request fields ``cached`` and
``computation_time_ms`` are appended at the end, so a cache hit never
re-serialises the body.

Heavy strategies (diverse, complementary) run on their own small thread
pool behind a bounded number of slots: a request that finds no slot within
``strategy_wait_s`` is answered 503, so expensive requests wait on each
other and never on, or in front of, plain searches.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import numpy as np

from mess.contracts.clips import EmbeddedClip
from mess.contracts.events import ModelIdentity, RecommendationServed, RecommendedItem, RecommendRequestSummary
from mess.query.analytics import AnalyticsPublisher
from mess.query.catalog import CatalogBusyError, CatalogUnavailableError, TrackCatalog, TrackRecord
from mess.query.filters import FilterLimits, TrackFilters
from mess.query.metrics import QueryMetrics
from mess.query.models import (
    Alignment,
    FilterOutcome,
    RecommendationResponse,
    RecommendedTrack,
    SearchResponse,
    TrackOut,
)
from mess.query.recommendation_cache import RecommendationCache, cache_key
from mess.query.rerank import CandidateReranker, KeepOrder
from mess.query.searcher import FloatMatrix, Neighbour, QueryVectors, SnapshotSearcher
from mess.query.sequences import PitchSequence
from mess.query.snapshot_follower import SnapshotFollower
from mess.query.strategies import (
    Candidate,
    CandidatePool,
    Limits,
    ParameterError,
    Pick,
    RawParams,
    Strategy,
    StrategyName,
    build_strategy,
)

T = TypeVar("T")

# Extra neighbours fetched so that tracks removed from the registry (but still in
# the snapshot until the next one) can be skipped without returning fewer than k.
_REMOVED_MARGIN = 5
# The dimension assumed for cost estimates before any snapshot is loaded (MERT's).
_DEFAULT_DIM = 768
# A broad filter's over-fetch grows by this factor a round (bounded by FilterLimits.max_fetch).
_OVERFETCH_FACTOR = 4

QueryKind = Literal["track", "clip", "vector", "tracks"]
Combine = Literal["average", "best_score"]


@dataclass(frozen=True)
class Reference:
    """What a search is about: an indexed track, a clip, a vector, or several tracks."""

    kind: QueryKind
    query: QueryVectors  # what candidates are scored by
    exclude: frozenset[str]  # never recommended (the reference tracks themselves)
    sequence: PitchSequence | None  # the version re-rank's reference
    metadata_id: str | None  # the track whose composer, era and form the hybrid strategy compares with
    track_id: str | None  # the answer's reference_track
    cache_id: str | None  # the reference's part of the cache key; None: never cached
    description: dict[str, Any] = field(default_factory=dict)  # the answer's "query"
    analytics_id: str | None = None  # the track RecommendationServed is keyed by, when not track_id


class ModelMismatchError(Exception):
    """The embedder runs another model than the one that made the serving snapshot (a rollout in progress)."""

    def __init__(self, clip_model: ModelIdentity, serving: ModelIdentity | None, snapshot_version: str) -> None:
        serving_name = serving.fingerprint() if serving is not None else "none (an empty snapshot)"
        super().__init__(
            f"the clip was embedded by {clip_model.fingerprint()}, but snapshot {snapshot_version} holds vectors "
            f"of {serving_name}; their similarities mean nothing: try again once both run one model"
        )
        self.clip_model = clip_model
        self.serving = serving
        self.snapshot_version = snapshot_version


class StrategyBusyError(Exception):
    """Every slot for expensive strategies is taken; the client should retry shortly."""


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
        *,
        limits: Limits,
        strategy_executor: ThreadPoolExecutor,
        strategy_queue: int,
        strategy_wait_s: float,
        reranker: CandidateReranker | None = None,
        filter_limits: FilterLimits | None = None,
    ) -> None:
        self.filter_limits = filter_limits or FilterLimits()
        self._strategy_wait_s = strategy_wait_s
        self._follower = follower
        self._catalog = catalog
        self._cache = cache
        self._analytics = analytics
        self._metrics = metrics
        self._executor = executor
        self._admission = asyncio.Semaphore(search_concurrency)
        self._prefix = redis_prefix
        self.limits = limits
        self._strategy_executor = strategy_executor
        self._strategy_slots = asyncio.Semaphore(strategy_queue)
        self._reranker = reranker or KeepOrder()

    def searcher(self) -> SnapshotSearcher:
        snapshot = self._follower.current
        if snapshot is None:
            raise NotReadyError("no snapshot is loaded yet; the service is not ready")
        return snapshot

    def dim(self) -> int:
        snapshot = self._follower.current
        return (snapshot.dim if snapshot is not None else None) or _DEFAULT_DIM

    def plan(self, name: StrategyName, k: int, raw: RawParams) -> Strategy:
        """The configured strategy, its cost held to the per-request budget (``ParameterError`` otherwise)."""
        return build_strategy(name, k, raw, self.limits, self.dim())

    async def _search_threads(self, function: Callable[..., T], *args: object) -> T:
        """Run blocking FAISS work in the search pool, a bounded number at a time."""
        async with self._admission:
            return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def _strategy_threads(self, function: Callable[..., T], *args: object) -> T:
        """Run expensive work on its own threads; refuse (503) when no slot frees up in ``strategy_wait_s``."""
        try:
            # A short wait smooths bursts (a batch's items queue here); a long one would hold the request.
            async with asyncio.timeout(self._strategy_wait_s):
                await self._strategy_slots.acquire()
        except TimeoutError:
            self._metrics.strategy_refused.inc()
            raise StrategyBusyError("the service is busy with expensive recommendations; try again shortly") from None
        try:
            return await asyncio.get_running_loop().run_in_executor(self._strategy_executor, function, *args)
        finally:
            self._strategy_slots.release()

    async def recommend(
        self, track_id: str, k: int, strategy: Strategy, request_id: str, filters: TrackFilters | None = None
    ) -> Served:
        """``GET /recommend/{id}`` and each item of a batch: what sounds like an indexed track."""
        snapshot = self.searcher()  # this request's snapshot, whatever swaps meanwhile
        await self._require_indexed(snapshot, track_id)
        reference = Reference(
            kind="track",
            query=QueryVectors(snapshot.vector_of(track_id)[None, :], _no_vectors(snapshot)),
            exclude=frozenset({track_id}),
            sequence=snapshot.sequence_of(track_id),
            metadata_id=track_id,
            track_id=track_id,
            cache_id=track_id,
        )
        return await self.serve(snapshot, reference, k, strategy, request_id, filters)

    async def _require_indexed(self, snapshot: SnapshotSearcher, track_id: str) -> None:
        if track_id not in snapshot:
            record = await self._catalog.get(track_id)
            if record is None or record.status == "removed":
                raise TrackNotFoundError(track_id)
            raise TrackNotIndexedError(track_id, record.status, snapshot.version)

    # --- references of POST /search ------------------------------------------------------------

    def vector_reference(self, snapshot: SnapshotSearcher, vector: list[float]) -> Reference:
        """A vector a client computed with the serving model: its dimension must be the snapshot's."""
        query = _unit(vector, snapshot.dim, "vector")
        return Reference(
            kind="vector",
            query=QueryVectors(query[None, :], _no_vectors(snapshot)),
            exclude=frozenset(),
            sequence=None,
            metadata_id=None,
            track_id=None,
            cache_id=None,  # a vector is whatever the client holds: nothing derived from it is kept
            description={"kind": "vector", "dim": int(query.shape[0])},
        )

    def clip_reference(self, snapshot: SnapshotSearcher, clip: EmbeddedClip) -> Reference:
        """A clip the embedder embedded: its model must be the one that made the snapshot's vectors."""
        serving = snapshot.manifest.model
        if serving is None or clip.model != serving:
            raise ModelMismatchError(clip.model, serving, snapshot.version)
        query = _unit(clip.vector, snapshot.dim, "clip")
        return Reference(
            kind="clip",
            query=QueryVectors(query[None, :], _no_vectors(snapshot)),
            exclude=frozenset(),
            sequence=clip.pitch_sequence,
            metadata_id=None,
            track_id=None,
            cache_id=None,  # nothing derived from a listener's clip is stored, the answer included
            description={
                "kind": "clip",
                "duration_s": clip.duration_s,
                "model": clip.model.model_dump(),
                "pitch_frames": 0 if clip.pitch_sequence is None else int(clip.pitch_sequence.shape[0]),
            },
        )

    async def tracks_reference(
        self, snapshot: SnapshotSearcher, positive: list[str], negative: list[str], combine: Combine
    ) -> Reference:
        """Several indexed tracks: like the positives, unlike the negatives (``combine`` says how)."""
        for track_id in dict.fromkeys([*positive, *negative]):
            await self._require_indexed(snapshot, track_id)
        positives = np.stack([snapshot.vector_of(t) for t in positive])
        negatives = np.stack([snapshot.vector_of(t) for t in negative]) if negative else _no_vectors(snapshot)
        if combine == "average":
            # Qdrant's average_vector: away from the negatives' mean by as much as towards the positives'.
            mean = positives.mean(axis=0)
            combined = 2 * mean - negatives.mean(axis=0) if negative else mean
            query = QueryVectors(_unit(combined.tolist(), snapshot.dim, "positive")[None, :], _no_vectors(snapshot))
        else:
            query = QueryVectors(positives.astype(np.float32), negatives.astype(np.float32))
        first = positive[0]
        identity = json.dumps({"p": positive, "n": negative, "c": combine}, separators=(",", ":"))
        return Reference(
            kind="tracks",
            query=query,
            exclude=frozenset([*positive, *negative]),
            # The re-rank and the hybrid strategy compare with the first positive.
            sequence=snapshot.sequence_of(first),
            metadata_id=first,
            track_id=None,
            cache_id="tracks:" + hashlib.sha256(identity.encode()).hexdigest()[:32],
            description={"kind": "tracks", "positive": positive, "negative": negative, "combine": combine},
            analytics_id=first,
        )

    # --- one pipeline for every reference ------------------------------------------------------

    async def serve(
        self,
        snapshot: SnapshotSearcher,
        reference: Reference,
        k: int,
        strategy: Strategy,
        request_id: str,
        filters: TrackFilters | None = None,
    ) -> Served:
        started = time.perf_counter()
        if filters is not None and filters.empty:
            filters = None
        name = strategy.name.value
        key = None
        if strategy.cacheable and reference.cache_id is not None:
            params = strategy.params() if filters is None else {**strategy.params(), "filters": filters.canonical()}
            key = cache_key(self._prefix, snapshot.version, reference.cache_id, k, name, params)
        body, cached = await self._cache.get_or_compute(
            key, lambda: self._compute(snapshot, reference, k, strategy, filters)
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
        self._metrics.recommendations.labels(name, str(cached).lower()).inc()
        full = body[:-1] + b',"cached":%s,"computation_time_ms":%.3f}' % (b"true" if cached else b"false", elapsed_ms)
        analytics_id = reference.analytics_id or reference.track_id
        if analytics_id is not None:
            # A clip or a vector names no track to key the event by (and nothing of a clip is kept anywhere).
            self._publish(
                request_id,
                analytics_id,
                reference.kind,
                filters,
                k,
                strategy,
                body,
                snapshot.version,
                elapsed_ms,
                cached,
            )
        return Served(full, cached, snapshot.version)

    async def _compute(
        self,
        snapshot: SnapshotSearcher,
        reference: Reference,
        k: int,
        strategy: Strategy,
        filters: TrackFilters | None,
    ) -> tuple[bytes, bool]:
        """(body, cacheable); a degraded body (the catalog was down) is not cacheable."""
        self._metrics.computed.labels(strategy.name.value).inc()
        # propose
        # The re-rank may look deeper than the strategy's pool (CandidateReranker.depth).
        proposed = max(strategy.pool, self._reranker.depth)
        wanted = proposed + len(reference.exclude) + _REMOVED_MARGIN
        neighbours, matching = await self._propose(snapshot, reference.query, wanted, filters)
        degraded = False
        known = [i for i in (reference.metadata_id, reference.track_id) if i is not None]
        try:
            records = await self._catalog.get_many([*known, *(n.track_id for n in neighbours)])
        except (CatalogUnavailableError, CatalogBusyError):
            # The snapshot alone can answer "what sounds like this": serve the neighbours
            # without titles (and without removals made since the snapshot) rather than a 503.
            # (A filtered search never gets here: its proposal already needed the catalog.)
            records = {}
            degraded = True
            self._metrics.degraded.inc()
        kept = {
            n.track_id: n
            for n in neighbours
            if n.track_id not in reference.exclude
            and (n.track_id not in records or records[n.track_id].status != "removed")
        }
        candidates = [Candidate(n.track_id, n.score) for n in list(kept.values())[:proposed]]
        # re-rank, then choose
        # An expensive strategy waits for the strategy threads; a blocking re-rank alone is bounded
        # like a search (K alignments, each capped in frames), so it shares the search threads
        # and a plain "similar" never queues behind someone's k-means.
        if strategy.heavy:
            runner = self._strategy_threads
        elif self._reranker.heavy:
            runner = self._search_threads
        else:
            runner = _inline
        picks = await runner(self._rerank_and_choose, snapshot, reference, candidates, kept, records, strategy)
        fields: dict[str, Any] = {
            "recommendations": [
                RecommendedTrack(
                    **TrackOut.build(pick.track_id, records.get(pick.track_id), snapshot.version).model_dump(),
                    rank=rank,
                    similarity_score=round(pick.similarity, 6),
                    strategy_score=round(pick.score, 6),
                    explanation=pick.explanation,
                    alignment=Alignment.of(pick.alignment),
                )
                for rank, pick in enumerate(picks, start=1)
            ],
            "strategy": strategy.name,
            "algorithm": strategy.algorithm,
            "params": strategy.params(),
            "k": k,
            "snapshot_version": snapshot.version,
            "degraded": degraded,
            "filters": (
                None if filters is None else FilterOutcome(criteria=filters.canonical(), matching_tracks=matching)
            ),
            "shortfall": _shortfall(k, len(picks), len(kept), candidates, strategy, filters, matching),
        }
        reference_track = (
            TrackOut.build(reference.track_id, records.get(reference.track_id), snapshot.version)
            if reference.track_id is not None
            else None
        )
        response: RecommendationResponse
        if reference.kind == "track" and reference_track is not None:
            response = RecommendationResponse(reference_track=reference_track, **fields)
        else:
            response = SearchResponse(reference_track=reference_track, query=reference.description, **fields)
        return response.model_dump_json(exclude={"cached", "computation_time_ms"}).encode("utf-8"), not degraded

    async def _propose(
        self, snapshot: SnapshotSearcher, query: QueryVectors, n: int, filters: TrackFilters | None
    ) -> tuple[list[Neighbour], int | None]:
        """The ``n`` best candidates that pass ``filters``, and how many tracks of the snapshot match (None when
        not counted). The filter is applied inside the search: when at most ``filter_max_ids`` tracks match,
        exactly over their rows; otherwise (a broad filter) FAISS over-fetches by a bounded factor, round after
        round, until ``n`` matches are found, the snapshot runs out, or ``filter_max_fetch`` candidates were
        looked at."""
        if filters is None:
            return await self._search_threads(self._timed, snapshot.propose, query, n), None
        limits = self.filter_limits
        matching_ids = await self._catalog.matching_ids(filters, limits.max_ids + 1)
        if len(matching_ids) <= limits.max_ids:
            selection = snapshot.select(matching_ids)
            matching = sum(len(rows) for rows in selection.values())
            return await self._search_threads(self._timed, snapshot.search_among, query, selection, n), matching
        fetch = min(n * _OVERFETCH_FACTOR, limits.max_fetch)
        while True:
            found = await self._search_threads(self._timed, snapshot.propose, query, fetch)
            passing = await self._catalog.matching_among(filters, [f.track_id for f in found])
            kept = [f for f in found if f.track_id in passing]
            if len(kept) >= n or len(found) < fetch or fetch >= limits.max_fetch:
                return kept[:n], None
            fetch = min(fetch * _OVERFETCH_FACTOR, limits.max_fetch)

    def _rerank_and_choose(
        self,
        snapshot: SnapshotSearcher,
        reference: Reference,
        candidates: list[Candidate],
        kept: dict[str, Neighbour],
        records: dict[str, TrackRecord],
        strategy: Strategy,
    ) -> list[Pick]:
        # The strategy chooses from its own pool, cut from the re-ranked order (versions first).
        ordered = self._reranker.rerank(snapshot, reference.sequence, candidates)[: strategy.pool]
        affinity = _affinity_fields(records.get(reference.metadata_id)) if reference.metadata_id else {}
        pool = CandidatePool(
            candidates=ordered,
            vectors=lambda: snapshot.vectors_of([kept[c.track_id] for c in ordered]),
            reference=affinity,
            metadata={c.track_id: _affinity_fields(records.get(c.track_id)) for c in ordered},
        )
        # Every strategy's picks carry their alignment, whichever strategy chose them.
        alignments = {c.track_id: c.alignment for c in ordered if c.alignment is not None}
        return [replace(pick, alignment=alignments.get(pick.track_id)) for pick in strategy.choose(pool)]

    def _timed(self, function: Callable[..., T], *args: object) -> T:
        started = time.perf_counter()
        found = function(*args)
        self._metrics.search_seconds.observe(time.perf_counter() - started)
        return found

    def _publish(
        self,
        request_id: str,
        track_id: str,
        kind: QueryKind,
        filters: TrackFilters | None,
        k: int,
        strategy: Strategy,
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
            # The body may have come from Redis: whatever it holds, fail as a ValueError, which the
            # publisher counts as an invalid event, never as an error that ends its task.
            try:
                return _served_event()
            except Exception as exc:
                raise ValueError(f"recommendation body unusable for analytics: {type(exc).__name__}") from exc

        def _served_event() -> RecommendationServed:
            results = json.loads(body)["recommendations"]
            return RecommendationServed(
                request_id=request_id,
                request=RecommendRequestSummary(
                    track_id=track_id,
                    k=k,
                    strategy=strategy.name.value,
                    params=strategy.params(),
                    query_kind=kind,
                    filters=None if filters is None else filters.canonical(),
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


def _no_vectors(snapshot: SnapshotSearcher) -> FloatMatrix:
    return np.zeros((0, snapshot.dim or 0), dtype=np.float32)


def _unit(values: list[float], dim: int | None, name: str) -> FloatMatrix:
    """``values`` as a unit float32 vector of the snapshot's dimension (``ParameterError`` otherwise)."""
    if dim is None:
        raise ParameterError(name, "the serving snapshot is empty: there is nothing to search yet")
    if len(values) != dim:
        raise ParameterError(name, f"has {len(values)} values; the serving model's vectors have {dim}")
    vector = np.asarray(values, dtype=np.float64)
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or norm <= 1e-12:
        raise ParameterError(name, "must be finite and not all zeros")
    unit: FloatMatrix = (vector / norm).astype(np.float32)
    return unit


def _shortfall(
    k: int,
    picked: int,
    available: int,
    candidates: list[Candidate],
    strategy: Strategy,
    filters: TrackFilters | None,
    matching: int | None,
) -> str | None:
    """Why fewer than ``k`` came back, in a sentence; None when ``k`` did."""
    if picked >= k:
        return None
    if filters is not None and available < k:
        if matching is not None:
            return f"only {available} indexed tracks match the filters (besides the reference)"
        return f"only {available} of the nearest candidates looked at match the filters"
    if available < k:
        return f"the serving snapshot holds only {available} tracks to recommend"
    return f"strategy {strategy.name.value} picked {picked} of the {len(candidates)} candidates"


def _affinity_fields(record: TrackRecord | None) -> dict[str, str | None]:
    if record is None:
        return {}
    return {"composer": record.composer, "era": record.era, "form": record.form}


async def _inline(function: Callable[..., T], *args: object) -> T:
    """Cheap strategies (O(pool) in Python) run on the loop: a thread hop would cost more than they do."""
    return function(*args)
