"""When the next snapshot is due: after N changes, or T seconds after the first
pending one, never when nothing changed, and not before a failed publish's
retry delay has passed."""

import time

from mess.indexer.config import Settings


class SnapshotSchedule:
    def __init__(self, settings: Settings) -> None:
        self._every_changes = settings.snapshot_every_changes
        self._interval_s = settings.snapshot_interval_s
        self._retry_s = settings.retry_s
        self.pending = 0
        self._first_pending_at: float | None = None
        self._retry_at = 0.0

    def changed(self, count: int = 1) -> None:
        """``count`` changes were applied and wait for a snapshot."""
        if count <= 0:
            return
        self.pending += count
        if self._first_pending_at is None:
            self._first_pending_at = time.monotonic()

    def reset(self, pending: int) -> None:
        """A snapshot was (re)loaded; ``pending`` of its shards still need building."""
        self.pending = 0
        self._first_pending_at = None
        self.changed(pending)

    def due(self, model_known: bool) -> bool:
        if self.pending == 0 or time.monotonic() < self._retry_at:
            return False
        if not model_known:
            # Only facts and tombstones can be pending before the first vector;
            # with no dimension there is no shard to put them in, so they wait
            # (their offsets are replayed after a restart).
            return False
        if self.pending >= self._every_changes:
            return True
        waited = time.monotonic() - (self._first_pending_at or time.monotonic())
        return waited >= self._interval_s

    def taken(self) -> int:
        """A publish captured every pending change; returns how many, for ``failed``."""
        taken, self.pending, self._first_pending_at = self.pending, 0, None
        return taken

    def failed(self, changes: int) -> None:
        """The publish that took ``changes`` failed: they are pending again, retried after the delay."""
        self.changed(changes)
        self._retry_at = time.monotonic() + self._retry_s
