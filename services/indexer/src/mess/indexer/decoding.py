"""What a record of the three consumed topics says, or why it says nothing usable."""

from dataclasses import dataclass

from pydantic import ValidationError

from mess.contracts.events import ModelIdentity, TrackAdded, TrackEmbedded, TrackRemoved
from mess.contracts.ids import is_track_id
from mess.contracts.sequences import PitchSequenceArray
from mess.contracts.topics import REGISTRY_SEQUENCE_HEADER, Topics
from mess.indexer.feed import Record
from mess.indexer.track_vectors import Vector

# An outbox row id is a Postgres bigint; anything longer is not one.
_MAX_SEQUENCE_DIGITS = 19


@dataclass(frozen=True)
class Embedding:
    track_id: str
    model: ModelIdentity
    vector: Vector
    sha256: str
    # None from embedders that predate pitch sequences
    sequence: PitchSequenceArray | None = None


@dataclass(frozen=True)
class Registration:
    """TrackAdded: the registry holds the track with this content."""

    track_id: str
    sha256: str
    registry_sequence: int | None


@dataclass(frozen=True)
class Removal:
    track_id: str
    registry_sequence: int | None


@dataclass(frozen=True)
class EmbeddingDeleted:
    """A Kafka tombstone (empty value) on the compacted embedded topic."""

    track_id: str


@dataclass(frozen=True)
class Malformed:
    reason: str


Fact = Registration | Removal
Change = Embedding | EmbeddingDeleted | Registration | Removal | Malformed


def registry_sequence(record: Record) -> int | Malformed | None:
    """The registry's sequence from the record's header; None when there is none (an older relay)."""
    values = [value for name, value in record.headers if name == REGISTRY_SEQUENCE_HEADER]
    if not values:
        return None
    raw = values[-1]
    if len(values) > 1 or not raw.isdigit() or len(raw) > _MAX_SEQUENCE_DIGITS:
        return Malformed(f"the {REGISTRY_SEQUENCE_HEADER} header is not one decimal number: {raw[:40]!r}")
    return int(raw)


def decode(record: Record, topics: Topics) -> Change:
    if record.topic == topics.tracks_embedded:
        return _decode_embedded(record)
    sequence = registry_sequence(record)
    if isinstance(sequence, Malformed):
        return sequence
    if record.value is None:
        return Malformed(f"an empty message on {record.topic}")
    if record.topic == topics.tracks_added:
        try:
            added = TrackAdded.from_bytes(record.value)
        except (ValidationError, ValueError) as exc:
            return Malformed(f"not a valid TrackAdded: {exc}")
        return Registration(added.track_id, added.sha256, sequence)
    try:
        removed = TrackRemoved.from_bytes(record.value)
    except (ValidationError, ValueError) as exc:
        return Malformed(f"not a valid TrackRemoved: {exc}")
    return Removal(removed.track_id, sequence)


def _decode_embedded(record: Record) -> Embedding | EmbeddingDeleted | Malformed:
    if record.value is None:
        # A Kafka tombstone on the compacted topic deletes its key's vector.
        key = record.key.decode("utf-8", errors="replace") if record.key else ""
        if not is_track_id(key):
            return Malformed("a tombstone (empty value) without a track id as its key")
        return EmbeddingDeleted(key)
    try:
        embedded = TrackEmbedded.from_bytes(record.value)
    except (ValidationError, ValueError) as exc:
        return Malformed(f"not a valid TrackEmbedded: {exc}")
    return Embedding(embedded.track_id, embedded.model, embedded.vector, embedded.sha256, embedded.pitch_sequence)
