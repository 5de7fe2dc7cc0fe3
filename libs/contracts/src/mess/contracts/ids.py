"""Track identifiers.

Ids are deterministic and URL-safe so that re-sending anything is idempotent
end to end: an upload's id derives from its content hash, a dataset track's
from the dataset name and its file.
"""

import hashlib
import re
from typing import Annotated

from pydantic import StringConstraints

TRACK_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,127}$"
_TRACK_ID_RE = re.compile(TRACK_ID_PATTERN)
_UNSAFE = re.compile(r"[^a-z0-9._-]+")

TrackId = Annotated[str, StringConstraints(pattern=TRACK_ID_PATTERN)]

# A dataset name is held to the id alphabet: it becomes a folder of the drop prefix and the first part
# of every id of the dataset. It ends in a letter or digit, so no slug of an id ever trims it.
DATASET_PATTERN = r"^[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?$"
_DATASET_RE = re.compile(DATASET_PATTERN)


def is_track_id(value: str) -> bool:
    return _TRACK_ID_RE.fullmatch(value) is not None


def is_dataset_name(value: str) -> bool:
    return _DATASET_RE.fullmatch(value) is not None


def dataset_namespace(dataset: str) -> str:
    """The prefix every id ``track_id_from_parts(dataset, ...)`` gives: a dataset name is already a slug
    and short enough never to be cut, so its ids begin with it and a dash."""
    return f"{dataset}-"


def track_id_from_parts(*parts: str) -> str:
    """A readable, stable id from free-form parts (e.g. dataset and file name).

    The readable slug is cut to fit, and a short hash of the untouched parts
    is appended so two names that slug alike (``a b`` and ``a-b``) still differ.
    """
    raw = "\x1f".join(parts)
    digest = hashlib.sha256(raw.encode("utf-8")).hexdigest()[:12]
    slug = _UNSAFE.sub("-", "-".join(parts).lower()).strip("-._")
    slug = slug[: 127 - len(digest) - 1].rstrip("-._")
    return f"{slug}-{digest}" if slug else digest
