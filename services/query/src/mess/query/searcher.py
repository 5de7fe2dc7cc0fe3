"""One loaded snapshot: its FAISS shards, id maps and memory-mapped vectors.

A ``SnapshotSearcher`` is immutable once built. The service swaps whole
searchers; a request keeps the one it started with, so it finishes on the
snapshot it began on even if a newer one is swapped in meanwhile.

Search is exact over the shards: each shard returns its own top ``n`` and the
merge keeps the best ``n`` of all of them, which is the same answer one big
index of the same kind would give.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from mess.contracts.storage import SnapshotManifest

FloatMatrix = npt.NDArray[np.float32]


@dataclass(frozen=True, eq=False)
class LoadedShard:
    """A shard ready to search. ``vectors`` is usually a read-only memmap."""

    shard: int
    index: Any  # faiss.Index: faiss ships no type hints
    ids: tuple[str, ...]
    vectors: FloatMatrix
    # (index sha256, ids sha256, vectors sha256, search params): equal keys mean equal shards,
    # so a new snapshot can reuse a shard the serving one already loaded.
    reuse_key: tuple[str, str, str, str]

    @property
    def count(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Neighbour:
    track_id: str
    score: float
    shard: int
    row: int


@dataclass(eq=False)
class SnapshotSearcher:
    manifest: SnapshotManifest
    shards: tuple[LoadedShard, ...]
    locations: dict[str, tuple[int, int]] = field(init=False)

    def __post_init__(self) -> None:
        locations: dict[str, tuple[int, int]] = {}
        for position, shard in enumerate(self.shards):
            for row, track_id in enumerate(shard.ids):
                if track_id in locations:
                    raise ValueError(f"track {track_id} appears in two shards")
                locations[track_id] = (position, row)
        self.locations = locations

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def vector_count(self) -> int:
        return len(self.locations)

    @property
    def dim(self) -> int | None:
        return self.manifest.dim

    def __contains__(self, track_id: object) -> bool:
        return track_id in self.locations

    def vector_of(self, track_id: str) -> FloatMatrix:
        """The stored vector of a track (a copy, so the memmap page can be dropped)."""
        position, row = self.locations[track_id]
        return np.array(self.shards[position].vectors[row], dtype=np.float32)

    def vectors_of(self, neighbours: list[Neighbour]) -> FloatMatrix:
        if not neighbours:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        return np.stack([np.asarray(self.shards[n.shard].vectors[n.row], dtype=np.float32) for n in neighbours])

    def search(self, query: FloatMatrix, n: int) -> list[Neighbour]:
        """The ``n`` best neighbours over every shard, best first (inner product)."""
        if n <= 0 or not self.locations:
            return []
        matrix = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        scores: list[FloatMatrix] = []
        owners: list[npt.NDArray[np.int64]] = []
        rows: list[npt.NDArray[np.int64]] = []
        for position, shard in enumerate(self.shards):
            if shard.count == 0:
                continue
            shard_scores, shard_rows = shard.index.search(matrix, min(n, shard.count))
            found = shard_rows[0] >= 0  # FAISS pads with -1 when it finds fewer
            scores.append(shard_scores[0][found])
            rows.append(shard_rows[0][found].astype(np.int64))
            owners.append(np.full(int(found.sum()), position, dtype=np.int64))
        if not scores:
            return []
        all_scores = np.concatenate(scores)
        all_rows = np.concatenate(rows)
        all_owners = np.concatenate(owners)
        # A stable sort on the negated score keeps shard order among exact ties,
        # so the merge is deterministic.
        best = np.argsort(-all_scores, kind="stable")[:n]
        return [
            Neighbour(
                track_id=self.shards[int(all_owners[i])].ids[int(all_rows[i])],
                score=float(all_scores[i]),
                shard=int(all_owners[i]),
                row=int(all_rows[i]),
            )
            for i in best
        ]
