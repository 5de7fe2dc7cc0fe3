"""`GET /recommend/{id}` and `POST /recommend/batch`."""

import asyncio
import json
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Response

from mess.contracts.ids import TRACK_ID_PATTERN, is_track_id
from mess.query.catalog import CatalogBusyError, CatalogUnavailableError
from mess.query.deps import ResourcesDep
from mess.query.models import BatchRequest, BatchResponse, RecommendationResponse
from mess.query.recommender import NotReadyError, TrackNotFoundError, TrackNotIndexedError
from mess.query.strategies import ParameterError, Strategy, resolve_params

router = APIRouter(tags=["recommendations"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "unknown track"},
    409: {"description": "the track is registered but not in the serving snapshot yet (body has its status)"},
    422: {"description": "a parameter is out of range or does not apply to the strategy"},
    503: {"description": "no snapshot loaded yet, or the track registry is busy or unreachable"},
}


@router.get("/recommend/{track_id}", response_model=RecommendationResponse, responses=_ERRORS)
async def recommend(
    resources: ResourcesDep,
    track_id: Annotated[str, Path(pattern=TRACK_ID_PATTERN)],
    k: Annotated[int, Query(ge=1, le=100, description="how many recommendations")] = 10,
    strategy: Annotated[Strategy, Query(description="similar, balanced, diverse, complementary, exploration")] = (
        Strategy.similar
    ),
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
    params = resolve_params(
        strategy,
        k,
        resources.settings.max_pool,
        pool=pool,
        lambda_=lambda_,
        floor=floor,
        seed=seed,
        weights=weights,
    )
    served = await resources.recommender.recommend(track_id, k, strategy, params, x_request_id or uuid.uuid4().hex)
    return Response(
        served.body,
        media_type="application/json",
        headers={"X-Cache": "hit" if served.cached else "miss", "X-Snapshot-Version": served.snapshot_version},
    )


@router.post(
    "/recommend/batch",
    response_model=BatchResponse,
    responses={
        # FastAPI's answer to a body that is not even text (not UTF-8); malformed JSON text is a 422.
        400: {"description": "the body cannot be read as text"},
        422: _ERRORS[422],
        503: _ERRORS[503],
    },
)
async def recommend_batch(resources: ResourcesDep, batch: BatchRequest) -> Response:
    """Recommendations for up to 100 tracks at once; each item carries its own status code."""
    started = time.perf_counter()
    given = batch.params
    params = resolve_params(
        batch.strategy,
        batch.k,
        resources.settings.max_pool,
        pool=given.pool,
        lambda_=given.lambda_,
        floor=given.floor,
        seed=given.seed,
        weights=given.weights,
    )
    resources.recommender.searcher()  # 503 for the whole batch when nothing is loaded
    for track_id in batch.track_ids:
        if not is_track_id(track_id):
            raise ParameterError("track_ids", f"{track_id!r} is not a track id")

    async def one(track_id: str) -> bytes:
        head = {"track_id": track_id}
        try:
            served = await resources.recommender.recommend(track_id, batch.k, batch.strategy, params, uuid.uuid4().hex)
        except TrackNotFoundError as exc:
            return json.dumps({**head, "status_code": 404, "error": {"detail": str(exc)}}).encode()
        except TrackNotIndexedError as exc:
            error = {"detail": str(exc), "status": exc.status}
            return json.dumps({**head, "status_code": 409, "error": error}).encode()
        except (CatalogBusyError, CatalogUnavailableError, NotReadyError) as exc:
            return json.dumps({**head, "status_code": 503, "error": {"detail": str(exc)}}).encode()
        return b'{"track_id":%s,"status_code":200,"result":%s}' % (json.dumps(track_id).encode(), served.body)

    items = await asyncio.gather(*(one(t) for t in batch.track_ids))
    elapsed_ms = (time.perf_counter() - started) * 1000
    body = b'{"results":[%s],"count":%d,"computation_time_ms":%.3f}' % (b",".join(items), len(items), elapsed_ms)
    return Response(body, media_type="application/json")
