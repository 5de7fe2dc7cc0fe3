"""`GET /map`: the serving snapshot's catalog projected to 2D (``mess.query.catalog_map``)."""

from typing import Annotated, cast

from fastapi import APIRouter, Header, Request, Response

from mess.query.catalog_map import CatalogMap, CatalogMaps
from mess.query.deps import ResourcesDep
from mess.query.recommender import NotReadyError

router = APIRouter(tags=["map"])


@router.get(
    "/map",
    response_model=CatalogMap,
    responses={
        304: {"description": "the map named by If-None-Match is still the serving snapshot's"},
        503: {"description": "no snapshot loaded yet"},
    },
)
async def catalog_map(
    request: Request,
    resources: ResourcesDep,
    if_none_match: Annotated[str | None, Header(max_length=200)] = None,
) -> Response:
    """The serving snapshot's vectors projected onto their first two principal components,
    with each point's composer and dataset; at most 20,000 points (a sample of larger catalogs)."""
    searcher = resources.follower.current
    if searcher is None:
        raise NotReadyError("no snapshot is loaded yet")
    maps = cast(CatalogMaps, request.app.state.catalog_maps)
    # A map changes only with the snapshot, so its version names it; a revalidation costs nothing.
    etag = f'"map-{searcher.version}"'
    headers = {"X-Snapshot-Version": searcher.version, "Cache-Control": "private, no-cache"}
    if if_none_match == etag and maps.has(searcher.version):
        return Response(status_code=304, headers={**headers, "ETag": etag})
    body, complete = await maps.body(searcher, resources.catalog)
    if complete:
        headers["ETag"] = etag
    return Response(body, media_type="application/json", headers=headers)
