"""The six events of the pipeline, as pydantic v2 models.

Every event carries ``event_id``, ``occurred_at`` and ``schema_version`` and is
JSON on the wire. Consumers ignore fields they do not know, so producers may
add optional fields without a new topic; anything else is a breaking change
and needs a ``.v2`` topic (the schema check in CI enforces this).
"""

from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, Self
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from mess.contracts.ids import TrackId
from mess.contracts.sequences import PitchSequence
from mess.contracts.vectors import Float32Vector

Sha256Hex = str  # documented by the pattern on each field that carries one
_SHA256 = r"^[0-9a-f]{64}$"


# No event of ours comes near this (a 1024-d vector is 5.5 kB, a dead letter at most ~300 kB): a bigger
# message is poison, refused before parsing rather than held in memory as a model.
MAX_EVENT_BYTES = 1024**2


class OversizedEventError(ValueError):
    """A message too large to be one of our events."""


def _now() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """Fields every event has; ``key()`` is the Kafka message key."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event_type: ClassVar[str] = "Event"

    event_id: UUID = Field(default_factory=uuid4)
    occurred_at: AwareDatetime = Field(default_factory=_now)
    schema_version: int = 1

    def key(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode("utf-8")

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> Self:
        """The event in ``raw``; ValueError (a pydantic ValidationError, or OversizedEventError) when it is not one."""
        if len(raw) > MAX_EVENT_BYTES:
            raise OversizedEventError(
                f"{cls.event_type} of {len(raw)} bytes exceeds the {MAX_EVENT_BYTES} bytes any event may have"
            )
        return cls.model_validate_json(raw)


class TrackMetadata(BaseModel):
    """What is known about a piece of music; every field is optional."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    title: str | None = None
    composer: str | None = None
    composer_full: str | None = None
    work: str | None = None
    movement: str | None = None
    era: str | None = None
    form: str | None = None
    key: str | None = None
    instrument: str | None = None
    performer: str | None = None
    year: int | None = None
    tags: list[str] = Field(default_factory=list)


class ModelIdentity(BaseModel):
    """Which model made a vector. An index never mixes two identities."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str = Field(min_length=1, description="e.g. m-a-p/MERT-v1-95M or dsp")
    revision: str = Field(min_length=1, description="weights hash or feature-set version")
    dim: int = Field(gt=0)
    pooling: str = Field(min_length=1, description="how layers, frames and chunks were pooled")

    def fingerprint(self) -> str:
        return f"{self.name}@{self.revision}/{self.pooling}/{self.dim}"


class TrackAdded(Event):
    event_type: ClassVar[str] = "TrackAdded"

    track_id: TrackId
    sha256: Sha256Hex = Field(pattern=_SHA256, description="sha256 of the audio bytes")
    audio_uri: str = Field(pattern=r"^s3://[^/]+/.+", description="s3://bucket/key of the audio")
    dataset: str = Field(min_length=1, description="upload, s3, smd, maestro, folder, demo, ...")
    metadata: TrackMetadata = Field(default_factory=TrackMetadata)
    duration_s: float | None = Field(default=None, ge=0)
    sample_rate: int | None = Field(default=None, gt=0)
    channels: int | None = Field(default=None, gt=0)
    size_bytes: int | None = Field(default=None, ge=0)
    reason: str = Field(default="new", description="new, or reconcile when re-announced")

    def key(self) -> str:
        return self.track_id


class TrackEmbedded(Event):
    event_type: ClassVar[str] = "TrackEmbedded"

    track_id: TrackId
    sha256: Sha256Hex = Field(pattern=_SHA256, description="sha256 of the audio that was embedded")
    model: ModelIdentity
    vector: Float32Vector
    duration_s: float | None = Field(default=None, ge=0)
    chunks: int | None = Field(default=None, ge=0)
    # Added for version-aware similarity; None from embedders that predate it.
    pitch_sequence: PitchSequence | None = Field(
        default=None, description="the track's pitch-content sequence, aligned by the query service's second stage"
    )

    @model_validator(mode="after")
    def _vector_matches_model(self) -> Self:
        if self.vector.shape[0] != self.model.dim:
            raise ValueError(
                f"vector has {self.vector.shape[0]} values but model {self.model.name} says dim {self.model.dim}"
            )
        return self

    def key(self) -> str:
        return self.track_id


class TrackRemoved(Event):
    event_type: ClassVar[str] = "TrackRemoved"

    track_id: TrackId
    reason: str | None = None

    def key(self) -> str:
        return self.track_id


FailureStage = Literal["ingest", "embed", "index", "query"]


#: ``TrackFailed.error_kind`` of a failure that says nothing about the track: a
#: dependency (S3, say) stayed down past the stage's retries. The ingest
#: reconciler announces such tracks again after its grace period.
TRANSIENT_EXHAUSTED = "transient_exhausted"


class TrackFailed(Event):
    """A dead letter: what failed, why, and the original message untouched."""

    event_type: ClassVar[str] = "TrackFailed"

    # Not a TrackId: a malformed event may carry an invalid id, or none.
    track_id: str | None = None
    stage: FailureStage
    error_kind: str = Field(
        min_length=1,
        description="e.g. decode, silent, too_short, malformed_event; transient_exhausted means a dependency "
        "stayed down past the retries and the track will be tried again",
    )
    error: str = Field(description="human-readable reason")
    attempts: int = Field(default=1, ge=1)
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    original_key: str | None = None
    original_payload: str | None = Field(
        default=None, description="the original message value as text, cut to a bounded size"
    )
    original_truncated: bool = False

    def key(self) -> str:
        return self.track_id or f"{self.source_topic}:{self.source_partition}:{self.source_offset}"


class SnapshotCounts(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    vectors: int = Field(ge=0)
    shards: int = Field(ge=0)
    rebuilt_shards: int = Field(default=0, ge=0)


class SnapshotPublished(Event):
    event_type: ClassVar[str] = "SnapshotPublished"

    version: str = Field(pattern=r"^[A-Za-z0-9._-]{1,128}$")
    manifest_uri: str = Field(pattern=r"^s3://[^/]+/.+")
    counts: SnapshotCounts
    model: ModelIdentity | None = Field(default=None, description="None for a known-empty index")
    metric: Literal["ip"] = "ip"

    def key(self) -> str:
        return self.version


class RecommendRequestSummary(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    track_id: str = Field(description="the reference track; for a search by several tracks, the first positive")
    k: int = Field(ge=1)
    strategy: str
    params: dict[str, Any] = Field(default_factory=dict)
    # Added by issue 18 (search by example); absent in events written before it, which were all "track".
    query_kind: str = Field(
        default="track", description="track (/recommend) or tracks (POST /search by positive and negative ids)"
    )
    filters: dict[str, Any] | None = Field(default=None, description="the canonical filters, when any were given")


class RecommendedItem(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    track_id: str
    score: float
    rank: int = Field(ge=1)


class RecommendationServed(Event):
    event_type: ClassVar[str] = "RecommendationServed"

    request_id: str
    request: RecommendRequestSummary
    results: list[RecommendedItem]
    snapshot_version: str | None
    latency_ms: float = Field(ge=0)
    cached: bool

    def key(self) -> str:
        return self.request.track_id


EVENT_TYPES: dict[str, type[Event]] = {
    cls.event_type: cls
    for cls in (TrackAdded, TrackEmbedded, TrackRemoved, TrackFailed, SnapshotPublished, RecommendationServed)
}
