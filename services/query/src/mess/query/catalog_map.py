"""The catalog map: each serving snapshot's vectors projected to two dimensions.

The explorer draws it so a listener can see how the catalog is laid out. The
projection is PCA (the two directions of greatest variance), which is cheap,
deterministic and needs no extra dependency. It is computed once per snapshot
version, lazily on the first request for it, in a thread of its own (never on
the event loop), and coalesced: concurrent first requests wait on one
computation. It is bounded: a snapshot larger than ``max_points`` is sampled,
with a seed derived from the version, so every replica draws the same sample
and the same picture.

Composer and dataset labels come from the track registry. When the registry
is unreachable the map is still served, without labels and marked
``degraded``, and that answer is not kept; the projection is.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from mess.query.catalog import CatalogBusyError, CatalogUnavailableError, TrackCatalog, TrackRecord
from mess.query.searcher import SnapshotSearcher

log = logging.getLogger(__name__)

# 20,000 points draw in a few milliseconds on a canvas, and their PCA over 1,024-dimensional
# MERT vectors costs about 2e10 operations (well under a second): beyond that a picture gains nothing.
MAX_POINTS = 20_000
# The serving version and the one before it (a replica mid-swap, a client holding the old answer).
KEPT_VERSIONS = 2
# Registry rows fetched per query: the event loop gets a turn between batches.
_LABEL_BATCH = 2_000
_DECIMALS = 5

Kept = TypeVar("Kept")


class MapPoints(BaseModel):
    """The points, one column per field (compact for 20,000 points)."""

    track_id: list[str]
    x: list[float]
    y: list[float]
    composer: list[int | None] = Field(description="index into labels.composer; null when unknown")
    dataset: list[int | None] = Field(description="index into labels.dataset; null when unknown")


class MapLabels(BaseModel):
    composer: list[str] = Field(description="composers, most frequent first")
    dataset: list[str] = Field(description="datasets, most frequent first")


class CatalogMap(BaseModel):
    """`GET /map`: the serving snapshot's catalog in two dimensions."""

    snapshot_version: str
    method: str = Field(description="pca: the first two principal components of the stored vectors")
    vector_count: int = Field(description="tracks in the snapshot")
    sampled: int = Field(description="points on the map: all tracks, or a sample of at most 20,000")
    explained_variance: list[float] = Field(description="share of the variance along x and along y")
    labels: MapLabels
    points: MapPoints
    degraded: bool = Field(
        default=False, description="true when the track registry was unreachable: points carry no labels"
    )


FloatMatrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Projection:
    """What is kept of a snapshot for its map: ids and coordinates, never the searcher itself
    (which would keep a swapped-out snapshot's memory maps alive)."""

    version: str
    vector_count: int
    track_ids: tuple[str, ...]
    xy: npt.NDArray[np.float64]
    explained: tuple[float, float]


def _seed(version: str) -> int:
    return int.from_bytes(hashlib.sha256(version.encode()).digest()[:8], "big")


def project(searcher: SnapshotSearcher, max_points: int = MAX_POINTS) -> Projection:
    """PCA of the snapshot's vectors (a sample of ``max_points`` when there are more). Blocking."""
    counts = [shard.count for shard in searcher.shards]
    total = sum(counts)
    chosen = np.arange(total, dtype=np.int64)
    if total > max_points:
        chosen = np.sort(np.random.default_rng(_seed(searcher.version)).choice(total, max_points, replace=False))
    ids: list[str] = []
    parts: list[FloatMatrix] = []
    start = 0
    for shard, count in zip(searcher.shards, counts, strict=True):
        rows = chosen[(chosen >= start) & (chosen < start + count)] - start
        start += count
        if len(rows) == 0:
            continue
        # Fancy indexing copies only the sampled rows out of the memory map.
        parts.append(np.asarray(shard.vectors[rows], dtype=np.float32))
        ids += [shard.ids[int(r)] for r in rows]
    if not parts:
        return Projection(searcher.version, total, (), np.zeros((0, 2)), (0.0, 0.0))
    matrix = np.concatenate(parts)
    centred = (matrix - matrix.mean(axis=0, dtype=np.float64)).astype(np.float64)
    rows_count, dim = centred.shape
    if rows_count >= dim:
        # d x d covariance: one matrix product over the rows, then a small eigenproblem.
        values, vectors = np.linalg.eigh(centred.T @ centred)
        order = np.argsort(values)[::-1][:2]
        variances, components = np.clip(values[order], 0.0, None), vectors[:, order]
        total_variance = float(np.clip(values, 0.0, None).sum())
    else:
        # Fewer points than dimensions: the thin SVD is the cheaper route to the same components.
        _, singular, right = np.linalg.svd(centred, full_matrices=False)
        variances, components = singular[:2] ** 2, right[:2].T
        total_variance = float((singular**2).sum())
    if components.shape[1] < 2:
        components = np.pad(components, ((0, 0), (0, 2 - components.shape[1])))
        variances = np.pad(variances, (0, 2 - len(variances)))
    # An eigenvector's sign is arbitrary; fixing it keeps the picture the same on every replica and run.
    for column in range(2):
        if components[np.argmax(np.abs(components[:, column])), column] < 0:
            components[:, column] *= -1
    xy = centred @ components
    explained = (
        (float(variances[0] / total_variance), float(variances[1] / total_variance))
        if total_variance > 0
        else (0.0, 0.0)
    )
    return Projection(searcher.version, total, tuple(ids), xy, explained)


def _ranked(values: list[str | None]) -> list[str]:
    counts = Counter(v for v in values if v)
    return [name for name, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]


def render(projection: Projection, records: dict[str, TrackRecord] | None) -> bytes:
    """The JSON body of `GET /map`. Blocking (20,000 points take tens of milliseconds)."""
    composers = [records[t].composer if records and t in records else None for t in projection.track_ids]
    datasets = [records[t].dataset if records and t in records else None for t in projection.track_ids]
    composer_labels, dataset_labels = _ranked(composers), _ranked(datasets)
    composer_index = {name: i for i, name in enumerate(composer_labels)}
    dataset_index = {name: i for i, name in enumerate(dataset_labels)}
    rounded = np.round(projection.xy, _DECIMALS)
    body = CatalogMap(
        snapshot_version=projection.version,
        method="pca",
        vector_count=projection.vector_count,
        sampled=len(projection.track_ids),
        explained_variance=[round(v, 4) for v in projection.explained],
        labels=MapLabels(composer=composer_labels, dataset=dataset_labels),
        points=MapPoints(
            track_id=list(projection.track_ids),
            x=rounded[:, 0].tolist() if len(rounded) else [],
            y=rounded[:, 1].tolist() if len(rounded) else [],
            composer=[composer_index[c] if c else None for c in composers],
            dataset=[dataset_index[d] if d else None for d in datasets],
        ),
        degraded=records is None,
    )
    return json.dumps(body.model_dump(), separators=(",", ":")).encode()


class CatalogMaps:
    """Map bodies per snapshot version, computed on first request and kept for the newest versions."""

    def __init__(self, max_points: int = MAX_POINTS, kept_versions: int = KEPT_VERSIONS) -> None:
        self._max_points = max_points
        self._kept = kept_versions
        # One thread: two snapshots' maps never compete with each other for CPU, and never with searches.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mess-map")
        self._projections: OrderedDict[str, asyncio.Future[Projection]] = OrderedDict()
        self._bodies: OrderedDict[str, bytes] = OrderedDict()

    def close(self) -> None:
        for future in self._projections.values():
            future.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def has(self, version: str) -> bool:
        """Whether the complete map of ``version`` is kept."""
        return version in self._bodies

    async def body(self, searcher: SnapshotSearcher, catalog: TrackCatalog) -> tuple[bytes, bool]:
        """The map of ``searcher``'s snapshot and whether it is complete (labels included)."""
        version = searcher.version
        kept = self._bodies.get(version)
        if kept is not None:
            return kept, True
        projection = await self._projection(searcher)
        records = await self._labels(catalog, projection.track_ids)
        loop = asyncio.get_running_loop()
        body = await loop.run_in_executor(self._executor, render, projection, records)
        if records is not None:
            self._remember(self._bodies, version, body)
        return body, records is not None

    async def _projection(self, searcher: SnapshotSearcher) -> Projection:
        version = searcher.version
        future = self._projections.get(version)
        if future is None or (future.done() and (future.cancelled() or future.exception() is not None)):
            # A failed computation is not kept: the next request tries again.
            future = asyncio.get_running_loop().run_in_executor(self._executor, project, searcher, self._max_points)
            self._remember(self._projections, version, future)
        # Shielded: a client that goes away does not cancel the computation others wait on.
        return await asyncio.shield(future)

    async def _labels(self, catalog: TrackCatalog, track_ids: tuple[str, ...]) -> dict[str, TrackRecord] | None:
        records: dict[str, TrackRecord] = {}
        try:
            for start in range(0, len(track_ids), _LABEL_BATCH):
                records.update(await catalog.get_many(track_ids[start : start + _LABEL_BATCH]))
        except (CatalogBusyError, CatalogUnavailableError) as exc:
            log.warning("map without labels: %s", exc)
            return None
        return records

    def _remember(self, store: OrderedDict[str, Kept], version: str, value: Kept) -> None:
        store[version] = value
        store.move_to_end(version)
        while len(store) > self._kept:
            _, dropped = store.popitem(last=False)
            if isinstance(dropped, asyncio.Future):
                dropped.cancel()
