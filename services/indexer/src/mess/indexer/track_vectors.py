"""Every indexed track's current vector, kept by shard, and the registry's
latest fact about every track: the state a snapshot saves.

All vectors are kept (not only the FAISS indexes) so that any shard can be
rebuilt with another index type, re-sharded, or re-tuned without replaying
Kafka. A change marks its shard dirty; the next snapshot rebuilds only dirty
shards and references the others from the previous snapshot.

Ordering and trust. No time a producer chose orders anything: a forged
``occurred_at`` in the year 9999 would otherwise outrank every later
removal. The ingest registry is the only writer of facts about a track
(TrackAdded with its content's sha256, TrackRemoved), and its outbox relay
stamps each with the registry sequence (``REGISTRY_SEQUENCE_HEADER``, the
outbox row id: larger for every later fact about a track). Per track the
latest fact is kept, and a fact is applied only if its sequence is at least
the stored one; a fact without the header (an older relay) is applied in
arrival order and keeps the stored sequence. An embedding is only a claim:
it is applied only while the track's latest fact is "added" with the very
sha256 the embedding was made from. Within the embedded topic a track's
embeddings arrive in offset order (keyed by track id), so a later one
replaces an earlier one. Facts are saved in the snapshot with the vectors,
so the rules survive a restart and a rebuild after the added topic's
retention.

Each track's pitch sequence (when its embedder sent one) is part of its
state: it arrives with the vector, is replaced and removed with it, and is
saved in the same shard of the same snapshot, so a restart reloads both.
"""

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from mess.contracts.events import ModelIdentity
from mess.contracts.sequences import PitchSequenceArray
from mess.indexer.sharding import shard_of

Vector = npt.NDArray[np.float32]


class Outcome(StrEnum):
    """What applying one event did; every value is also a metric label."""

    ADDED = "added"
    REPLACED = "replaced"
    UNCHANGED = "unchanged"  # a redelivery of what is already applied
    REMOVED = "removed"
    TOMBSTONED = "tombstoned"  # removal of a track not (yet) indexed: remembered as its latest fact
    REGISTERED = "registered"  # the registry added the track (or announced it again)
    SUPERSEDED = "superseded"  # new content registered: the old content's vector is dropped
    STALE = "stale"  # a fact older than the applied one, or an embedding of a removed track
    MODEL_MISMATCH = "model_mismatch"
    ZERO_VECTOR = "zero_vector"
    CONTENT_MISMATCH = "content_mismatch"  # the embedding's sha256 is not the registered content's
    UNREGISTERED = "unregistered_content"  # an embedding of a track the registry never announced

    @property
    def changed(self) -> bool:
        return self in (
            Outcome.ADDED,
            Outcome.REPLACED,
            Outcome.REMOVED,
            Outcome.TOMBSTONED,
            Outcome.REGISTERED,
            Outcome.SUPERSEDED,
        )


@dataclass(frozen=True)
class Fact:
    """The registry's latest word on a track: added with this content
    (``sha256``), or removed (``sha256`` None); ``registry_sequence`` None when
    no fact seen so far carried the header."""

    sha256: str | None
    registry_sequence: int | None

    @property
    def removed(self) -> bool:
        return self.sha256 is None


def _older(sequence: int | None, than: Fact | None) -> bool:
    """Whether a fact with ``sequence`` precedes the stored one; unknown sequences go by arrival."""
    return (
        sequence is not None
        and than is not None
        and than.registry_sequence is not None
        and (sequence < than.registry_sequence)
    )


@dataclass
class ShardVectors:
    """One shard's tracks: the vector of each indexed track, and the latest
    registry fact of every track the registry told us about."""

    vectors: dict[str, Vector] = field(default_factory=dict)
    facts: dict[str, Fact] = field(default_factory=dict)
    # only tracks that have one; read-only arrays, like the vectors
    sequences: dict[str, PitchSequenceArray] = field(default_factory=dict)
    dirty: bool = False


@dataclass(frozen=True)
class ShardContents:
    """A shard frozen for a snapshot: rows sorted by track id so that equal
    contents always produce equal files."""

    shard: int
    ids: list[str]
    vectors: Vector
    facts: dict[str, Fact]
    # aligned with ``ids``, None where a track has none; empty: no track has one
    sequences: list[PitchSequenceArray | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.ids) != self.vectors.shape[0]:
            raise ValueError(f"shard {self.shard}: ids and vectors differ in length")
        if self.sequences and len(self.sequences) != len(self.ids):
            raise ValueError(f"shard {self.shard}: ids and sequences differ in length")


@dataclass(frozen=True)
class ShardCapture:
    """A cheap copy of a shard's dicts, taken between two Kafka batches; the
    arrays themselves are never mutated, so sharing them is safe. ``freeze``
    does the expensive sort and stack, meant for a worker thread."""

    shard: int
    vectors: dict[str, Vector]
    facts: dict[str, Fact]
    dim: int
    sequences: dict[str, PitchSequenceArray] = field(default_factory=dict)

    def freeze(self) -> ShardContents:
        ids = sorted(self.vectors)
        matrix = np.empty((len(ids), self.dim), dtype=np.float32)
        for row, track_id in enumerate(ids):
            matrix[row] = self.vectors[track_id]
        return ShardContents(
            shard=self.shard,
            ids=ids,
            vectors=matrix,
            facts=dict(self.facts),
            sequences=[self.sequences.get(t) for t in ids] if self.sequences else [],
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
    """The indexer's whole state: vectors and registry facts by shard, the model."""

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

    def sequence(self, track_id: str) -> PitchSequenceArray | None:
        return self._shard(track_id).sequences.get(track_id)

    def track_ids(self) -> Iterator[str]:
        for shard in self.shards:
            yield from shard.vectors

    def _shard(self, track_id: str) -> ShardVectors:
        return self.shards[shard_of(track_id, self.shard_count)]

    def fact(self, track_id: str) -> Fact | None:
        return self._shard(track_id).facts.get(track_id)

    def apply_added(self, track_id: str, sha256: str, registry_sequence: int | None) -> Outcome:
        """The registry (re-)announced the track with content ``sha256``."""
        shard = self._shard(track_id)
        current = shard.facts.get(track_id)
        if _older(registry_sequence, current):
            return Outcome.STALE
        fact = Fact(sha256, registry_sequence if registry_sequence is not None else _sequence_of(current))
        if fact == current:
            return Outcome.UNCHANGED
        shard.facts[track_id] = fact
        shard.dirty = True
        if current is not None and current.sha256 != sha256 and track_id in shard.vectors:
            # The indexed vector describes content the registry no longer holds
            # for this track; its new content's embedding replaces it.
            self._drop_vector(shard, track_id)
            return Outcome.SUPERSEDED
        return Outcome.REGISTERED

    def apply_removed(self, track_id: str, registry_sequence: int | None) -> Outcome:
        shard = self._shard(track_id)
        current = shard.facts.get(track_id)
        if _older(registry_sequence, current):
            return Outcome.STALE
        fact = Fact(None, registry_sequence if registry_sequence is not None else _sequence_of(current))
        dropped = self._drop_vector(shard, track_id)
        if fact == current and not dropped:
            return Outcome.UNCHANGED
        shard.facts[track_id] = fact
        shard.dirty = True
        return Outcome.REMOVED if dropped else Outcome.TOMBSTONED

    def apply_embedded(
        self,
        track_id: str,
        model: ModelIdentity,
        vector: Vector,
        sha256: str,
        sequence: PitchSequenceArray | None = None,
    ) -> Outcome:
        """Index an embedding of content ``sha256``, if that is what the registry
        last said the track holds (``sequence`` is the pitch sequence)."""
        # What no fact could make indexable is refused first, for that reason.
        if not self.guard.admits(model):
            return Outcome.MODEL_MISMATCH
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0.0:
            return Outcome.ZERO_VECTOR
        shard = self._shard(track_id)
        fact = shard.facts.get(track_id)
        if fact is None:
            return Outcome.UNREGISTERED
        if fact.removed:
            return Outcome.STALE
        if fact.sha256 != sha256:
            return Outcome.CONTENT_MISMATCH
        # Inner product on unit vectors is cosine; normalising here means the
        # snapshot's vectors are exactly what the index searched.
        unit = (vector / norm).astype(np.float32)
        unit.flags.writeable = False
        # An empty sequence says no more than none, and a snapshot stores both alike.
        kept = None if sequence is None or sequence.shape[0] == 0 else np.array(sequence, dtype=np.uint8)
        if kept is not None:
            kept.flags.writeable = False
        current = shard.vectors.get(track_id)
        unchanged = current is not None and np.array_equal(current, unit)
        if unchanged and _same_sequence(shard.sequences.get(track_id), kept):
            return Outcome.UNCHANGED
        if self.guard.model is None:
            self.guard.model = model
        shard.vectors[track_id] = unit
        if kept is None:
            # The newer embedding replaces the track's state whole: no stale sequence survives it.
            shard.sequences.pop(track_id, None)
        else:
            shard.sequences[track_id] = kept
        shard.dirty = True
        return Outcome.REPLACED if current is not None else Outcome.ADDED

    def drop_embedding(self, track_id: str) -> Outcome:
        """A Kafka tombstone on the embedded topic deletes the track's vector;
        the registry's fact about the track stays what it was."""
        shard = self._shard(track_id)
        if not self._drop_vector(shard, track_id):
            return Outcome.UNCHANGED
        shard.dirty = True
        return Outcome.REMOVED

    @staticmethod
    def _drop_vector(shard: ShardVectors, track_id: str) -> bool:
        shard.sequences.pop(track_id, None)
        return shard.vectors.pop(track_id, None) is not None

    def load_shard(self, contents: ShardContents) -> None:
        """Install a shard read from a snapshot (its vectors become read-only
        views). Each track goes to the shard the current count gives it, so a
        snapshot with another shard count is re-sharded as it loads; the
        caller then marks every shard dirty."""
        contents.vectors.flags.writeable = False
        for row, track_id in enumerate(contents.ids):
            owner = self._shard(track_id)
            owner.vectors[track_id] = contents.vectors[row]
            sequence = contents.sequences[row] if contents.sequences else None
            if sequence is not None and sequence.shape[0] > 0:
                sequence.flags.writeable = False
                owner.sequences[track_id] = sequence
        self.restore_facts(contents.facts)

    def restore_facts(self, facts: dict[str, Fact]) -> None:
        """Install facts saved in a snapshot (a rebuild seeds its state with LATEST's)."""
        for track_id, fact in facts.items():
            self._shard(track_id).facts[track_id] = fact

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
                    facts=dict(shard.facts),
                    dim=dim,
                    sequences=dict(shard.sequences),
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


def _sequence_of(fact: Fact | None) -> int | None:
    return fact.registry_sequence if fact is not None else None


def _same_sequence(a: PitchSequenceArray | None, b: PitchSequenceArray | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and bool(np.array_equal(a, b))
