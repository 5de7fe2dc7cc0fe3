"""The explorer: the web page at ``/`` and its static files under ``/explorer/``.

Plain ES modules and CSS shipped inside this package (``mess/query/explorer``),
with no build step. The page only calls the public API from the browser, so it
needs no key itself and is served outside the read-key and rate dependencies:
a person opens it, then types a key if the API asks for one.

Only the explorer's answers carry its Content-Security-Policy: scripts,
styles, fetches and media from this origin alone (no inline script or style,
no plugins, no framing, no ``<base>``). ``blob:`` media is allowed because,
with read keys on, audio is fetched with the key and played from a blob (an
``<audio>`` element cannot send a header). With ``audio_redirect`` on, audio
comes from the S3 endpoint's presigned URLs, so that origin is allowed for
media too.
"""

from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException
from starlette.responses import PlainTextResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from mess.query.config import Settings

EXPLORER_DIR = Path(__file__).resolve().parent.parent / "explorer"
ASSETS_PATH = "/explorer"
# AWS presigns virtual-hosted URLs (bucket.s3.region.amazonaws.com) whose exact host varies by region and style.
_AWS_S3_MEDIA = "https://*.amazonaws.com"


def content_security_policy(settings: Settings) -> str:
    media = ["'self'", "blob:"]
    if settings.audio_redirect:
        endpoint = settings.stack.s3_endpoint_url
        if endpoint:
            parts = urlsplit(endpoint)
            media.append(f"{parts.scheme}://{parts.netloc}")
        else:
            media.append(_AWS_S3_MEDIA)
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self'",
            "connect-src 'self'",
            f"media-src {' '.join(media)}",
            "object-src 'none'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'self'",
        ]
    )


def explorer_headers(settings: Settings) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(settings),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
        # Revalidated on every load (StaticFiles answers 304 by ETag), so an upgraded service is seen at once.
        "Cache-Control": "no-cache",
    }


class ExplorerFiles(StaticFiles):
    """StaticFiles whose every answer (404s included) carries the explorer's headers."""

    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__(directory=EXPLORER_DIR)
        self._headers = headers

    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            response = await super().get_response(path, scope)
        except HTTPException as exc:
            # StaticFiles raises for a missing file or a wrong method; answered here so the headers go along.
            response = PlainTextResponse(str(exc.detail), status_code=exc.status_code, headers=exc.headers)
        response.headers.update(self._headers)
        return response


def install_explorer(app: FastAPI, settings: Settings) -> None:
    headers = explorer_headers(settings)
    index = EXPLORER_DIR / "index.html"

    @app.get("/", include_in_schema=False)
    async def explorer_page() -> FileResponse:
        return FileResponse(index, media_type="text/html; charset=utf-8", headers=headers)

    app.mount(ASSETS_PATH, ExplorerFiles(headers), name="explorer")
