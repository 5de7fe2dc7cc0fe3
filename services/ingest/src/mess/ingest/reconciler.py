"""The reconciler: a lost message heals itself.

Postgres says what should exist. Every ``reconcile_interval_s`` the
reconciler first applies the snapshot ``snapshots/LATEST`` points to (in case
its SnapshotPublished was missed, so tracks that are in the index are not
re-announced for nothing), then queues TrackAdded again, reason
``reconcile``, for tracks still registered or embedded ``reconcile_grace_s``
after their last announcement: at most ``reconcile_batch`` per interval, the
longest waiting first. Re-announcing is safe because every consumer is
idempotent; the lock-free ``SKIP LOCKED`` selection makes replicas share the
work instead of doubling it.

It also finishes removals: a removed track whose objects (audio, waveform)
were not erased, because S3 failed at the time, is erased now, and every
removed track is erased once more ``reconcile_grace_s`` after its removal,
for a waveform an embed in flight wrote after the first erasure.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from mess.contracts.storage import LATEST_KEY, manifest_key
from mess.ingest import metrics
from mess.ingest.outages import BACKEND_ERRORS
from mess.ingest.registry import erase_objects
from mess.ingest.status import SnapshotUnreadableError
from mess.ingest.store import is_missing
from mess.runtime.termination import wait_or_stop

if TYPE_CHECKING:
    from mess.ingest.config import Settings
    from mess.ingest.registry import TrackRegistry
    from mess.ingest.status import SnapshotMembership
    from mess.ingest.store import AudioStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconcileReport:
    latest_version: str | None
    newly_indexed: int
    reannounced: list[str]
    erased: int = 0


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        store: AudioStore,
        registry: TrackRegistry,
        membership: SnapshotMembership,
        stopping: asyncio.Event | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.membership = membership
        self.stopping = stopping or asyncio.Event()
        self._applied_version: str | None = None

    async def run(self) -> None:
        """A pass every interval until the service stops; a pass under way when it does is finished."""
        while not await wait_or_stop(self.stopping, self.settings.reconcile_interval_s):
            try:
                report = await self.reconcile_once()
            except BACKEND_ERRORS as exc:
                log.warning("reconcile pass failed (%s); next one in %.0f s", exc, self.settings.reconcile_interval_s)
                continue
            if report.reannounced:
                log.info("re-announced %d track(s) not indexed in time", len(report.reannounced))
        log.info("reconciler stopped")

    async def reconcile_once(self) -> ReconcileReport:
        version = await self._latest_version()
        newly_indexed = 0
        if version is not None and version != self._applied_version:
            try:
                newly_indexed = await self.membership.apply(version, self.store.uri(manifest_key(version)))
                self._applied_version = version
            except SnapshotUnreadableError as exc:
                # Not fatal: re-announcing is still right for whatever the snapshot would have covered.
                log.warning("LATEST snapshot %s is unreadable: %s", version, exc)
        reannounced = await self.registry.reannounce_stale(
            self.settings.reconcile_grace_s, self.settings.reconcile_batch
        )
        metrics.REANNOUNCED.inc(len(reannounced))
        return ReconcileReport(version, newly_indexed, reannounced, await self.erase_removed())

    async def erase_removed(self) -> int:
        """Erase the objects of removed tracks whose erasure is due; returns how many were erased."""
        erased = 0
        for track_id in await self.registry.removed_to_erase(
            self.settings.reconcile_grace_s, self.settings.reconcile_batch
        ):
            try:
                erased += await erase_objects(self.registry, self.store, track_id)
            except BACKEND_ERRORS as exc:
                log.warning("erasing the objects of removed track %s failed (%r); next pass retries", track_id, exc)
        return erased

    async def _latest_version(self) -> str | None:
        try:
            raw = await self.store.read_bytes(LATEST_KEY)
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise
        return raw.decode("utf-8").strip() or None
