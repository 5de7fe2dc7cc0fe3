"""`GET /recommend/{id}` and `POST /recommend/batch`."""

import asyncio
import json
import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from mess.contracts.ids import TRACK_ID_PATTERN, is_track_id
from mess.query.catalog import CatalogBusyError, CatalogUnavailableError
from mess.query.deps import ResourcesDep
from mess.query.filters import TrackFilters
from mess.query.models import BatchRequest, BatchResponse, RecommendationResponse
from mess.query.recommender import NotReadyError, StrategyBusyError, TrackNotFoundError, TrackNotIndexedError
from mess.query.strategies import ParameterError, RawParams, StrategyName

router = APIRouter(tags=["recommendations"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "unknown track"},
    409: {"description": "the track is registered but not in the serving snapshot yet (body has its status)"},
    422: {
        "description": "a parameter is out of range, does not apply to the strategy, or asks for more work "
        "than one request may cost"
    },
    503: {
        "description": "no snapshot loaded yet, the track registry is busy or unreachable, or every slot for "
        "expensive strategies is taken"
    },
}


class TrackFilterQuery(BaseModel):
    """The filters as query parameters (``tags`` repeated or comma-separated). Unknown parameters are not
    refused here: the other query parameters of the route arrive in the same place."""

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
        values = self.model_dump()
        if self.tags is not None:
            values["tags"] = [t for given in self.tags for t in given.split(",") if t.strip()]
        return TrackFilters.model_validate(values)


@router.get(
    "/recommend/{track_id}",
    response_model=RecommendationResponse,
    responses=_ERRORS,
    operation_id="recommend",
)
async def recommend(
    resources: ResourcesDep,
    track_id: Annotated[str, Path(pattern=TRACK_ID_PATTERN)],
    filters: Annotated[TrackFilterQuery, Query()],
    k: Annotated[int, Query(ge=1, le=100, description="how many recommendations")] = 10,
    strategy: Annotated[
        StrategyName, Query(description="similar, balanced, diverse, complementary, exploration, versions")
    ] = StrategyName.similar,
    pool: Annotated[int | None, Query(ge=1, description="candidates the strategy chooses from")] = None,
    lambda_: Annotated[
        float | None, Query(alias="lambda", description="diverse: 1 = pure similarity, 0 = pure novelty")
    ] = None,
    floor: Annotated[float | None, Query(description="exploration: lowest similarity a pick may have")] = None,
    seed: Annotated[int | None, Query(description="exploration: makes the random picks reproducible")] = None,
    weights: Annotated[
        str | None,
        Query(max_length=200, description="balanced: e.g. similarity:0.6,composer:0.2,era:0.1,form:0.1"),
    ] = None,
    x_request_id: Annotated[str | None, Header(max_length=200)] = None,
) -> Response:
    raw = RawParams(pool=pool, lambda_=lambda_, floor=floor, seed=seed, weights=weights)
    planned = resources.recommender.plan(strategy, k, raw)
    try:
        chosen = filters.filters()
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("query", *e["loc"])} for e in exc.errors(include_url=False, include_context=False)]
        ) from None
    served = await resources.recommender.recommend(track_id, k, planned, x_request_id or uuid.uuid4().hex, chosen)
    return Response(
        served.body,
        media_type="application/json",
        headers={"X-Cache": "hit" if served.cached else "miss", "X-Snapshot-Version": served.snapshot_version},
    )


def _item_error(track_id: str, status_code: int, detail: str, **extra: str) -> bytes:
    error = {"detail": detail, **extra}
    return json.dumps({"track_id": track_id, "status_code": status_code, "error": error}).encode()


@router.post(
    "/recommend/batch",
    operation_id="recommend_batch",
    response_model=BatchResponse,
    responses={
        # FastAPI's answer to a body that is not even text (not UTF-8); malformed JSON text is a 422.
        400: {"description": "the body cannot be read as text"},
        422: {"description": f"{_ERRORS[422]['description']}, or the batch as a whole would cost more than its budget"},
        503: _ERRORS[503],
    },
)
async def recommend_batch(resources: ResourcesDep, batch: BatchRequest) -> Response:
    """Recommendations for up to 100 tracks at once; each item carries its own status code.

    The batch has a total budget: its estimated work (items times one item's) is refused above
    ``max_batch_work``, and items still unanswered at ``batch_deadline_s`` get status 503."""
    started = time.perf_counter()
    settings = resources.settings
    given = batch.params
    raw = RawParams(pool=given.pool, lambda_=given.lambda_, floor=given.floor, seed=given.seed, weights=given.weights)
    recommender = resources.recommender
    planned = recommender.plan(batch.strategy, batch.k, raw)
    total = planned.work(recommender.dim()) * len(batch.track_ids)
    if total > settings.max_batch_work:
        raise ParameterError(
            "track_ids",
            f"this batch would cost about {total:.2g} operations; the limit is {settings.max_batch_work:.2g}: "
            "send fewer tracks, or a smaller pool or k",
        )
    recommender.searcher()  # 503 for the whole batch when nothing is loaded
    for track_id in batch.track_ids:
        if not is_track_id(track_id):
            raise ParameterError("track_ids", f"{track_id!r} is not a track id")
    # One batch takes a few item slots, never every search slot.
    slots = asyncio.Semaphore(settings.batch_concurrency)
    deadline = asyncio.get_running_loop().time() + settings.batch_deadline_s

    async def one(track_id: str) -> bytes:
        try:
            async with asyncio.timeout_at(deadline):
                async with slots:
                    served = await recommender.recommend(track_id, batch.k, planned, uuid.uuid4().hex, batch.filters)
        except TimeoutError:
            return _item_error(track_id, 503, "the batch's time budget was spent before this item", code="budget")
        except TrackNotFoundError as exc:
            return _item_error(track_id, 404, str(exc))
        except TrackNotIndexedError as exc:
            return _item_error(track_id, 409, str(exc), status=exc.status)
        except (CatalogBusyError, CatalogUnavailableError, NotReadyError, StrategyBusyError) as exc:
            return _item_error(track_id, 503, str(exc))
        return b'{"track_id":%s,"status_code":200,"result":%s}' % (json.dumps(track_id).encode(), served.body)

    items = await asyncio.gather(*(one(t) for t in batch.track_ids))
    elapsed_ms = (time.perf_counter() - started) * 1000
    body = b'{"results":[%s],"count":%d,"computation_time_ms":%.3f}' % (b",".join(items), len(items), elapsed_ms)
    return Response(body, media_type="application/json")
