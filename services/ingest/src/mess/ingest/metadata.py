"""What text a track's metadata may hold, wherever it came from (an upload's form, a dropped object's
S3 metadata, a file name).

Control characters are refused: Postgres cannot store NUL in text at all (an insert fails, which would
read as a backing-service outage rather than bad input), and the others (escape sequences, carriage
returns) have no place in a title and can forge lines in logs and terminals.
"""

import unicodedata

from mess.contracts.events import TrackMetadata


def control_character_problem(metadata: TrackMetadata) -> str | None:
    """A sentence naming the first field that holds a control character, or None when all are clean."""
    for name, value in metadata.model_dump().items():
        texts = value if isinstance(value, list) else [value]
        for text in texts:
            if isinstance(text, str) and any(unicodedata.category(c) == "Cc" for c in text):
                bad = next(c for c in text if unicodedata.category(c) == "Cc")
                return f"field `{name}` holds the control character U+{ord(bad):04X}"
    return None
