"""Following the indexer: which snapshot serves, and swapping in newer ones.

Two ways hear of a new snapshot: every SnapshotPublished on the broker (read
with no consumer group from the latest offsets, so every replica gets every
event and none commits anything), and a timer that reads ``snapshots/LATEST``
as a backstop for a missed event or a broker outage. Both only *announce* a
version; one loader task loads the newest announced version, so a burst of
announcements costs one load.

A swap replaces one reference. Requests that already hold the old searcher
finish on it; Python frees it (and its memory maps) when the last one drops it.

Stopping cancels the three loops: the event consumer commits nothing (it has
no group), and a load under way is abandoned (its download or build thread
runs to its end, discarded). Dead letters being sent are awaited, bounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from mess.contracts.events import SnapshotPublished, TrackFailed
from mess.contracts.storage import (
    LatestAgreement,
    SnapshotCheckError,
    agreement_with_latest,
    check_snapshot_location,
    manifest_key,
    snapshot_number,
)
from mess.query.config import Settings
from mess.query.metrics import QueryMetrics
from mess.query.searcher import SnapshotSearcher
from mess.query.snapshots import (
    SnapshotRefusedError,
    SnapshotStore,
    SnapshotUnavailableError,
    build_searcher,
    fetch_shards,
    version_order,
)
from mess.runtime import kafka
from mess.runtime.deadletter import dead_letter

log = logging.getLogger(__name__)

DeadLetterSink = Callable[[TrackFailed], Awaitable[None]]
SwapListener = Callable[[SnapshotSearcher], None]

# How long start-up waits for the event subscription to be positioned before
# reading LATEST, so an event published in between is not missed.
_POSITION_WAIT_S = 5.0
_LETTERS_STOP_S = 5.0
_REFUSALS_KEPT = 64


@dataclass(frozen=True)
class EventOrigin:
    """Where an announcing SnapshotPublished came from, for its dead letter if the snapshot is refused."""

    raw: bytes | None
    key: bytes | None
    partition: int
    offset: int


@dataclass(frozen=True)
class Announcement:
    version: str
    manifest_uri: str
    source: str  # "event", "latest" or "start"
    origins: tuple[EventOrigin, ...] = ()  # every event that announced this version while it waited


class SnapshotFollower:
    def __init__(
        self,
        settings: Settings,
        store: SnapshotStore,
        metrics: QueryMetrics,
        dead_letters: DeadLetterSink | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._metrics = metrics
        self._dead_letters = dead_letters
        self._current: SnapshotSearcher | None = None
        self._wanted: Announcement | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._letters: list[asyncio.Task[None]] = []
        self._listeners: list[SwapListener] = []
        self.refused: dict[str, str] = {}
        self.swapped = asyncio.Condition()

    # --- what serves ---------------------------------------------------------

    @property
    def current(self) -> SnapshotSearcher | None:
        return self._current

    @property
    def ready(self) -> bool:
        return self._current is not None

    def on_swap(self, listener: SwapListener) -> None:
        self._listeners.append(listener)

    async def wait_for_version(self, version: str, timeout_s: float) -> SnapshotSearcher:
        """Wait until ``version`` (or a newer one) serves."""
        async with asyncio.timeout(timeout_s), self.swapped:
            await self.swapped.wait_for(
                lambda: self._current is not None and version_order(self._current.version) >= version_order(version)
            )
        assert self._current is not None
        return self._current

    # --- announcements -------------------------------------------------------

    def announce(self, version: str, manifest_uri: str, source: str, origin: EventOrigin | None = None) -> None:
        """Ask for ``version`` to be loaded; only ever called with a version and location already checked
        (``check_snapshot_location``), so nothing unchecked is ranked."""
        current = self._current
        if current is not None and version_order(version) <= version_order(current.version):
            return
        if version in self.refused:
            if origin is not None:
                self._dead_letter(origin, "bad_snapshot", f"snapshot {version} was refused: {self.refused[version]}")
            return
        origins = (origin,) if origin is not None else ()
        wanted = self._wanted
        if wanted is not None and wanted.version == version:
            # Announced again before its load began: each announcing event gets the outcome.
            self._wanted = Announcement(version, wanted.manifest_uri, wanted.source, wanted.origins + origins)
        elif wanted is None or version_order(version) > version_order(wanted.version):
            self._wanted = Announcement(version, manifest_uri, source, origins)
            self._wake.set()

    def _announce_event(self, raw: bytes | None, key: bytes | None, partition: int, offset: int) -> None:
        origin = EventOrigin(raw, key, partition, offset)
        try:
            # ValueError too: an oversized message is refused before pydantic sees it.
            event = SnapshotPublished.from_bytes(raw or b"")
        except (ValidationError, ValueError) as exc:
            self._metrics.snapshot_events_bad.inc()
            log.error("malformed SnapshotPublished at partition %d offset %d: %s", partition, offset, exc)
            self._dead_letter(origin, "malformed_event", f"SnapshotPublished does not validate: {exc}")
            return
        try:
            # Only the indexer's own folder for exactly this version, in our bucket, is ever read: an event
            # pointing anywhere else (another bucket, another prefix, another version's folder) or naming a
            # version the indexer would not write is refused here, before it is ranked against anything.
            check_snapshot_location(event.version, event.manifest_uri, self._store.bucket)
        except SnapshotCheckError as exc:
            self._metrics.snapshot_events_bad.inc()
            self._metrics.snapshot_refused.labels(exc.reason).inc()
            log.error("SnapshotPublished at partition %d offset %d refused: %s", partition, offset, exc)
            self._dead_letter(origin, "bad_snapshot", f"SnapshotPublished refused: {exc}")
            return
        self.announce(event.version, event.manifest_uri, "event", origin)

    def _dead_letter(self, origin: EventOrigin, kind: str, error: str) -> None:
        """Send the dead letter in the background: the event loop of the follower must not wait on the broker."""
        if self._dead_letters is None:
            return
        letter = dead_letter(
            stage="query",
            error_kind=kind,
            error=error,
            raw=origin.raw,
            key=origin.key,
            topic=self._settings.stack.topics.index_snapshots,
            partition=origin.partition,
            offset=origin.offset,
        )
        task: asyncio.Task[None] = asyncio.ensure_future(self._dead_letters(letter))
        self._letters.append(task)
        task.add_done_callback(self._forget_letter)

    def _forget_letter(self, task: asyncio.Task[None]) -> None:
        if task in self._letters:
            self._letters.remove(task)

    # --- tasks ---------------------------------------------------------------

    async def start(self) -> None:
        positioned = asyncio.Event()
        if self._settings.snapshot_events:
            self._spawn(self._follow_events(positioned))
            try:
                async with asyncio.timeout(_POSITION_WAIT_S):
                    await positioned.wait()
            except TimeoutError:
                log.warning("snapshot events not subscribed within %.0fs; relying on LATEST polls", _POSITION_WAIT_S)
        self._spawn(self._load_loop())
        self._spawn(self._poll_latest())

    async def stop(self, within_s: float = _LETTERS_STOP_S) -> None:
        """Stop following; dead letters on their way get up to ``within_s`` to reach the broker."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        letters = list(self._letters)
        if letters:
            _, late = await asyncio.wait(letters, timeout=within_s)
            for task in late:
                log.error("a dead letter was still being sent at shutdown; it is lost")
                task.cancel()
            await asyncio.gather(*letters, return_exceptions=True)
        log.info("snapshot follower stopped")

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        self._tasks.append(asyncio.ensure_future(coroutine))

    async def _poll_latest(self) -> None:
        while True:
            try:
                version = await self._store.read_latest()
            except SnapshotUnavailableError as exc:
                log.warning("cannot read LATEST: %s", exc)
            else:
                if version is not None and snapshot_number(version) is None:
                    self._metrics.snapshot_refused.labels("version").inc()
                    log.error("LATEST holds %r, which is not a snapshot version; ignored", version[:140])
                elif version is not None:
                    uri = f"s3://{self._store.bucket}/{manifest_key(version)}"
                    self.announce(version, uri, "latest")
            await asyncio.sleep(self._settings.snapshot_poll_s)

    async def _follow_events(self, positioned: asyncio.Event) -> None:
        topic = self._settings.stack.topics.index_snapshots
        while True:
            consumer = kafka.consumer(
                self._settings.stack,
                group_id=None,  # every replica reads every event; nothing is committed
                client_id=f"mess-query-{uuid.uuid4().hex[:8]}",
                enable_auto_commit=False,
                auto_offset_reset="latest",
                request_timeout_ms=self._settings.kafka_timeout_ms * 2,
            )
            try:
                await consumer.start()
                await consumer.topics()  # fills the metadata cache
                partitions = consumer.partitions_for_topic(topic)
                if not partitions:
                    raise KafkaError(f"topic {topic} does not exist")
                assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
                consumer.assign(assigned)
                await consumer.seek_to_end(*assigned)
                for tp in assigned:
                    await consumer.position(tp)
                positioned.set()
                log.info("following %s on %d partitions", topic, len(assigned))
                async for record in consumer:
                    self._announce_event(record.value, record.key, record.partition, record.offset)
            except (KafkaError, OSError) as exc:
                positioned.set()
                log.warning("snapshot events unavailable (%s); retrying, LATEST polls continue", exc)
            finally:
                await consumer.stop()
            await asyncio.sleep(self._settings.broker_retry_s)

    async def _load_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while (target := self._wanted) is not None:
                self._wanted = None
                await self._load(target)

    async def _load(self, target: Announcement) -> None:
        current = self._current
        if current is not None and version_order(target.version) <= version_order(current.version):
            return
        started = time.perf_counter()
        try:
            if not await self._agrees_with_latest(target):
                return
            manifest = await self._store.read_manifest(target.version)
            files = await fetch_shards(self._store, manifest, self._store.bucket)
            searcher = await asyncio.to_thread(
                build_searcher, manifest, files, current, self._settings.canary_rows, self._settings.canary_k
            )
        except SnapshotRefusedError as exc:
            self._metrics.snapshot_refused.labels(exc.reason).inc()
            self._remember_refusal(target.version, str(exc))
            log.error(
                "snapshot %s refused (%s): %s; still serving %s",
                target.version,
                exc.reason,
                exc.detail,
                current.version if current else "nothing",
            )
            # A refusal is final (never retried), so the events that announced it are poison.
            for origin in target.origins:
                self._dead_letter(origin, "bad_snapshot", f"snapshot {target.version} refused: {exc}")
            return
        except SnapshotUnavailableError as exc:
            self._metrics.snapshot_load_errors.inc()
            log.warning("snapshot %s not loaded now, will retry: %s", target.version, exc)
            return
        except Exception:
            # A bug or an unforeseen library error must not kill the loader task:
            # log it, keep serving, try again at the next announcement.
            self._metrics.snapshot_load_errors.inc()
            log.exception("snapshot %s failed to load unexpectedly; still serving the old one", target.version)
            return
        keep = {p for f in files for p in f.paths()}
        await self._swap(searcher, keep)
        elapsed = time.perf_counter() - started
        self._metrics.snapshot_load_seconds.observe(elapsed)
        log.info(
            "serving snapshot %s (%d vectors in %d shards, from %s) after %.2fs; was %s",
            searcher.version,
            searcher.vector_count,
            len(searcher.shards),
            target.source,
            elapsed,
            current.version if current else "nothing",
        )

    async def _agrees_with_latest(self, target: Announcement) -> bool:
        """Whether ``target`` is what LATEST names now; raises SnapshotUnavailableError when LATEST cannot be read.

        The indexer moves LATEST before it announces, so a snapshot ahead of
        LATEST (or announced while LATEST names no snapshot) was published by
        nobody: it is refused and its events dead-lettered, but not remembered
        as refused, because the indexer may yet publish that version for real.
        One behind LATEST is merely late. Either way LATEST itself is
        announced, so a version that displaced the real one while it waited
        costs no time.
        """
        latest = await self._store.read_latest()
        agreement = agreement_with_latest(target.version, latest)
        if agreement is LatestAgreement.CURRENT:
            return True
        if agreement is LatestAgreement.SUPERSEDED:
            log.info("snapshot %s is superseded by LATEST %s; not loaded", target.version, latest)
        else:
            self._metrics.snapshot_refused.labels("latest").inc()
            detail = f"snapshot {target.version} is not what LATEST names ({(latest or 'nothing')[:140]!r})"
            log.error("snapshot %s refused: %s", target.version, detail)
            for origin in target.origins:
                self._dead_letter(origin, "bad_snapshot", detail)
        if latest is not None and snapshot_number(latest) is not None:
            self.announce(latest, f"s3://{self._store.bucket}/{manifest_key(latest)}", "latest")
        return False

    def _remember_refusal(self, version: str, reason: str) -> None:
        """A refusal is final for its version; bounded, so a flood of refusals cannot grow it for ever."""
        self.refused[version] = reason
        while len(self.refused) > _REFUSALS_KEPT:
            del self.refused[next(iter(self.refused))]

    async def _swap(self, searcher: SnapshotSearcher, keep: set[Path]) -> None:
        self._current = searcher  # the swap: one reference
        self._metrics.snapshot_swaps.inc()
        self._metrics.snapshot_vectors.set(searcher.vector_count)
        self._metrics.snapshot_created.set(searcher.manifest.created_at.timestamp())
        if searcher.version.isdigit():
            self._metrics.snapshot_version.set(int(searcher.version))
        for listener in self._listeners:
            listener(searcher)
        removed = self._store.forget_except(keep)
        if removed:
            log.debug("removed %d cached snapshot files no longer served", removed)
        async with self.swapped:
            self.swapped.notify_all()
