"""The public API's response and request bodies (seed-compatible shapes)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mess.query.catalog import TrackRecord
from mess.query.strategies import Strategy


class TrackOut(BaseModel):
    """A track as the API shows it: metadata plus where it stands."""

    track_id: str
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
    tags: list[str] = []
    dataset: str | None = None
    duration_s: float | None = None
    status: str = Field(description="indexed when the serving snapshot holds it, else the registry's status")
    snapshot_version: str | None = None
    failure_stage: str | None = None
    failure_reason: str | None = None
    created_at: datetime | None = None
    audio_url: str
    waveform_url: str

    @classmethod
    def build(cls, track_id: str, record: TrackRecord | None, snapshot_version: str | None) -> TrackOut:
        """``snapshot_version`` is the serving snapshot's when it holds the track, else None."""
        fields: dict[str, Any] = {}
        status = "indexed" if snapshot_version is not None else "unknown"
        if record is not None:
            fields = record.model_dump(exclude={"id", "audio_uri", "status", "snapshot_version"})
            if snapshot_version is None:
                status = record.status
                snapshot_version = record.snapshot_version if record.status == "indexed" else None
        return cls(
            track_id=track_id,
            status=status,
            snapshot_version=snapshot_version,
            audio_url=f"/audio/{track_id}",
            waveform_url=f"/waveform/{track_id}",
            **fields,
        )


class TrackList(BaseModel):
    tracks: list[TrackOut]
    count: int = Field(description="tracks on this page")
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last page")


class RecommendedTrack(TrackOut):
    rank: int
    similarity_score: float = Field(description="inner product with the reference (cosine on unit vectors)")
    strategy_score: float = Field(description="what the strategy ranked by (blend, MMR value, or the similarity)")
    explanation: str


class RecommendationResponse(BaseModel):
    reference_track: TrackOut
    recommendations: list[RecommendedTrack]
    strategy: Strategy
    algorithm: str = Field(description="similarity, hybrid, diverse, complementary or exploration")
    params: dict[str, Any] = Field(description="the parameters used, defaults filled in")
    k: int
    snapshot_version: str
    degraded: bool = Field(
        default=False,
        description="true when the track catalog (Postgres) was unavailable: the neighbours come from the "
        "snapshot alone, without titles or other metadata, and the answer is not cached",
    )
    cached: bool = False
    computation_time_ms: float = 0.0


class RecommendParams(BaseModel):
    """Strategy parameters in a batch request (the same as the GET query parameters)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    pool: int | None = None
    lambda_: float | None = Field(default=None, alias="lambda")
    floor: float | None = None
    seed: int | None = None
    weights: str | dict[str, float] | None = None


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    track_ids: list[str] = Field(min_length=1, max_length=100)
    k: int = Field(default=10, ge=1, le=100)
    strategy: Strategy = Strategy.similar
    params: RecommendParams = Field(default_factory=RecommendParams)


class BatchItem(BaseModel):
    track_id: str
    status_code: int
    result: RecommendationResponse | None = None
    error: dict[str, Any] | None = None


class BatchResponse(BaseModel):
    results: list[BatchItem]
    count: int
    computation_time_ms: float
