"""The public API's response and request bodies (seed-compatible shapes)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mess.query.catalog import TrackRecord
from mess.query.filters import TrackFilters
from mess.query.strategies import StrategyName
from mess.query.versions import VersionMatch


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


class Alignment(BaseModel):
    """How the track's pitch sequence aligned with the reference's (the second stage of retrieval)."""

    score: float = Field(description="share of the shorter track that aligns, 0..1 (Qmax over its length)")
    key_shift_semitones: int = Field(description="this track's key relative to the reference's, -5..+6")
    tempo_ratio: float | None = Field(
        description="this track's tempo over the reference's; null when the aligned path is too short to say"
    )
    aligned_seconds: float | None = Field(
        description="seconds of the reference covered by the aligned path; null unless same_work"
    )
    same_work: bool = Field(description="recognised as a version of the reference's work")

    @classmethod
    def of(cls, match: VersionMatch | None) -> Alignment | None:
        if match is None:
            return None
        return cls(
            score=match.score,
            key_shift_semitones=match.key_shift,
            tempo_ratio=match.tempo_ratio,
            aligned_seconds=match.aligned_seconds,
            same_work=match.same_work,
        )


class RecommendedTrack(TrackOut):
    rank: int
    similarity_score: float = Field(description="inner product with the reference (cosine on unit vectors)")
    strategy_score: float = Field(
        description="what the strategy ranked by (blend, MMR value, alignment score for versions, or the similarity)"
    )
    explanation: str
    alignment: Alignment | None = Field(
        default=None,
        description="the pitch-sequence alignment with the reference; null where either track has no sequence "
        "or the candidate lay beyond the re-rank's depth",
    )


class FilterOutcome(BaseModel):
    """The filters a search was narrowed by, canonical (as its cache key holds them)."""

    criteria: dict[str, Any] = Field(description="the filters, trimmed, lower-cased and sorted")
    matching_tracks: int | None = Field(
        description="indexed tracks that match (the reference included); null when more match than are "
        "counted (a broad filter, searched by over-fetching)"
    )


class RecommendationResponse(BaseModel):
    reference_track: TrackOut
    recommendations: list[RecommendedTrack]
    strategy: StrategyName
    algorithm: str = Field(description="similarity, hybrid, diverse, complementary, exploration or versions")
    params: dict[str, Any] = Field(description="the parameters used, defaults filled in")
    k: int
    snapshot_version: str
    degraded: bool = Field(
        default=False,
        description="true when the track catalog (Postgres) was unavailable: the neighbours come from the "
        "snapshot alone, without titles or other metadata, and the answer is not cached",
    )
    filters: FilterOutcome | None = Field(default=None, description="null when the search was not filtered")
    shortfall: str | None = Field(
        default=None, description="why fewer than k recommendations came back (say, only 3 tracks match); else null"
    )
    cached: bool = False
    computation_time_ms: float = 0.0


class SearchResponse(RecommendationResponse):
    """``POST /search``: the answer of ``/recommend``, with what the query was."""

    reference_track: TrackOut | None = Field(  # type: ignore[assignment]
        default=None, description="null: a search's reference is a clip, a vector or a set of tracks (see query)"
    )
    query: dict[str, Any] = Field(
        description="kind (clip, vector or tracks) and what it held: the clip's duration and model, the "
        "vector's dimension, or the positive and negative ids and how they were combined"
    )


class RecommendParams(BaseModel):
    """Strategy parameters in a batch request (the same as the GET query parameters)."""

    # NaN and infinities are refused with a reason, not carried into a strategy (JSON allows neither,
    # Python's parser accepts both, and 1e400 parses as infinity).
    model_config = ConfigDict(populate_by_name=True, extra="forbid", allow_inf_nan=False)

    pool: int | None = None
    lambda_: float | None = Field(default=None, alias="lambda")
    floor: float | None = None
    seed: int | None = None
    weights: str | dict[str, float] | None = None


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    track_ids: list[str] = Field(min_length=1, max_length=100)
    k: int = Field(default=10, ge=1, le=100)
    strategy: StrategyName = StrategyName.similar
    params: RecommendParams = Field(default_factory=RecommendParams)
    filters: TrackFilters | None = None


class BatchItem(BaseModel):
    track_id: str
    status_code: int
    result: RecommendationResponse | None = None
    error: dict[str, Any] | None = None


class BatchResponse(BaseModel):
    results: list[BatchItem]
    count: int
    computation_time_ms: float
