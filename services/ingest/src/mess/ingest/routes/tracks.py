"""``/tracks``: upload (``POST``), removal (``DELETE``) and status (``GET .../status``)."""

import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from mess.contracts.ids import TRACK_ID_PATTERN
from mess.ingest import metrics
from mess.ingest.deps import ApiKey, Resources
from mess.ingest.outages import BACKEND_ERRORS
from mess.ingest.registry import TrackStatus, TrackStatusName, erase_objects
from mess.ingest.uploads import METADATA_FIELDS, UploadError

log = logging.getLogger(__name__)

router = APIRouter(prefix="/tracks", tags=["tracks"])

TrackIdPath = Annotated[str, Path(pattern=TRACK_ID_PATTERN, description="a track id")]


class UploadAnswer(BaseModel):
    track_id: str
    status: TrackStatusName
    created: bool
    sha256: str
    size_bytes: int
    duration_s: float | None


class RemovalAnswer(BaseModel):
    track_id: str
    status: TrackStatusName


class ErrorBody(BaseModel):
    error: str
    detail: str


class Message(BaseModel):
    """FastAPI's own error body: a sentence in ``detail``."""

    detail: str


_NO_TRACK: dict[int | str, dict[str, Any]] = {404: {"model": Message, "description": "no such track"}}
_NO_KEY: dict[int | str, dict[str, Any]] = {
    401: {"model": Message, "description": "no or wrong X-API-Key"},
    429: {
        "model": Message,
        "description": "the key's write rate is spent",
        "headers": {"Retry-After": {"schema": {"type": "string"}, "description": "seconds to wait"}},
    },
}


_UPLOAD_FORM: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "WAV, FLAC, OGG or MP3"},
                        **{
                            name: {"type": "integer"} if name == "year" else {"type": "string"}
                            for name in METADATA_FIELDS
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    dependencies=[ApiKey],
    status_code=status.HTTP_201_CREATED,
    response_model=UploadAnswer,
    responses={
        200: {"model": UploadAnswer, "description": "the same content was uploaded before: its track"},
        400: {"model": ErrorBody},
        **_NO_KEY,
        413: {"model": ErrorBody},
        415: {"model": ErrorBody, "description": "not audio, corrupt, silent, too short or too long"},
        422: {"model": ErrorBody},
    },
    openapi_extra=_UPLOAD_FORM,
    summary="Upload audio as a new track",
)
async def upload_track(request: Request, resources: Resources) -> JSONResponse:
    """The body streams to S3 while it arrives; the audio is then decoded and, if acceptable, registered.
    Tags may be repeated or comma-separated; the title defaults to the file name."""
    started = time.perf_counter()
    try:
        result = await resources.intake.accept(request)
    except UploadError as exc:
        metrics.UPLOADS.labels(exc.kind).inc()
        return JSONResponse({"error": exc.kind, "detail": exc.message}, status_code=exc.status_code)
    registration = result.registration
    created = not registration.existing
    metrics.UPLOADS.labels("created" if created else "existing").inc()
    metrics.UPLOAD_SECONDS.observe(time.perf_counter() - started)
    answer = UploadAnswer(
        track_id=registration.track_id,
        status=registration.status,
        created=created,
        sha256=result.sha256,
        size_bytes=result.size_bytes,
        duration_s=result.duration_s,
    )
    return JSONResponse(answer.model_dump(), status_code=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


@router.delete(
    "/{track_id}",
    dependencies=[ApiKey],
    response_model=RemovalAnswer,
    responses={**_NO_KEY, **_NO_TRACK},
    summary="Remove a track",
)
async def remove_track(track_id: TrackIdPath, resources: Resources) -> RemovalAnswer:
    """Marks the track removed, announces TrackRemoved (the index drops it) and erases its audio and waveform
    objects; removing it again changes nothing. The dropped object a track came from, if any, stays: the
    drop prefix belongs to whoever dropped it."""
    removal = await resources.registry.remove(track_id, reason="removed through the API")
    if removal is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no track {track_id}")
    try:
        await erase_objects(resources.registry, resources.store, track_id)
    except BACKEND_ERRORS as exc:
        # The removal is committed and the erasure stays due: the reconciler finishes it.
        log.warning("track %s removed, but erasing its objects failed (%r); the reconciler retries", track_id, exc)
    return RemovalAnswer(track_id=track_id, status="removed")


class RetryAnswer(BaseModel):
    track_id: str
    status: TrackStatusName
    retried: bool


@router.post(
    "/{track_id}/retry",
    dependencies=[ApiKey],
    response_model=RetryAnswer,
    responses={**_NO_KEY, **_NO_TRACK},
    summary="Try a failed track again",
)
async def retry_track(track_id: TrackIdPath, resources: Resources) -> RetryAnswer:
    """A failed track goes back to registered and is announced again, so the stage that gave up (a
    decode after a codec fix, an embed after a model outage) runs anew. A track in any other state is
    left alone (``retried`` false): retrying is safe to repeat."""
    outcome = await resources.registry.retry(track_id)
    if outcome is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no track {track_id}")
    now, retried = outcome
    return RetryAnswer(track_id=track_id, status=now, retried=retried)


@router.get(
    "/{track_id}/status", response_model=TrackStatus, responses=_NO_TRACK, summary="Where a track is in the pipeline"
)
async def track_status(track_id: TrackIdPath, resources: Resources) -> TrackStatus:
    found = await resources.registry.status(track_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no track {track_id}")
    return found
