"""`GET /audio/{id}` (byte ranges or a presigned redirect) and `GET /waveform/{id}`."""

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Path, Query, Response
from fastapi.responses import RedirectResponse, StreamingResponse

from mess.contracts.ids import TRACK_ID_PATTERN
from mess.query.deps import ResourcesDep
from mess.query.media import MediaMissingError, parse_range, render_waveform_png
from mess.query.recommender import TrackNotFoundError

router = APIRouter(tags=["media"])

TrackIdPath = Annotated[str, Path(pattern=TRACK_ID_PATTERN)]


@router.get(
    "/audio/{track_id}",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"audio/*": {}}, "description": "the whole file"},
        206: {"description": "the requested byte range"},
        307: {"description": "redirect to a short-lived presigned S3 URL (MESS_QUERY_AUDIO_REDIRECT=true)"},
        404: {"description": "unknown track, or its audio is missing"},
        416: {"description": "the range lies outside the file"},
    },
)
async def audio(
    resources: ResourcesDep, track_id: TrackIdPath, range_: Annotated[str | None, Header(alias="range")] = None
) -> Response:
    record = await resources.catalog.get(track_id)
    if record is None or record.status == "removed":
        raise TrackNotFoundError(track_id)
    media = resources.media
    stored = await media.audio_object(record.audio_uri)
    settings = resources.settings
    if settings.audio_redirect:
        url = await media.presigned_url(stored, settings.audio_url_expiry_s)
        return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
    byte_range = parse_range(range_, stored.size)
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'inline; filename="{track_id}.{stored.key.rsplit(".", 1)[-1]}"',
    }
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
        404: {"description": "unknown track, or no waveform computed yet"},
    },
)
async def waveform(
    resources: ResourcesDep,
    track_id: TrackIdPath,
    format_: Annotated[Literal["json", "png"], Query(alias="format")] = "json",
    width: Annotated[int, Query(ge=16, le=4000)] = 1200,
    height: Annotated[int, Query(ge=16, le=1000)] = 200,
) -> Response:
    try:
        peaks = await resources.media.waveform(track_id)
    except MediaMissingError:
        record = await resources.catalog.get(track_id)
        if record is None:
            raise TrackNotFoundError(track_id) from None
        raise MediaMissingError(f"no waveform for track {track_id} yet (its status is {record.status})") from None
    if format_ == "png":
        png = render_waveform_png(peaks, width, height)
        return Response(png, media_type="image/png")
    return Response(peaks.model_dump_json(), media_type="application/json")
