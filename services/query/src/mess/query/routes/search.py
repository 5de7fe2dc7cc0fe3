"""`POST /search`: search by example, with a clip (multipart), a vector or several tracks (JSON), and filters.

One route, two bodies, told apart by ``Content-Type``:

- ``multipart/form-data`` with a ``clip`` file and optional form fields
  (``k``, ``strategy``, the strategy parameters, the filters): the clip is
  embedded by the embedder (``mess.query.clips``), then searched like a track,
  its pitch sequence the reference of the version re-rank. Nothing of the
  clip is stored: not the audio, not the answer (never cached), and no event.
- ``application/json`` (``SearchRequest``): a vector of the serving model's
  dimension, or positive and negative track ids.

Both bodies are read under a byte cap before anything is parsed, so a large
body costs at most the cap.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from typing import Annotated, Any, Literal, Self

from fastapi import APIRouter, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from mess.contracts.ids import is_track_id
from mess.query.deps import ResourcesDep
from mess.query.errors import BodyTooLargeError, UnsupportedBodyError
from mess.query.filters import TrackFilters
from mess.query.models import RecommendParams, SearchResponse
from mess.query.recommender import Combine
from mess.query.strategies import RawParams, StrategyName

router = APIRouter(tags=["search"])

MAX_REFERENCE_TRACKS = 10
_FORM_FIELDS = 30


# Browsers and curl often send these for any file; the embedder's decoder is the judge of what is audio.
_GENERIC_TYPES = frozenset({"application/octet-stream", "application/ogg", "video/ogg"})


class SearchRequest(BaseModel):
    """The JSON body of ``POST /search``: exactly one of ``vector`` or ``positive``."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {"vector": [0.12, -0.03, 0.4], "k": 5},
                {
                    "positive": ["bach-bwv846-piano"],
                    "negative": ["chopin-op9-2-piano"],
                    "combine": "best_score",
                    "k": 10,
                    "filters": {"era": "Baroque", "min_duration_s": 60},
                },
            ]
        },
    )

    vector: list[float] | None = Field(
        default=None, max_length=8192, description="a vector made by the serving model (its dimension, finite values)"
    )
    positive: list[str] | None = Field(
        default=None, min_length=1, max_length=MAX_REFERENCE_TRACKS, description="indexed tracks to be like"
    )
    negative: list[str] = Field(
        default_factory=list, max_length=MAX_REFERENCE_TRACKS, description="indexed tracks to be unlike"
    )
    combine: Combine = Field(
        default="average",
        description="average: search by 2 x mean(positive) - mean(negative) (the positives' mean without "
        "negatives); best_score: each candidate scores its best positive similarity, or minus its best "
        "negative similarity when a negative is closer, so neighbours of a negative sink",
    )
    k: int = Field(default=10, ge=1, le=100)
    strategy: StrategyName = StrategyName.similar
    params: RecommendParams = Field(default_factory=RecommendParams)
    filters: TrackFilters | None = None

    @model_validator(mode="after")
    def _one_reference(self) -> Self:
        if (self.vector is None) == (self.positive is None):
            raise ValueError("give exactly one of vector or positive")
        if self.negative and self.positive is None:
            raise ValueError("negative ids go with positive ids")
        for track_id in [*(self.positive or []), *self.negative]:
            if not is_track_id(track_id):
                raise ValueError(f"{track_id!r} is not a track id")
        both = set(self.positive or []) & set(self.negative)
        if both:
            raise ValueError(f"{sorted(both)} are both positive and negative")
        return self


class ClipForm(BaseModel):
    """The form fields beside the ``clip`` file (all optional)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)

    k: int = Field(default=10, ge=1, le=100)
    strategy: StrategyName = StrategyName.similar
    pool: int | None = None
    lambda_: float | None = Field(default=None, alias="lambda")
    floor: float | None = None
    seed: int | None = None
    weights: str | None = Field(default=None, max_length=200)
    composer: str | None = None
    era: str | None = None
    dataset: str | None = None
    tags: list[str] | None = None
    tags_match: Literal["any", "all"] = "any"
    min_duration_s: float | None = None
    max_duration_s: float | None = None
    min_year: int | None = None
    max_year: int | None = None

    def filters(self) -> TrackFilters:
        return TrackFilters(
            composer=self.composer,
            era=self.era,
            dataset=self.dataset,
            tags=self.tags,
            tags_match=self.tags_match,
            min_duration_s=self.min_duration_s,
            max_duration_s=self.max_duration_s,
            min_year=self.min_year,
            max_year=self.max_year,
        )


def _invalid(error: ValidationError, where: str) -> RequestValidationError:
    """A 422 shaped like FastAPI's own (never echoing the input: a vector may be thousands of numbers)."""
    return RequestValidationError(
        [
            {**e, "loc": (where, *e["loc"])}
            for e in error.errors(include_url=False, include_input=False, include_context=False)
        ]
    )


async def _capped(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(limit)
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise BodyTooLargeError(limit)
        yield part


_EXAMPLE = {
    "reference_track": None,
    "query": {"kind": "clip", "duration_s": 20.0, "pitch_frames": 27},
    "recommendations": [
        {
            "track_id": "bach-bwv846-strings",
            "title": "Prelude in C major",
            "composer": "Bach",
            "status": "indexed",
            "audio_url": "/audio/bach-bwv846-strings",
            "waveform_url": "/waveform/bach-bwv846-strings",
            "rank": 1,
            "similarity_score": 0.91,
            "strategy_score": 0.91,
            "explanation": "#1: a version of the same work (alignment 0.870, 18.5 s aligned, +2 semitones)",
            "alignment": {
                "score": 0.87,
                "key_shift_semitones": 2,
                "tempo_ratio": 1.1,
                "aligned_seconds": 18.5,
                "same_work": True,
            },
        }
    ],
    "strategy": "similar",
    "algorithm": "similarity",
    "params": {},
    "k": 1,
    "snapshot_version": "000000000042",
    "degraded": False,
    "filters": None,
    "shortfall": None,
    "cached": False,
    "computation_time_ms": 84.2,
}


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with its ``$defs`` references written out in place: an OpenAPI request body written by hand
    cannot point into a ``$defs`` of its own (none of these models is recursive)."""
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(definitions[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"example": {"detail": description}}}}


@router.post(
    "/search",
    operation_id="search",
    response_model=SearchResponse,
    responses={
        200: {"content": {"application/json": {"example": _EXAMPLE}}},
        404: _error("a positive or negative track id is unknown"),
        409: _error(
            "a positive or negative track is not in the serving snapshot yet, or the embedder's model is not "
            "the one that made the serving snapshot"
        ),
        413: _error("the clip (or the JSON body) is larger than the service takes"),
        415: _error("the clip is not audio (or the body is neither multipart/form-data nor JSON)"),
        422: _error(
            "the clip is too short, too long or silent; a vector of the wrong dimension; a parameter out of "
            "range; or a filter that cannot hold"
        ),
        503: _error(
            "no snapshot loaded yet, the embedder is unavailable or busy, or the track registry is (Retry-After)"
        ),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["clip"],
                        "properties": {
                            "clip": {"type": "string", "format": "binary", "description": "audio, at most 60 s"},
                            **ClipForm.model_json_schema(by_alias=True)["properties"],
                        },
                    }
                },
                "application/json": {"schema": _inline(SearchRequest.model_json_schema())},
            },
        }
    },
)
async def search(
    request: Request,
    resources: ResourcesDep,
    x_request_id: Annotated[str | None, Header(max_length=200)] = None,
) -> Response:
    """Tracks like a clip, a vector, or several tracks (and unlike others), narrowed by filters.

    The answer is ``/recommend``'s, with ``query`` saying what was searched by and ``reference_track`` null."""
    content_type = request.headers.get("content-type", "").lower()
    request_id = x_request_id or uuid.uuid4().hex
    if content_type.startswith("multipart/form-data"):
        return await _clip_search(request, resources, request_id)
    if content_type.startswith("application/json"):
        return await _json_search(request, resources, request_id)
    raise UnsupportedBodyError("send a clip as multipart/form-data (field clip), or a JSON body")


async def _json_search(request: Request, resources: ResourcesDep, request_id: str) -> Response:
    settings = resources.settings
    body = b"".join([part async for part in _capped(request, settings.search_json_max_bytes)])
    try:
        given = SearchRequest.model_validate_json(body)
    except ValidationError as exc:
        raise _invalid(exc, "body") from None
    recommender = resources.recommender
    raw = RawParams(
        pool=given.params.pool,
        lambda_=given.params.lambda_,
        floor=given.params.floor,
        seed=given.params.seed,
        weights=given.params.weights,
    )
    planned = recommender.plan(given.strategy, given.k, raw)
    snapshot = recommender.searcher()
    if given.vector is not None:
        reference = recommender.vector_reference(snapshot, given.vector)
    else:
        reference = await recommender.tracks_reference(snapshot, given.positive or [], given.negative, given.combine)
    served = await recommender.serve(snapshot, reference, given.k, planned, request_id, given.filters)
    return _answer(served.body, served.cached, served.snapshot_version)


async def _clip_search(request: Request, resources: ResourcesDep, request_id: str) -> Response:
    settings = resources.settings
    parser = MultiPartParser(
        request.headers,
        _capped(request, settings.clip_max_bytes),
        max_files=1,
        max_fields=_FORM_FIELDS,
        max_part_size=4096,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise RequestValidationError(
            [{"loc": ("body",), "msg": f"not a readable form: {exc.message}", "type": "value_error"}]
        ) from None
    try:
        clip = form.get("clip")
        if not isinstance(clip, UploadFile):
            raise RequestValidationError(
                [{"loc": ("body", "clip"), "msg": "a clip file is required", "type": "missing"}]
            )
        fields: dict[str, Any] = {}
        for name, value in form.multi_items():
            if name == "clip":
                continue
            if not isinstance(value, str):
                raise RequestValidationError(
                    [{"loc": ("body", name), "msg": "only clip may be a file", "type": "value_error"}]
                )
            if name == "tags":  # repeated, or comma-separated
                fields.setdefault("tags", []).extend(t for t in value.split(",") if t.strip())
            elif name in fields:
                raise RequestValidationError([{"loc": ("body", name), "msg": "given twice", "type": "value_error"}])
            else:
                fields[name] = value
        try:
            given = ClipForm.model_validate(fields)
            filters = given.filters()
        except ValidationError as exc:
            raise _invalid(exc, "body") from None
        declared = (clip.content_type or "").split(";")[0].strip().lower()
        if declared and not (declared.startswith("audio/") or declared in _GENERIC_TYPES):
            raise UnsupportedBodyError(f"the clip's type is {declared}; send audio (WAV, FLAC, OGG, MP3, AIFF)")
        audio = await clip.read()
    finally:
        await form.close()
    recommender = resources.recommender
    raw = RawParams(pool=given.pool, lambda_=given.lambda_, floor=given.floor, seed=given.seed, weights=given.weights)
    planned = recommender.plan(given.strategy, given.k, raw)
    recommender.searcher()  # 503 before the embedder is asked, when there is nothing to search
    embedded = await resources.clips.embed(audio)
    # The snapshot is taken after the clip is embedded: the newest one is checked against its model.
    snapshot = recommender.searcher()
    reference = recommender.clip_reference(snapshot, embedded)
    served = await recommender.serve(snapshot, reference, given.k, planned, request_id, filters)
    return _answer(served.body, served.cached, served.snapshot_version)


def _answer(body: bytes, cached: bool, snapshot_version: str) -> Response:
    return Response(
        body,
        media_type="application/json",
        headers={"X-Cache": "hit" if cached else "miss", "X-Snapshot-Version": snapshot_version},
    )
