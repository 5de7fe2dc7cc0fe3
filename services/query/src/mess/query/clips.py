"""The query service's side of the one synchronous edge: a clip goes to the embedder, a vector comes back.

Bounded like every other dependency: at most ``embedder_concurrency`` clips
are in flight from this replica (one more is a 503 at once, never a queue),
each waits at most ``embedder_timeout_s``, and whatever goes wrong on the way
(connection refused, timeout, the embedder busy or misconfigured) is one
``EmbedderUnavailableError``: a 503 with ``Retry-After``. What the embedder
refuses about the clip itself (not audio, too short, silent, too long) is a
``ClipRejectedError`` carrying the embedder's ``kind``.
"""

from __future__ import annotations

import logging

import httpx
from pydantic import ValidationError

from mess.contracts.clips import EMBED_CLIP_PATH, MAX_SECONDS_PARAM, ClipRefusal, EmbeddedClip, bearer

log = logging.getLogger(__name__)

# The embedder's answer is a few kilobytes of JSON (a vector and a sequence); more is not its answer.
_MAX_ANSWER_BYTES = 1024**2


class EmbedderUnavailableError(Exception):
    """The clip could not be embedded now; the client may retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ClipRejectedError(Exception):
    """The clip itself is refused: ``status`` 413, 415 or 422, with the embedder's ``kind``."""

    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail


class ClipEmbedder:
    def __init__(self, client: httpx.AsyncClient | None, token: str, max_seconds: float, concurrency: int) -> None:
        self._client = client  # None: no embedder configured, clip search is off
        self._token = token
        self._max_seconds = max_seconds
        self._concurrency = concurrency
        self._in_flight = 0

    async def embed(self, clip: bytes) -> EmbeddedClip:
        if self._client is None:
            raise EmbedderUnavailableError("search by clip is not configured on this service", retry_after_s=3600)
        if self._in_flight >= self._concurrency:
            raise EmbedderUnavailableError("every clip slot of this replica is taken; try again shortly", 1)
        self._in_flight += 1
        try:
            response = await self._client.post(
                EMBED_CLIP_PATH,
                content=clip,
                params={MAX_SECONDS_PARAM: self._max_seconds},
                headers={**bearer(self._token), "Content-Type": "application/octet-stream"},
            )
        except httpx.HTTPError as exc:
            log.warning("the embedder could not be reached for a clip: %r", exc)
            raise EmbedderUnavailableError("the embedder is unavailable; try again shortly") from exc
        finally:
            self._in_flight -= 1
        return self._answer(response)

    def _answer(self, response: httpx.Response) -> EmbeddedClip:
        if len(response.content) > _MAX_ANSWER_BYTES:
            raise EmbedderUnavailableError("the embedder's answer was not one it gives")
        if response.status_code == 200:
            try:
                return EmbeddedClip.model_validate_json(response.content)
            except ValidationError as exc:
                log.error("the embedder answered a clip with an unreadable body: %s", exc)
                raise EmbedderUnavailableError("the embedder's answer was not one it gives") from exc
        try:
            refusal = ClipRefusal.model_validate_json(response.content)
        except ValidationError:
            refusal = None
        if refusal is not None and response.status_code in (413, 415, 422):
            return_status = response.status_code
            raise ClipRejectedError(return_status, refusal.kind, refusal.detail)
        if response.status_code == 401:
            # Our token and the embedder's differ: an operator's mistake, not the client's.
            log.error("the embedder refused this service's token (MESS_QUERY_EMBEDDER_TOKEN)")
        else:
            log.warning("the embedder answered a clip with %d", response.status_code)
        retry = response.headers.get("retry-after", "")
        raise EmbedderUnavailableError(
            "the embedder cannot embed clips now; try again shortly", int(retry) if retry.isdigit() else 5
        )
