"""What a record of the two consumed topics says, or why it says nothing usable."""

from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from mess.contracts.events import ModelIdentity, TrackEmbedded, TrackRemoved
from mess.contracts.ids import is_track_id
from mess.indexer.feed import Record
from mess.indexer.track_vectors import Vector


def occurred_at_us(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


@dataclass(frozen=True)
class Embedding:
    track_id: str
    model: ModelIdentity
    vector: Vector
    occurred_at_us: int


@dataclass(frozen=True)
class Removal:
    track_id: str
    occurred_at_us: int


@dataclass(frozen=True)
class Malformed:
    reason: str


def decode(record: Record, embedded_topic: str) -> Embedding | Removal | Malformed:
    if record.topic == embedded_topic:
        if record.value is None:
            # A Kafka tombstone on the compacted topic deletes its key; the
            # record's own timestamp orders it against removals.
            key = record.key.decode("utf-8", errors="replace") if record.key else ""
            if not is_track_id(key):
                return Malformed("a tombstone (empty value) without a track id as its key")
            return Removal(key, record.timestamp * 1000)
        try:
            embedded = TrackEmbedded.from_bytes(record.value)
        except (ValidationError, ValueError) as exc:
            return Malformed(f"not a valid TrackEmbedded: {exc}")
        return Embedding(embedded.track_id, embedded.model, embedded.vector, occurred_at_us(embedded.occurred_at))
    if record.value is None:
        return Malformed("an empty message on the removed topic")
    try:
        removed = TrackRemoved.from_bytes(record.value)
    except (ValidationError, ValueError) as exc:
        return Malformed(f"not a valid TrackRemoved: {exc}")
    return Removal(removed.track_id, occurred_at_us(removed.occurred_at))
