"""What a track row may hold, checked before anything is written anywhere.

Every value that ends in a column of ``tracks`` is checked here against that
column, wherever it came from (an upload's form, a dropped object's S3
metadata, a file name, the decoded header): a value Postgres refuses would
otherwise fail the insert after the audio was stored, and read as an outage
(503, retried for ever) instead of as bad input.

Control characters are refused in metadata: Postgres cannot store NUL in
text at all, and the others (escape sequences, carriage returns) have no
place in a title and can forge lines in logs and terminals.
"""

import math
import unicodedata
from collections.abc import Mapping
from typing import Any

from mess.contracts.events import TrackMetadata
from mess.contracts.ids import is_track_id
from mess.contracts.limits import metadata_bytes

# The integer columns of ``tracks`` (migrations/0001_tracks.sql) and what their types hold.
_INTEGER = (-(2**31), 2**31 - 1)
_BIGINT = (-(2**63), 2**63 - 1)
INTEGER_COLUMNS: dict[str, tuple[int, int]] = {
    "year": _INTEGER,
    "sample_rate": _INTEGER,
    "channels": _INTEGER,
    "size_bytes": _BIGINT,
}


def control_character_problem(metadata: TrackMetadata) -> str | None:
    """A sentence naming the first field that holds a control character, or None when all are clean."""
    for name, value in metadata.model_dump().items():
        texts = value if isinstance(value, list) else [value]
        for text in texts:
            if isinstance(text, str) and any(unicodedata.category(c) == "Cc" for c in text):
                bad = next(c for c in text if unicodedata.category(c) == "Cc")
                return f"field `{name}` holds the control character U+{ord(bad):04X}"
    return None


def metadata_problem(metadata: TrackMetadata, max_bytes: int) -> str | None:
    """Why ``metadata`` cannot be a track's, or None: a control character, a value its column cannot hold,
    or more than ``max_bytes`` of JSON in all (a TrackAdded must fit in a broker message)."""
    problem = control_character_problem(metadata) or row_problem(metadata.model_dump())
    if problem is not None:
        return problem
    size = metadata_bytes(metadata)
    if size > max_bytes:
        return f"the metadata takes {size} bytes as JSON; at most {max_bytes} are accepted, all fields together"
    return None


def row_problem(values: Mapping[str, Any]) -> str | None:
    """Why a column of ``tracks`` cannot hold one of ``values`` (column name -> value), or None."""
    for column, value in values.items():
        problem = _value_problem(column, value)
        if problem is not None:
            return problem
    return None


def _value_problem(column: str, value: Any) -> str | None:
    if value is None:
        return None
    if column == "id" and not is_track_id(str(value)):
        return f"{str(value)[:200]!r} is not a track id"
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        low, high = INTEGER_COLUMNS.get(column, _BIGINT)
        if not low <= value <= high:
            return f"field `{column}` is {value}; it must lie between {low} and {high}"
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"field `{column}` is {value}, not a finite number"
    texts = value if isinstance(value, list) else [value]
    for text in texts:
        # Postgres text holds any character but NUL.
        if isinstance(text, str) and "\x00" in text:
            return f"field `{column}` holds a NUL character"
    return None
