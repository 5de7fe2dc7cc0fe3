"""What a failed track says about its failure in public: a stable code and a fixed, safe sentence.

``tracks.failure_reason`` is shown to anyone who can read ``/tracks`` (the
query service serves it from Postgres), so it never holds what a failure
carried in: an exception's text names S3 keys of other users, endpoint URLs,
Python object addresses. The stored reason is ``"<code>: <text>"``, the code
one of the stage's error kinds (or ``other``), the text from the table below;
the details go to the service's log and stay on the dead-letter topic, which
only operators read.

The ``"<code>:"`` prefix is part of the contract: the reconciler retries
``transient_exhausted:`` failures.
"""

import re

from mess.contracts.events import TRANSIENT_EXHAUSTED

_CODE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
OTHER = "other"

_TEXTS: dict[str, str] = {
    # ingest
    "not_audio": "the file is not audio that can be decoded (WAV, FLAC, OGG or MP3 expected)",
    "unsupported_format": "the audio format is not accepted",
    "corrupt": "the audio is corrupt or truncated",
    "too_short": "the audio is too short",
    "too_long": "the audio is too long",
    "too_large": "the file is too large",
    "silent": "the audio is silent",
    "implausible_rate": "the sample rate is outside the accepted range",
    "too_many_channels": "the audio has too many channels",
    "too_many_samples": "the audio decodes to too many samples",
    "bad_metadata": "the metadata cannot be accepted",
    "unstorable": "a value of the track cannot be stored",
    "claim_refused": "the object claims a track it has no authority over",
    # downstream stages
    "decode": "the audio could not be decoded for embedding",
    TRANSIENT_EXHAUSTED: "a dependency was unavailable; the track will be tried again",
}


def public_code(kind: str) -> str:
    return kind if _CODE.fullmatch(kind) else OTHER


def public_reason(kind: str, stage: str) -> str:
    """``"<code>: <safe text>"`` for an error kind of ``stage``; nothing of the failure's own text."""
    code = public_code(kind)
    text = _TEXTS.get(code, f"the {stage if _CODE.fullmatch(stage) else 'pipeline'} stage could not process the track")
    return f"{code}: {text}"
