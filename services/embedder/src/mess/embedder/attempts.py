"""Which records were in flight when the process died: the crash-loop breaker.

A record whose processing kills the process (the kernel's OOM killer, a
segfault in a codec) leaves no exception to catch: the batch is never
committed, the group redelivers it, and the next consumer dies the same way,
for ever. So before a record is processed its (topic, partition, offset) is
noted in a small SQLite file, and the note is removed once the record is
settled (or fails in any way Python can still see: an exception, a
cancellation). A note found on delivery therefore means "the process died
while this record was in flight". Each such delivery counts one crash.

Innocent records of the same batch were in flight too. So a batch holding
any suspect is processed one record at a time: a further crash is then
attributed to exactly the record in hand, and only a record that reaches
``max_crashes`` is dead-lettered (``error_kind`` ``crash_loop``), unprocessed.

The file must outlive the container (Kubernetes restarts an OOM-killed
container in the same pod, keeping its emptyDir). It is per replica: a
record whose partition moves to another replica after a crash starts its
count there again, so the bound is ``max_crashes`` per replica, still finite.
Writes are not fsynced: a process that dies leaves its writes to the kernel,
which keeps them; only a machine crash could lose a note.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CRASH_LOOP = "crash_loop"
# Notes older than this belong to partitions that moved elsewhere long ago.
_STALE_S = 7 * 24 * 3600


@dataclass(frozen=True)
class RecordKey:
    topic: str
    partition: int
    offset: int


class AttemptLedger:
    """Notes of records in flight, kept in a SQLite file (one per consumer group)."""

    def __init__(self, path: Path, max_crashes: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_crashes = max_crashes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS in_flight ("
            "topic TEXT NOT NULL, partition INTEGER NOT NULL, record_offset INTEGER NOT NULL, "
            "crashes INTEGER NOT NULL, noted_at REAL NOT NULL, "
            "PRIMARY KEY (topic, partition, record_offset))"
        )
        self._db.execute("DELETE FROM in_flight WHERE noted_at < ?", (time.time() - _STALE_S,))

    def _noted(self, key: RecordKey) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM in_flight WHERE topic = ? AND partition = ? AND record_offset = ?",
                (key.topic, key.partition, key.offset),
            ).fetchone()
        return row is not None

    def begin(self, key: RecordKey) -> int:
        """Note the record as in flight; returns the crashes counted so far (0 on a first delivery)."""
        with self._lock:
            row = self._db.execute(
                "INSERT INTO in_flight (topic, partition, record_offset, crashes, noted_at) VALUES (?, ?, ?, 0, ?) "
                "ON CONFLICT (topic, partition, record_offset) DO UPDATE SET crashes = crashes + 1, "
                "noted_at = excluded.noted_at RETURNING crashes",
                (key.topic, key.partition, key.offset, time.time()),
            ).fetchone()
        return int(row[0])

    def end(self, key: RecordKey) -> None:
        """The record is settled, or failed in a way that was not a process death."""
        with self._lock:
            self._db.execute(
                "DELETE FROM in_flight WHERE topic = ? AND partition = ? AND record_offset = ?",
                (key.topic, key.partition, key.offset),
            )

    def any_suspect(self, keys: list[RecordKey]) -> bool:
        """Whether any of these records was in flight when the process last died."""
        return any(self._noted(key) for key in keys)

    def close(self) -> None:
        with self._lock:
            self._db.close()
