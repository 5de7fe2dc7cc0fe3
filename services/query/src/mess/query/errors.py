"""How each failure becomes an HTTP answer: a status code and a body that says why."""

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from mess.query.catalog import BadCursorError, CatalogBusyError, CatalogUnavailableError
from mess.query.clips import ClipRejectedError, EmbedderUnavailableError
from mess.query.media import MediaMissingError, MediaUnavailableError, NotAudioError, RangeNotSatisfiableError
from mess.query.recommender import (
    ModelMismatchError,
    NotReadyError,
    StrategyBusyError,
    TrackNotFoundError,
    TrackNotIndexedError,
)
from mess.query.strategies import ParameterError

log = logging.getLogger(__name__)


class BodyTooLargeError(Exception):
    """413: a request body over its route's byte cap (read no further than the cap)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes")
        self.limit = limit


class UnsupportedBodyError(Exception):
    """415: a body that is neither a clip form nor JSON, or a clip part whose type says it is not audio."""


def unprocessable(location: str, name: str, message: str) -> JSONResponse:
    """A 422 shaped like FastAPI's own validation errors, so clients parse one format."""
    return JSONResponse({"detail": [{"loc": [location, name], "msg": message, "type": "value_error"}]}, status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ParameterError)
    async def parameter_error(request: Request, exc: ParameterError) -> JSONResponse:
        location = "body" if request.method == "POST" else "query"
        return unprocessable(location, exc.name, exc.message)

    @app.exception_handler(BadCursorError)
    async def bad_cursor(_: Request, exc: BadCursorError) -> JSONResponse:
        return unprocessable("query", "cursor", str(exc))

    @app.exception_handler(TrackNotFoundError)
    async def not_found(_: Request, exc: TrackNotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "track_id": exc.track_id}, status_code=404)

    @app.exception_handler(TrackNotIndexedError)
    async def not_indexed(_: Request, exc: TrackNotIndexedError) -> JSONResponse:
        return JSONResponse(
            {
                "detail": str(exc),
                "track_id": exc.track_id,
                "status": exc.status,
                "snapshot_version": exc.snapshot_version,
            },
            status_code=409,
        )

    @app.exception_handler(NotReadyError)
    async def not_ready(_: Request, exc: NotReadyError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(StrategyBusyError)
    async def strategy_busy(_: Request, exc: StrategyBusyError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(CatalogBusyError)
    async def catalog_busy(_: Request, exc: CatalogBusyError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(CatalogUnavailableError)
    async def catalog_unavailable(request: Request, exc: CatalogUnavailableError) -> JSONResponse:
        # The cause (host, port, driver text) goes to the log, never into the sentence for the client.
        log.warning("%s %s: %s (%r)", request.method, request.url.path, exc, exc.__cause__)
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(MediaMissingError)
    async def media_missing(_: Request, exc: MediaMissingError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(NotAudioError)
    async def not_audio(request: Request, exc: NotAudioError) -> JSONResponse:
        # Whatever the object holds is never served; the key goes to the log for whoever cleans the bucket.
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": "this track has no servable audio"}, status_code=404)

    @app.exception_handler(MediaUnavailableError)
    async def media_unavailable(request: Request, exc: MediaUnavailableError) -> JSONResponse:
        log.warning("%s %s: %s (%r)", request.method, request.url.path, exc, exc.__cause__)
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(BodyTooLargeError)
    async def too_large(_: Request, exc: BodyTooLargeError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "limit_bytes": exc.limit}, status_code=413)

    @app.exception_handler(UnsupportedBodyError)
    async def unsupported(_: Request, exc: UnsupportedBodyError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=415)

    @app.exception_handler(ClipRejectedError)
    async def clip_rejected(_: Request, exc: ClipRejectedError) -> JSONResponse:
        # The embedder's kind (decode, too_short, silent, too_long, ...) lets a client tell the cases apart.
        return JSONResponse({"detail": exc.detail, "kind": exc.kind}, status_code=exc.status)

    @app.exception_handler(EmbedderUnavailableError)
    async def embedder_unavailable(_: Request, exc: EmbedderUnavailableError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(ModelMismatchError)
    async def model_mismatch(_: Request, exc: ModelMismatchError) -> JSONResponse:
        return JSONResponse(
            {
                "detail": str(exc),
                "clip_model": exc.clip_model.model_dump(),
                "serving_model": exc.serving.model_dump() if exc.serving is not None else None,
                "snapshot_version": exc.snapshot_version,
            },
            status_code=409,
        )

    @app.exception_handler(RangeNotSatisfiableError)
    async def bad_range(_: Request, exc: RangeNotSatisfiableError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=416, headers={"Content-Range": f"bytes */{exc.size}"})
