"""The one synchronous edge between services: the query service asks the embedder to embed a clip.

``POST {EMBED_CLIP_PATH}`` on the embedder takes the clip's raw bytes as the
body, a bearer token shared by the two services (``Authorization: Bearer``),
and answers an ``EmbeddedClip``; nothing is stored and no event is sent. A
refusal is a JSON ``ClipRefusal`` whose ``kind`` says why, so the query
service can map it to its own answer without parsing sentences:

* 401: no token, or the wrong one;
* 413: more bytes than the embedder takes;
* 415 ``decode``: not audio it can decode (or a header no real recording has);
* 422 ``too_short`` / ``silent`` / ``too_long`` / ``model_error``: audio, but not a clip it embeds;
* 503 ``busy``: every clip slot is taken (``Retry-After``).

Both sides import this module, so the path, the header and the body cannot drift apart.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mess.contracts.events import ModelIdentity
from mess.contracts.sequences import PitchSequence

EMBED_CLIP_PATH = "/internal/embed"
#: Query parameter: the longest clip the caller wants embedded (the embedder applies the lower of it and its own).
MAX_SECONDS_PARAM = "max_seconds"
#: The development token both services default to. It is public (it is in this file), so production
#: refuses it, as ingest refuses its development key.
DEVELOPMENT_TOKEN = "mess-dev-internal-token"  # noqa: S105 - public by design, refused in production
#: Shorter tokens are guessable; production refuses them (``mess-dev keys new`` mints 43 characters).
MIN_PRODUCTION_TOKEN_CHARS = 32

ClipRefusalKind = Literal[
    "unauthorized", "too_large", "decode", "too_short", "silent", "too_long", "model_error", "busy"
]


class EmbeddedClip(BaseModel):
    """What the embedder answers: the clip's pooled vector, the model that made it and its pitch sequence."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    model: ModelIdentity
    vector: list[float] = Field(min_length=1, description="L2-normalised, ``model.dim`` values")
    pitch_sequence: PitchSequence | None = Field(
        default=None, description="the clip's pitch-content sequence, the reference of the version re-rank"
    )
    duration_s: float = Field(ge=0, description="seconds of the clip that were embedded")
    chunks: int = Field(ge=1)


class ClipRefusal(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: ClipRefusalKind
    detail: str


def bearer(token: str) -> dict[str, str]:
    """The request header that carries the shared token."""
    return {"Authorization": f"Bearer {token}"}


def token_matches(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token``, compared in constant time."""
    scheme, _, offered = (authorization or "").partition(" ")
    # compare_digest on bytes: its time does not depend on where the first difference lies.
    expected = token.encode("utf-8")
    given = offered.strip().encode("utf-8")
    return scheme.lower() == "bearer" and hmac.compare_digest(given, expected)


def token_problem(token: str) -> str | None:
    """Why ``token`` may not guard the edge in production, or None."""
    if token == DEVELOPMENT_TOKEN:
        return "it is the public development token"
    if len(token) < MIN_PRODUCTION_TOKEN_CHARS:
        return f"it is shorter than {MIN_PRODUCTION_TOKEN_CHARS} characters"
    return None


def shared_token(value: str | None, file: Path | None) -> str | None:
    """The token from its setting, else from its file (a mounted Secret); surrounding whitespace is not part
    of it, so a file written with a trailing newline works. Raises ``ValueError`` for an unreadable file."""
    if value is not None and value.strip():
        return value.strip()
    if file is None:
        return None
    try:
        text = file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"the token file {file} cannot be read: {exc}") from exc
    if not text:
        raise ValueError(f"the token file {file} is empty")
    return text
