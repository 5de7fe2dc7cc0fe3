"""How each failure becomes an HTTP answer: a status code and a body that says why."""

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from mess.query.catalog import BadCursorError, CatalogBusyError, CatalogUnavailableError
from mess.query.media import MediaMissingError, MediaUnavailableError, RangeNotSatisfiableError
from mess.query.recommender import NotReadyError, TrackNotFoundError, TrackNotIndexedError
from mess.query.strategies import ParameterError

log = logging.getLogger(__name__)


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

    @app.exception_handler(MediaUnavailableError)
    async def media_unavailable(request: Request, exc: MediaUnavailableError) -> JSONResponse:
        log.warning("%s %s: %s (%r)", request.method, request.url.path, exc, exc.__cause__)
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(RangeNotSatisfiableError)
    async def bad_range(_: Request, exc: RangeNotSatisfiableError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=416, headers={"Content-Range": f"bytes */{exc.size}"})
