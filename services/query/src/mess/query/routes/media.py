"""`GET /audio/{id}` (byte ranges or a presigned redirect) and `GET /waveform/{id}`.

Only tracks that are registered and not failed or removed are served. The
media type is the one the object's own bytes name (``MediaStore``), never
the stored object's; every media answer carries ``nosniff``, a fixed
``Content-Disposition`` built from the track id, and a CSP that lets nothing
on the API's origin run from it.
"""

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Path, Query, Response
from fastapi.responses import RedirectResponse, StreamingResponse

from mess.contracts.ids import TRACK_ID_PATTERN
from mess.query.catalog import TrackRecord
from mess.query.deps import ResourcesDep
from mess.query.media import MediaMissingError, parse_range
from mess.query.recommender import TrackNotFoundError

router = APIRouter(tags=["media"])

TrackIdPath = Annotated[str, Path(pattern=TRACK_ID_PATTERN)]

# A track in any other status (failed: its source was refused; removed) has nothing to serve.
SERVABLE = frozenset({"registered", "embedded", "indexed"})
MEDIA_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # Media needs no script, style or frame; a sandbox also makes a browser refuse to treat it as a page.
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Cross-Origin-Resource-Policy": "same-site",
}


def _servable(record: TrackRecord | None, track_id: str) -> TrackRecord:
    if record is None or record.status not in SERVABLE:
        raise TrackNotFoundError(track_id)
    return record


@router.get(
    "/audio/{track_id}",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"audio/*": {}}, "description": "the whole file"},
        206: {"description": "the requested byte range"},
        307: {"description": "redirect to a short-lived presigned S3 URL (MESS_QUERY_AUDIO_REDIRECT=true)"},
        404: {"description": "unknown, failed or removed track, or its audio is missing or not audio"},
        416: {"description": "the range lies outside the file"},
    },
)
async def audio(
    resources: ResourcesDep, track_id: TrackIdPath, range_: Annotated[str | None, Header(alias="range")] = None
) -> Response:
    record = _servable(await resources.catalog.get(track_id), track_id)
    media = resources.media
    stored = await media.audio_object(record.audio_uri)
    # track ids are [a-z0-9._-] and the extension comes from the allow-list: nothing here needs quoting.
    filename = f"{track_id}.{stored.extension}"
    settings = resources.settings
    if settings.audio_redirect:
        url = await media.presigned_url(stored, settings.audio_url_expiry_s, filename)
        return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
    byte_range = parse_range(range_, stored.size)
    headers = {**MEDIA_HEADERS, "Accept-Ranges": "bytes", "Content-Disposition": f'inline; filename="{filename}"'}
    if stored.etag:
        headers["ETag"] = stored.etag
    chunks = await media.stream(stored, byte_range)
    if byte_range is None:
        headers["Content-Length"] = str(stored.size)
        return StreamingResponse(chunks, media_type=stored.content_type, headers=headers)
    start, end = byte_range
    headers["Content-Range"] = f"bytes {start}-{end}/{stored.size}"
    headers["Content-Length"] = str(end - start + 1)
    return StreamingResponse(chunks, status_code=206, media_type=stored.content_type, headers=headers)


@router.get(
    "/waveform/{track_id}",
    responses={
        200: {"content": {"application/json": {}, "image/png": {}}, "description": "peaks, or a picture of them"},
        404: {"description": "unknown, failed or removed track, or no waveform computed yet"},
    },
)
async def waveform(
    resources: ResourcesDep,
    track_id: TrackIdPath,
    format_: Annotated[Literal["json", "png"], Query(alias="format")] = "json",
    width: Annotated[int, Query(ge=16, le=4000)] = 1200,
    height: Annotated[int, Query(ge=16, le=1000)] = 200,
) -> Response:
    record = _servable(await resources.catalog.get(track_id), track_id)
    try:
        peaks, version = await resources.media.waveform_document(track_id)
    except MediaMissingError:
        raise MediaMissingError(f"no waveform for track {track_id} yet (its status is {record.status})") from None
    headers = {"X-Content-Type-Options": "nosniff"}
    if format_ == "png":
        png = await resources.waveforms.png(track_id, version, peaks, width, height)
        return Response(png, media_type="image/png", headers={**MEDIA_HEADERS, **headers})
    return Response(peaks.model_dump_json(), media_type="application/json", headers=headers)
