"""``POST /internal/embed``: a clip in, its vector, model and pitch sequence out; nothing stored, nothing sent.

The query service's search by example is the only caller (DESIGN.md, "one
synchronous edge"). It shares the decode bounds, the decode threads, the
batcher and the model with the Kafka work, and is held apart from it in two
ways: at most ``clip_concurrency`` clips are in flight (one more is answered
503 at once rather than queued, so a burst of searches never piles up behind
the model), and in the batcher clips take at most ``clip_batch_share`` of a
batch while tracks wait (``mess.embedder.batching``). A clip is at most
``clip_max_seconds`` long, so one costs a bounded number of chunks.

The caller proves itself with a shared bearer token, compared in constant
time; the token is checked before a byte of the body is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from mess.contracts.clips import (
    EMBED_CLIP_PATH,
    MAX_SECONDS_PARAM,
    ClipRefusal,
    ClipRefusalKind,
    EmbeddedClip,
    token_matches,
)
from mess.embedder import metrics
from mess.embedder.audio import AudioRejectedError

_STATUS: dict[str, int] = {
    "unauthorized": 401,
    "too_large": 413,
    "decode": 415,
    "too_short": 422,
    "silent": 422,
    "too_long": 422,
    "model_error": 422,
    "busy": 503,
}


@dataclass
class ClipGate:
    """Who may send a clip (the token), how many at once, and how large."""

    token: str = field(repr=False)
    concurrency: int
    max_bytes: int
    in_flight: int = 0

    def try_enter(self) -> bool:
        # No await between the check and the increment: the event loop makes this atomic.
        if self.in_flight >= self.concurrency:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1


class _TooLargeError(Exception):
    pass


def refusal(kind: ClipRefusalKind, detail: str) -> JSONResponse:
    metrics.CLIPS.labels(kind).inc()
    headers = {"Retry-After": "1"} if kind == "busy" else {}
    if kind == "unauthorized":
        headers["WWW-Authenticate"] = "Bearer"
    body = ClipRefusal(kind=kind, detail=detail).model_dump()
    return JSONResponse(body, status_code=_STATUS[kind], headers=headers)


async def _read_capped(request: Request, max_bytes: int) -> bytes:
    """The body, refused as soon as it passes ``max_bytes`` (never held beyond that)."""
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > max_bytes:
            raise _TooLargeError
        parts.append(part)
    return b"".join(parts)


_REFUSALS: dict[int | str, dict[str, Any]] = {
    status: {"model": ClipRefusal, "description": ", ".join(k for k, s in _STATUS.items() if s == status)}
    for status in sorted(set(_STATUS.values()))
}

router = APIRouter(tags=["internal"])


@router.post(
    EMBED_CLIP_PATH,
    response_model=EmbeddedClip,
    responses=_REFUSALS,
    operation_id="embed_clip",
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {"type": "string"}}}}
    },
)
async def embed_clip(
    request: Request,
    max_seconds: Annotated[
        float | None,
        Query(alias=MAX_SECONDS_PARAM, gt=0, description="refuse clips longer than this (capped by clip_max_seconds)"),
    ] = None,
) -> JSONResponse:
    """Embed the raw audio bytes of the body (any format the track decoder reads). Internal: needs the
    shared token (``Authorization: Bearer``); stores nothing and publishes nothing."""
    resources = getattr(request.app.state, "resources", None)
    if resources is None:
        return refusal("busy", "the model is not loaded yet")
    gate: ClipGate = resources.clips
    if not token_matches(request.headers.get("authorization"), gate.token):
        return refusal("unauthorized", "this endpoint needs the internal token (Authorization: Bearer)")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > gate.max_bytes:
        return refusal("too_large", f"the clip is {declared} bytes; at most {gate.max_bytes} are taken")
    if not gate.try_enter():
        return refusal("busy", f"{gate.concurrency} clips are being embedded; try again shortly")
    try:
        try:
            data = await _read_capped(request, gate.max_bytes)
        except _TooLargeError:
            return refusal("too_large", f"the clip is over {gate.max_bytes} bytes")
        try:
            embedded = await resources.embedder.embed_clip(data, max_seconds or math.inf)
        except AudioRejectedError as exc:
            kind: ClipRefusalKind = exc.kind if exc.kind in _STATUS else "decode"  # type: ignore[assignment]
            return refusal(kind, exc.reason)
        except RuntimeError as exc:  # the batcher is stopping
            return refusal("busy", str(exc))
    finally:
        gate.leave()
    metrics.CLIPS.labels("embedded").inc()
    answer = EmbeddedClip(
        model=resources.embedder.identity,
        vector=[float(v) for v in embedded.vector],
        pitch_sequence=embedded.pitch_sequence,
        duration_s=round(embedded.duration_s, 3),
        chunks=embedded.chunks,
    )
    return JSONResponse(answer.model_dump(mode="json"))
