"""One loaded snapshot: its FAISS shards, id maps and memory-mapped vectors.

A ``SnapshotSearcher`` is immutable once built. The service swaps whole
searchers; a request keeps the one it started with, so it finishes on the
snapshot it began on even if a newer one is swapped in meanwhile.

Search is exact over the shards: each shard returns its own top ``n`` and the
merge keeps the best ``n`` of all of them, which is the same answer one big
index of the same kind would give.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from mess.contracts.storage import SnapshotManifest
from mess.query.sequences import PitchSequence, ShardSequenceTable

FloatMatrix = npt.NDArray[np.float32]


@dataclass(frozen=True, eq=False)
class LoadedShard:
    """A shard ready to search. ``vectors`` is usually a read-only memmap."""

    shard: int
    index: Any  # faiss.Index: faiss ships no type hints
    ids: tuple[str, ...]
    vectors: FloatMatrix
    # (index sha256, ids sha256, vectors sha256, search params, sequence sha256s): equal keys mean
    # equal shards, so a new snapshot can reuse a shard the serving one already loaded.
    reuse_key: tuple[str, ...]
    # the rows' pitch sequences; None for a snapshot written before the indexer kept them
    sequences: ShardSequenceTable | None = None

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

    def sequence_of(self, track_id: str) -> PitchSequence | None:
        """The track's pitch sequence (a memmap slice), or None when its shard or the track has none."""
        location = self.locations.get(track_id)
        if location is None:
            return None
        shard = self.shards[location[0]]
        return shard.sequences.of(location[1]) if shard.sequences is not None else None

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

    def select(self, track_ids: Iterable[str]) -> dict[int, npt.NDArray[np.int64]]:
        """Shard position -> sorted rows of the given tracks this snapshot holds (others are skipped)."""
        rows: dict[int, list[int]] = {}
        for track_id in track_ids:
            location = self.locations.get(track_id)
            if location is not None:
                rows.setdefault(location[0], []).append(location[1])
        return {position: np.array(sorted(found), dtype=np.int64) for position, found in rows.items()}

    def propose(self, query: QueryVectors, n: int) -> list[Neighbour]:
        """The ``n`` best by ``query``'s score: FAISS proposes ``n`` per proposing vector (one, unless the query
        keeps several positives apart), and the union is scored exactly."""
        if query.single:
            return self.search(query.positives[0], n)
        seen: dict[str, Neighbour] = {}
        for vector in query.positives:
            for neighbour in self.search(vector, n):
                seen.setdefault(neighbour.track_id, neighbour)
        found = list(seen.values())
        return _best(found, query.score(self.vectors_of(found)), n)

    def search_among(self, query: QueryVectors, selection: dict[int, npt.NDArray[np.int64]], n: int) -> list[Neighbour]:
        """The exact ``n`` best among the selected rows (a filter's matches): an inner product per row, so the
        cost is the selection's size, and the answer is brute force's whatever the index type."""
        found: list[Neighbour] = []
        scores: list[npt.NDArray[np.float64]] = []
        for position in sorted(selection):
            rows = selection[position]
            shard = self.shards[position]
            # Fancy indexing a memmap reads only the selected rows' pages.
            scores.append(query.score(np.asarray(shard.vectors[rows], dtype=np.float32)))
            found.extend(Neighbour(shard.ids[int(r)], 0.0, position, int(r)) for r in rows)
        if not found:
            return []
        return _best(found, np.concatenate(scores), n)


def _best(found: list[Neighbour], scores: npt.NDArray[np.float64], n: int) -> list[Neighbour]:
    # Stable, by shard then row among ties, as the merged FAISS search is.
    order = np.argsort(-scores, kind="stable")[:n]
    return [
        Neighbour(found[i].track_id, float(scores[i]), found[i].shard, found[i].row) for i in (int(j) for j in order)
    ]


@dataclass(frozen=True)
class QueryVectors:
    """What a search scores candidates by.

    One positive and no negative: the inner product with it (a track, a clip, a vector, or the average of
    several tracks). Several positives and negatives (``best_score``, as Qdrant's): a candidate at least as
    close to its nearest positive as to its nearest negative scores sigmoid(that positive similarity), in
    (0, 1); one closer to a negative scores -sigmoid(that negative similarity), in (-1, 0), so it ranks below
    every candidate a positive claims.
    """

    positives: FloatMatrix  # (p, dim)
    negatives: FloatMatrix  # (q, dim); (0, dim) when none

    @property
    def single(self) -> bool:
        return bool(self.positives.shape[0] == 1 and self.negatives.shape[0] == 0)

    def score(self, vectors: FloatMatrix) -> npt.NDArray[np.float64]:
        if vectors.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        best_positive: npt.NDArray[np.float64] = (vectors @ self.positives.T).max(axis=1).astype(np.float64)
        if self.negatives.shape[0] == 0:
            return best_positive
        best_negative: npt.NDArray[np.float64] = (vectors @ self.negatives.T).max(axis=1).astype(np.float64)
        # Qdrant's best_score: the sigmoid keeps every score a positive claims above every score a negative
        # claims, whatever the signs of the similarities.
        combined: npt.NDArray[np.float64] = np.where(
            best_positive >= best_negative, _sigmoid(best_positive), -_sigmoid(best_negative)
        )
        return combined


def _sigmoid(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    result: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-values))
    return result
