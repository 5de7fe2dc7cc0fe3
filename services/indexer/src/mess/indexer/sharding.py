"""Which shard a track lives in.

The rule is part of the snapshot format (a reader checks that every id sits in
its shard), so it must never depend on the process: Python's ``hash()`` is
salted per run, sha256 is not.
"""

import hashlib


def shard_of(track_id: str, shard_count: int) -> int:
    """sha256 of the id, first 8 bytes big-endian, modulo the shard count."""
    if shard_count < 1:
        raise ValueError(f"shard_count must be at least 1, got {shard_count}")
    digest = hashlib.sha256(track_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shard_count
