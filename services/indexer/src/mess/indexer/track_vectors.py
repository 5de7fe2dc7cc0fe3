"""Every indexed track's current vector, kept by shard: the state a snapshot saves.

All vectors are kept (not only the FAISS indexes) so that any shard can be
rebuilt with another index type, re-sharded, or re-tuned without replaying
Kafka. A change marks its shard dirty; the next snapshot rebuilds only dirty
shards and references the others from the previous snapshot.

Ordering. Within one topic a track's events arrive in offset order (they are
keyed by track id), and on the compacted embedded topic the last value per key
is the state, so a later embedding always replaces an earlier one. Across the
embedded and removed topics nothing orders the two, so ``occurred_at`` does:
an embedding older than (or as old as) an applied removal of the same track is
stale and dropped, and a removal older than the applied embedding is dropped.
Removals leave a tombstone (track id -> removal time) for that comparison;
tombstones are saved in the snapshot with the vectors, so the rule survives a
restart. Ties go to the removal: deleting is the safer mistake.
"""

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from mess.contracts.events import ModelIdentity
from mess.indexer.sharding import shard_of

Vector = npt.NDArray[np.float32]


class Outcome(StrEnum):
    """What applying one event did; every value is also a metric label."""

    ADDED = "added"
    REPLACED = "replaced"
    UNCHANGED = "unchanged"  # a redelivery of what is already applied
    REMOVED = "removed"
    TOMBSTONED = "tombstoned"  # removal of a track not (yet) indexed: remembered for ordering
    STALE = "stale"  # older than what is applied for the track across topics
    MODEL_MISMATCH = "model_mismatch"
    ZERO_VECTOR = "zero_vector"

    @property
    def changed(self) -> bool:
        return self in (Outcome.ADDED, Outcome.REPLACED, Outcome.REMOVED, Outcome.TOMBSTONED)


@dataclass
class ShardVectors:
    """One shard's tracks: vector and the ``occurred_at`` (epoch microseconds) of
    the embedding applied, plus tombstones of removed tracks."""

    vectors: dict[str, Vector] = field(default_factory=dict)
    embedded_at: dict[str, int] = field(default_factory=dict)
    removed_at: dict[str, int] = field(default_factory=dict)
    dirty: bool = False


@dataclass(frozen=True)
class ShardContents:
    """A shard frozen for a snapshot: rows sorted by track id so that equal
    contents always produce equal files."""

    shard: int
    ids: list[str]
    vectors: Vector
    embedded_at: list[int]
    removed_at: dict[str, int]

    def __post_init__(self) -> None:
        if len(self.ids) != self.vectors.shape[0] or len(self.ids) != len(self.embedded_at):
            raise ValueError(f"shard {self.shard}: ids, vectors and clock differ in length")


@dataclass(frozen=True)
class ShardCapture:
    """A cheap copy of a shard's dicts, taken between two Kafka batches; the
    arrays themselves are never mutated, so sharing them is safe. ``freeze``
    does the expensive sort and stack, meant for a worker thread."""

    shard: int
    vectors: dict[str, Vector]
    embedded_at: dict[str, int]
    removed_at: dict[str, int]
    dim: int

    def freeze(self) -> ShardContents:
        ids = sorted(self.vectors)
        matrix = np.empty((len(ids), self.dim), dtype=np.float32)
        for row, track_id in enumerate(ids):
            matrix[row] = self.vectors[track_id]
        return ShardContents(
            shard=self.shard,
            ids=ids,
            vectors=matrix,
            embedded_at=[self.embedded_at[t] for t in ids],
            removed_at=dict(self.removed_at),
        )


class ModelGuard:
    """Fixes which model the index holds: a configured fingerprint, else the
    first vector's model. An index never mixes two models."""

    def __init__(self, model: ModelIdentity | None, expected_fingerprint: str | None) -> None:
        if model is not None and expected_fingerprint is not None and model.fingerprint() != expected_fingerprint:
            raise ValueError(
                f"the index holds model {model.fingerprint()} but {expected_fingerprint} is required; "
                "rebuild the index for that model (python -m mess.indexer rebuild --model ...)"
            )
        self.model = model
        self.expected_fingerprint = expected_fingerprint

    def admits(self, model: ModelIdentity) -> bool:
        if self.model is not None:
            return model.fingerprint() == self.model.fingerprint()
        return self.expected_fingerprint is None or model.fingerprint() == self.expected_fingerprint

    def describe_expected(self) -> str:
        if self.model is not None:
            return self.model.fingerprint()
        return self.expected_fingerprint or "any"


class TrackVectors:
    """The indexer's whole state: vectors by shard, clocks, tombstones, the model."""

    def __init__(self, shard_count: int, guard: ModelGuard) -> None:
        if shard_count < 1:
            raise ValueError("shard_count must be at least 1")
        self.shard_count = shard_count
        self.guard = guard
        self.shards = [ShardVectors() for _ in range(shard_count)]

    @property
    def model(self) -> ModelIdentity | None:
        return self.guard.model

    @property
    def dim(self) -> int | None:
        return self.guard.model.dim if self.guard.model is not None else None

    def __len__(self) -> int:
        return sum(len(s.vectors) for s in self.shards)

    def __contains__(self, track_id: object) -> bool:
        return isinstance(track_id, str) and track_id in self._shard(track_id).vectors

    def vector(self, track_id: str) -> Vector | None:
        return self._shard(track_id).vectors.get(track_id)

    def track_ids(self) -> Iterator[str]:
        for shard in self.shards:
            yield from shard.vectors

    def _shard(self, track_id: str) -> ShardVectors:
        return self.shards[shard_of(track_id, self.shard_count)]

    def apply_embedded(self, track_id: str, model: ModelIdentity, vector: Vector, occurred_at_us: int) -> Outcome:
        if not self.guard.admits(model):
            return Outcome.MODEL_MISMATCH
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0.0:
            return Outcome.ZERO_VECTOR
        shard = self._shard(track_id)
        tombstone = shard.removed_at.get(track_id)
        if tombstone is not None and occurred_at_us <= tombstone:
            return Outcome.STALE
        # Inner product on unit vectors is cosine; normalising here means the
        # snapshot's vectors are exactly what the index searched.
        unit = (vector / norm).astype(np.float32)
        unit.flags.writeable = False
        current = shard.vectors.get(track_id)
        if current is not None and np.array_equal(current, unit) and occurred_at_us <= shard.embedded_at[track_id]:
            return Outcome.UNCHANGED
        if self.guard.model is None:
            self.guard.model = model
        shard.vectors[track_id] = unit
        shard.embedded_at[track_id] = max(occurred_at_us, shard.embedded_at.get(track_id, occurred_at_us))
        shard.removed_at.pop(track_id, None)
        shard.dirty = True
        return Outcome.REPLACED if current is not None else Outcome.ADDED

    def apply_removed(self, track_id: str, occurred_at_us: int) -> Outcome:
        shard = self._shard(track_id)
        embedded = shard.embedded_at.get(track_id)
        if embedded is not None and embedded > occurred_at_us:
            return Outcome.STALE
        previous_tombstone = shard.removed_at.get(track_id)
        if previous_tombstone is not None and previous_tombstone >= occurred_at_us and embedded is None:
            return Outcome.UNCHANGED
        shard.removed_at[track_id] = max(occurred_at_us, previous_tombstone or occurred_at_us)
        shard.dirty = True
        if shard.vectors.pop(track_id, None) is not None:
            del shard.embedded_at[track_id]
            return Outcome.REMOVED
        return Outcome.TOMBSTONED

    def load_shard(self, contents: ShardContents) -> None:
        """Install a shard read from a snapshot (its vectors become read-only
        views). Each track goes to the shard the current count gives it, so a
        snapshot with another shard count is re-sharded as it loads; the
        caller then marks every shard dirty."""
        contents.vectors.flags.writeable = False
        for row, track_id in enumerate(contents.ids):
            owner = self._shard(track_id)
            owner.vectors[track_id] = contents.vectors[row]
            owner.embedded_at[track_id] = contents.embedded_at[row]
        for track_id, removed in contents.removed_at.items():
            self._shard(track_id).removed_at[track_id] = removed

    def dirty_shards(self) -> list[int]:
        return [number for number, shard in enumerate(self.shards) if shard.dirty]

    def mark_dirty(self, shards: Iterable[int]) -> None:
        for number in shards:
            self.shards[number].dirty = True

    def capture(self, shards: Iterable[int]) -> list[ShardCapture]:
        """Copy the given shards for a snapshot and mark them clean; a failed
        snapshot must call ``mark_dirty`` with the same shards."""
        dim = self.dim
        if dim is None:
            raise ValueError("no model is known yet, so nothing can be captured")
        captured = []
        for number in shards:
            shard = self.shards[number]
            captured.append(
                ShardCapture(
                    shard=number,
                    vectors=dict(shard.vectors),
                    embedded_at=dict(shard.embedded_at),
                    removed_at=dict(shard.removed_at),
                    dim=dim,
                )
            )
            shard.dirty = False
        return captured

    def sample(self, count: int, seed: int = 0) -> Vector:
        """Up to ``count`` stored vectors chosen at random over all shards: the
        queries an approximate shard is tuned with (real queries are tracks)."""
        dim = self.dim or 0
        total = len(self)
        if total == 0 or dim == 0:
            return np.empty((0, dim), dtype=np.float32)
        chosen = set(random.Random(seed).sample(range(total), min(count, total)))
        rows: list[Vector] = []
        position = 0
        for shard in self.shards:
            for offset, vector in enumerate(shard.vectors.values()):
                if position + offset in chosen:
                    rows.append(vector)
            position += len(shard.vectors)
        return np.stack(rows).astype(np.float32, copy=False)
