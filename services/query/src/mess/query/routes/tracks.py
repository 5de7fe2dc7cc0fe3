"""`GET /tracks` (filters, cursor pagination) and `GET /tracks/{id}`."""

from typing import Annotated

from fastapi import APIRouter, Path, Query

from mess.contracts.ids import TRACK_ID_PATTERN
from mess.query.catalog import TrackFilter
from mess.query.deps import ResourcesDep
from mess.query.models import TrackList, TrackOut
from mess.query.recommender import TrackNotFoundError

router = APIRouter(tags=["tracks"])

TrackIdPath = Annotated[str, Path(pattern=TRACK_ID_PATTERN, description="a track id")]
# Free text without NUL: Postgres text cannot hold it, so the query would fail (a 500) instead of matching nothing.
NO_NUL = r"^[^\x00]*$"


@router.get("/tracks", response_model=TrackList)
async def list_tracks(
    resources: ResourcesDep,
    composer: Annotated[
        str | None, Query(max_length=200, pattern=NO_NUL, description="exact composer, any case")
    ] = None,
    dataset: Annotated[str | None, Query(max_length=200, pattern=NO_NUL)] = None,
    era: Annotated[str | None, Query(max_length=200, pattern=NO_NUL, description="exact era, any case")] = None,
    text: Annotated[
        str | None,
        Query(min_length=1, max_length=200, pattern=NO_NUL, description="substring of title, composer, work, tags ..."),
    ] = None,
    status: Annotated[
        str | None,
        Query(pattern=r"^(registered|embedded|indexed|failed|removed)$", description="registry status"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=400, description="next_cursor of the previous page")] = None,
) -> TrackList:
    filters = TrackFilter(composer=composer, dataset=dataset, era=era, text=text, status=status)
    records, next_cursor = await resources.catalog.list(filters, limit, cursor)
    snapshot = resources.follower.current
    tracks = [
        TrackOut.build(r.id, r, snapshot.version if snapshot is not None and r.id in snapshot else None)
        for r in records
    ]
    return TrackList(tracks=tracks, count=len(tracks), next_cursor=next_cursor)


@router.get("/tracks/{track_id}", response_model=TrackOut, responses={404: {"description": "unknown track"}})
async def get_track(resources: ResourcesDep, track_id: TrackIdPath) -> TrackOut:
    record = await resources.catalog.get(track_id)
    snapshot = resources.follower.current
    in_snapshot = snapshot is not None and track_id in snapshot
    if record is None and not in_snapshot:
        raise TrackNotFoundError(track_id)
    return TrackOut.build(track_id, record, snapshot.version if snapshot is not None and in_snapshot else None)
