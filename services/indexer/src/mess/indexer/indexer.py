"""The live indexer: consume, apply, snapshot, repeat.

Start-up loads LATEST (verifying every checksum) or, on a bucket with none,
publishes the known-empty snapshot; then seeks the feed to the snapshot's
offsets and re-announces it (a SnapshotPublished lost to a crash right after
LATEST moved is so sent again; readers treat a repeat as a no-op).

The loop applies each Kafka batch to ``TrackVectors`` and, after
``snapshot_every_changes`` changes or ``snapshot_interval_s`` after the
first pending one, captures the dirty shards and publishes a snapshot in a
worker thread while consumption goes on. Only one publish runs at a time; a
failed one marks its shards dirty again and is retried. When LATEST moves
under it (a rebuild published), the indexer drops its state and adopts the
new snapshot and its offsets.

Errors are crash-only beyond that: anything unexpected ends ``run`` and the
process; the next start resumes from LATEST, which is always consistent.

A graceful stop (SIGTERM, ``shut_down``) is not a crash: consumption stops
after the batch in hand, a snapshot being written completes, and one more
is published holding every change applied since, so the successor starts
exactly where this process stopped, with nothing to replay, and finds the
publish lease free.
"""

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
import faiss
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from botocore.exceptions import BotoCoreError, ClientError

from mess.contracts.events import SnapshotCounts, SnapshotPublished
from mess.indexer.config import Settings
from mess.indexer.decoding import Malformed, Removal, decode
from mess.indexer.feed import Record, TrackEventFeed
from mess.indexer.metrics import IndexerMetrics
from mess.indexer.shard_index import check_factory, factory_fits
from mess.indexer.snapshot_store import (
    LatestMovedError,
    LatestPointer,
    LeaseHeldError,
    SnapshotStore,
    StoredManifest,
)
from mess.indexer.snapshots import (
    BuildOptions,
    Checkpoint,
    PublishedSnapshot,
    StepHook,
    load_snapshot,
    publish_snapshot,
)
from mess.indexer.track_vectors import ModelGuard, Outcome, TrackVectors
from mess.runtime.deadletter import dead_letter

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

T = TypeVar("T")


def build_options(settings: Settings) -> BuildOptions:
    return BuildOptions(
        flat_threshold=settings.flat_threshold,
        approximate_index=settings.approximate_index,
        ef_construction=settings.hnsw_ef_construction,
        tuning_recall=settings.tuning_recall,
    )


def s3_client(settings: Settings) -> "S3Client":
    kwargs: dict[str, Any] = settings.stack.s3_client_kwargs()
    return boto3.client("s3", **kwargs)


def snapshot_event(store: SnapshotStore, published: StoredManifest, rebuilt_shards: int) -> SnapshotPublished:
    manifest = published.manifest
    return SnapshotPublished(
        version=manifest.version,
        manifest_uri=store.manifest_uri(manifest.version),
        counts=SnapshotCounts(
            vectors=manifest.vector_count, shards=manifest.shard_count, rebuilt_shards=rebuilt_shards
        ),
        model=manifest.model,
    )


async def in_daemon_thread(work: Callable[[], T], name: str) -> T:
    """Run blocking ``work`` in a thread of its own, like ``asyncio.to_thread``,
    except that the thread is a daemon: a snapshot publish that outlives the
    shutdown grace does not keep the process from exiting (it ends as a kill
    would end it, which the publish order makes safe)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():  # the waiter may have given up (cancelled) meanwhile
            outcome()

    def run() -> None:
        try:
            result = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task, as to_thread does
            error = exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(settle, lambda: future.set_exception(error))
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, lambda: future.set_result(result))

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future


@dataclass
class _InFlight:
    task: "asyncio.Task[PublishedSnapshot]"
    shards: list[int]
    changes: int


class Indexer:
    def __init__(
        self,
        settings: Settings,
        metrics: IndexerMetrics | None = None,
        *,
        step_hook: StepHook | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or IndexerMetrics()
        self.topics = settings.stack.topics
        self._step_hook = step_hook
        self._options = build_options(settings)
        self._store: SnapshotStore | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._feed: TrackEventFeed | None = None
        self.vectors: TrackVectors | None = None
        self.base: StoredManifest | None = None
        self.latest: LatestPointer | None = None
        self._pending = 0
        self._first_pending_at: float | None = None
        self._in_flight: _InFlight | None = None
        self._retry_at = 0.0
        self._next_latest_check = 0.0
        self._stopping = asyncio.Event()
        self.consuming = False
        self.last_publish_ok = True
        self.latest_moved = False  # the last publish failed because another writer moved LATEST

    # --- life cycle ---------------------------------------------------------

    async def start(self) -> None:
        if self.settings.faiss_threads:
            faiss.omp_set_num_threads(self.settings.faiss_threads)
        stack = self.settings.stack
        self._store = SnapshotStore(await asyncio.to_thread(s3_client, self.settings), stack.bucket)
        self._producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=stack.kafka_bootstrap,
            group_id=self.settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await self._consumer.start()
        self._feed = TrackEventFeed(self._consumer, [self.topics.tracks_embedded, self.topics.tracks_removed])
        latest = await asyncio.to_thread(self.store.read_latest)
        if latest is None:
            latest = await self._publish_known_empty()
        await self._load(latest)
        if self.base is not None:
            await self._announce(self.base, rebuilt_shards=0)
        self.consuming = True

    def request_stop(self) -> None:
        """Ask ``run`` to return after the current batch."""
        self._stopping.set()

    async def shut_down(self, run: "asyncio.Task[None]", grace_s: float) -> None:
        """Stop gracefully (SIGTERM), never taking longer than ``grace_s``.

        In order: ``run`` returns once the batch in hand is applied (nothing
        more is fetched); a snapshot being written completes; a final one is
        published holding every change applied since (files, manifest with
        the offsets, LATEST, SnapshotPublished, the group's offsets), releasing
        the lease; then the consumer and producer close. If ``run`` had ended
        on an error, nothing more is published (crash-only: the next start
        resumes from LATEST). Whatever the grace does not cover is left as a
        kill would leave it, which the publish order makes safe.
        """
        deadline = time.monotonic() + grace_s
        self.request_stop()
        log.info("stopping: consuming no more; publishing what is applied (up to %.0f s)", grace_s)
        try:
            await asyncio.wait({run}, timeout=grace_s)
            if not run.done():
                log.error("the consume loop did not stop within %.0f s; closing without a final snapshot", grace_s)
                run.cancel()
                await asyncio.wait({run})
            elif run.cancelled() or run.exception() is not None:
                # Crash-only: the state may be half-applied; only a publish
                # already under way (captured consistently) may still land.
                await self._wait_for_publish(deadline)
            elif await self._wait_for_publish(deadline):
                await self._publish_final_snapshot(deadline)
        finally:
            await self.abandon()

    async def _wait_for_publish(self, deadline: float) -> bool:
        """Let a snapshot being written complete (until ``deadline``) and take in
        its outcome; False when it is still running."""
        in_flight = self._in_flight
        if in_flight is not None:
            await asyncio.wait({in_flight.task}, timeout=max(0.0, deadline - time.monotonic()))
            if not in_flight.task.done():
                log.error(
                    "the snapshot being published did not finish in the shutdown grace; it is abandoned, and a "
                    "restart replays from LATEST (the lease it holds lapses after %.0f s)",
                    self.settings.publish_lease_s,
                )
                return False
        await self._after_publish()
        return True

    async def _publish_final_snapshot(self, deadline: float) -> None:
        """Publish the changes applied since the last snapshot, retrying (a held
        lease, a failed upload) while the grace lasts."""
        while self._pending:
            if self.vectors is None or self.vectors.model is None:
                log.info("%d pending tombstones of never-indexed tracks wait for the first vector", self._pending)
                return
            if time.monotonic() >= deadline:
                log.error("no time left for a final snapshot; a restart replays %d changes", self._pending)
                return
            self._begin_publish()
            if not await self._wait_for_publish(deadline):
                return
            if self._pending == 0 and self.latest is not None:
                log.info("final snapshot %s published; nothing is left to replay", self.latest.version)
                return
            if self.latest_moved:
                log.warning("LATEST moved under the final snapshot; the next start adopts the other writer's")
                return
            await asyncio.sleep(min(self.settings.retry_s, max(0.0, deadline - time.monotonic())))

    async def close(self) -> None:
        """After ``run`` returned: an in-flight publish gets a short while to
        land (it is crash-safe either way), then the clients close."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError, asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(in_flight.task), timeout=20)
        await self.abandon()

    async def abandon(self) -> None:
        """Close the clients without publishing or committing anything: what a
        killed process leaves behind (crash tests use this)."""
        self.consuming = False
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    @property
    def store(self) -> SnapshotStore:
        if self._store is None:
            raise RuntimeError("the indexer is not started")
        return self._store

    @property
    def feed(self) -> TrackEventFeed:
        if self._feed is None:
            raise RuntimeError("the indexer is not started")
        return self._feed

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("the indexer is not started")
        return self._producer

    @property
    def state(self) -> TrackVectors:
        if self.vectors is None:
            raise RuntimeError("no snapshot is loaded")
        return self.vectors

    # --- loading and adopting -----------------------------------------------

    async def _publish_known_empty(self) -> LatestPointer:
        """The first snapshot of a bucket: no vectors, no model, so the query
        service can become ready before anything is indexed."""
        checkpoint = Checkpoint(
            offsets={},
            model=None,
            shard_count=self.settings.shard_count,
            captures=[],
            tuning_queries=np.empty((0, 0), dtype=np.float32),
            base=None,
            expect_latest=None,
            replace_any_latest=False,
        )
        deadline = time.monotonic() + self.settings.publish_lease_s
        while True:
            try:
                published = await self._publish_under_lease(checkpoint)
                break
            except LeaseHeldError:
                # Another writer is publishing (a rebuild on a new bucket?): its
                # snapshot will do, or the lease frees up.
                if time.monotonic() > deadline:
                    raise
                latest = await asyncio.to_thread(self.store.read_latest)
                if latest is not None:
                    return latest
                await asyncio.sleep(1.0)
            except LatestMovedError:
                # Another writer published first; use theirs.
                latest = await asyncio.to_thread(self.store.read_latest)
                if latest is None:
                    raise
                return latest
        log.info("published the known-empty snapshot %s", published.latest.version)
        return published.latest

    async def _load(self, latest: LatestPointer) -> None:
        """Replace the state with snapshot ``latest`` and seek to its offsets."""
        self.vectors = None  # let the old state go before the new one loads
        base_manifest = await asyncio.to_thread(self.store.read_manifest, latest.version)
        guard = ModelGuard(base_manifest.manifest.model, self.settings.model)
        vectors = TrackVectors(self.settings.shard_count, guard)
        stored = await asyncio.to_thread(load_snapshot, self.store, latest.version, vectors)
        if vectors.dim is not None:
            check_factory(self.settings.approximate_index, vectors.dim)
        self._mark_stale_index_types(stored, vectors)
        await self.feed.seek(stored.manifest.offsets)
        self.vectors, self.base, self.latest = vectors, stored, latest
        self._pending = len(vectors.dirty_shards())
        self._first_pending_at = time.monotonic() if self._pending else None
        self._update_gauges()
        log.info(
            "loaded snapshot %s: %d vectors in %d shards, model %s",
            latest.version,
            len(vectors),
            vectors.shard_count,
            vectors.model.fingerprint() if vectors.model else "none yet",
        )

    def _mark_stale_index_types(self, stored: StoredManifest, vectors: TrackVectors) -> None:
        """A shard whose index type the current settings would not choose is
        rebuilt at the next snapshot (settings changed since it was built)."""
        if vectors.model is None or stored.manifest.shard_count != vectors.shard_count:
            return  # nothing to build yet, or every shard is dirty already (re-sharded)
        present = {shard.shard: shard for shard in stored.manifest.shards}
        for number in range(vectors.shard_count):
            shard = present.get(number)
            fits = shard is not None and factory_fits(
                shard.index_factory,
                len(vectors.shards[number].vectors),
                flat_threshold=self.settings.flat_threshold,
                approximate_factory=self.settings.approximate_index,
            )
            if shard is not None and not fits:
                log.warning(
                    "shard %d is %s, which the settings (%s) would not choose; it is rebuilt at the next snapshot",
                    number,
                    shard.index_factory,
                    self.settings.approximate_index,
                )
            if not fits:
                vectors.mark_dirty([number])

    async def _announce(self, stored: StoredManifest, rebuilt_shards: int) -> None:
        event = snapshot_event(self.store, stored, rebuilt_shards)
        await self.producer.send_and_wait(self.topics.index_snapshots, event.to_bytes(), key=event.key().encode())

    # --- the loop -----------------------------------------------------------

    async def run(self) -> None:
        while not self._stopping.is_set():
            records = await self.feed.poll(timeout_ms=200, max_records=self.settings.poll_max_records)
            for record in records:
                await self._apply(record)
            await self._after_publish()
            if self._in_flight is None:
                if self._snapshot_due():
                    self._begin_publish()
                elif time.monotonic() >= self._next_latest_check:
                    await self._check_latest()
            self._update_gauges()

    async def _apply(self, record: Record) -> None:
        change = decode(record, self.topics.tracks_embedded)
        outcome: str
        if isinstance(change, Malformed):
            outcome = await self._dead_letter(record, "malformed_event", change.reason)
        elif isinstance(change, Removal):
            outcome = self.state.apply_removed(change.track_id, change.occurred_at_us)
        else:
            outcome = self.state.apply_embedded(change.track_id, change.model, change.vector, change.occurred_at_us)
            if outcome is Outcome.MODEL_MISMATCH:
                await self._dead_letter(
                    record,
                    "model_mismatch",
                    f"vector from model {change.model.fingerprint()}, but the index holds "
                    f"{self.state.guard.describe_expected()}; rebuild the index for that model to switch",
                    change.track_id,
                )
            elif outcome is Outcome.ZERO_VECTOR:
                await self._dead_letter(record, "zero_vector", "the vector has no direction (norm 0)", change.track_id)
        self.feed.advance(record)
        self.metrics.events.labels(record.topic, outcome).inc()
        if isinstance(outcome, Outcome) and outcome.changed:
            self._pending += 1
            if self._first_pending_at is None:
                self._first_pending_at = time.monotonic()

    async def _dead_letter(self, record: Record, error_kind: str, error: str, track_id: str | None = None) -> str:
        failed = dead_letter(
            stage="index",
            error_kind=error_kind,
            error=error,
            raw=record.value,
            key=record.key,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            track_id=track_id,
        )
        # Sent before the offset can reach a snapshot, so a crash re-sends it
        # rather than losing it.
        await self.producer.send_and_wait(self.topics.tracks_failed, failed.to_bytes(), key=failed.key().encode())
        self.metrics.dead_letters.labels(error_kind).inc()
        log.warning("dead-lettered %s[%d]@%d: %s", record.topic, record.partition, record.offset, error)
        return error_kind

    # --- snapshots ----------------------------------------------------------

    def _snapshot_due(self) -> bool:
        if self._pending == 0 or time.monotonic() < self._retry_at:
            return False
        if self.state.model is None:
            # Only tombstones of never-indexed tracks can be pending before the
            # first vector; with no dimension there is no shard to put them in,
            # so they wait (their offsets are replayed after a restart).
            return False
        if self._pending >= self.settings.snapshot_every_changes:
            return True
        waited = time.monotonic() - (self._first_pending_at or time.monotonic())
        return waited >= self.settings.snapshot_interval_s

    def _checkpoint(self) -> Checkpoint:
        vectors = self.state
        base = self.base
        shards = set(vectors.dirty_shards())
        if vectors.model is not None:
            # Shards the previous snapshot cannot supply (it was the known-empty
            # one, or had another shard count) are built too.
            supplied = set()
            if base is not None and base.manifest.shard_count == vectors.shard_count:
                supplied = {s.shard for s in base.manifest.shards}
            shards |= set(range(vectors.shard_count)) - supplied
        ordered = sorted(shards)
        return Checkpoint(
            offsets=self.feed.offsets(),
            model=vectors.model,
            shard_count=vectors.shard_count,
            captures=vectors.capture(ordered),
            tuning_queries=vectors.sample(self.settings.tuning_queries),
            base=base,
            expect_latest=self.latest.version if self.latest else None,
        )

    def _begin_publish(self) -> None:
        checkpoint = self._checkpoint()
        shards = [capture.shard for capture in checkpoint.captures]
        task = asyncio.create_task(self._publish(checkpoint), name="indexer-publish")
        self._in_flight = _InFlight(task, shards, self._pending)
        self._pending = 0
        self._first_pending_at = None

    async def _publish(self, checkpoint: Checkpoint) -> PublishedSnapshot:
        published = await self._publish_under_lease(checkpoint)
        await self._announce(published.stored, published.rebuilt_shards)
        try:
            await self.feed.commit(published.stored.manifest.offsets)
        except KafkaError as exc:
            # Secondary: the snapshot is the checkpoint, the group only mirrors it.
            log.warning("committing the snapshot's offsets to the group failed: %s", exc)
        return published

    async def _publish_under_lease(self, checkpoint: Checkpoint) -> PublishedSnapshot:
        ttl = self.settings.publish_lease_s
        lease = await asyncio.to_thread(self.store.acquire_lease, self.settings.writer_id, ttl)
        hook = self._step_hook or (lambda step: None)
        try:
            published = await in_daemon_thread(
                functools.partial(publish_snapshot, self.store, checkpoint, self._options, lease, ttl, hook),
                name="indexer-publish",
            )
        except Exception:
            # A crash (or a BaseException standing in for one) keeps the lease
            # until it expires; an ordinary failure hands it back at once.
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.release_lease, lease)
            raise
        try:
            await asyncio.to_thread(self.store.prune, self.settings.keep_snapshots)
        except Exception:
            log.warning("retention failed; it runs again after the next snapshot", exc_info=True)
        await asyncio.to_thread(self.store.release_lease, lease)
        self._record_published(published)
        return published

    def _record_published(self, published: PublishedSnapshot) -> None:
        self.metrics.snapshot_build_seconds.observe(published.build_seconds)
        self.metrics.snapshot_upload_seconds.observe(published.upload_seconds)
        self.metrics.snapshot_uploaded_bytes.inc(published.uploaded_bytes)
        self.metrics.snapshots_published.inc()
        self.metrics.rebuilt_shards.inc(published.rebuilt_shards)
        for shard, recall in published.recalls.items():
            self.metrics.shard_recall.labels(str(shard)).set(recall)
        self.metrics.snapshot_version.set(int(published.latest.version))
        log.info(
            "published snapshot %s: %d vectors, %d shards rebuilt, %.1f MB uploaded, build %.2fs, upload %.2fs",
            published.latest.version,
            published.stored.manifest.vector_count,
            published.rebuilt_shards,
            published.uploaded_bytes / 1e6,
            published.build_seconds,
            published.upload_seconds,
        )

    async def _after_publish(self) -> None:
        in_flight = self._in_flight
        if in_flight is None or not in_flight.task.done():
            return
        self._in_flight = None
        error = in_flight.task.exception()
        if error is not None and not isinstance(error, Exception):
            raise error  # a crash (or its stand-in in tests) ends the indexer
        self.latest_moved = isinstance(error, LatestMovedError)
        if error is None:
            published = in_flight.task.result()
            self.base, self.latest = published.stored, published.latest
            self.last_publish_ok = True
            return
        # The captured shards were marked clean; they are not in any snapshot.
        self.state.mark_dirty(in_flight.shards)
        self._pending += in_flight.changes
        self._first_pending_at = self._first_pending_at or time.monotonic()
        self._retry_at = time.monotonic() + self.settings.retry_s
        if isinstance(error, LatestMovedError):
            self.metrics.snapshot_failures.labels("latest_moved").inc()
            if not self._stopping.is_set():  # a stopping indexer leaves adopting to its successor
                await self._check_latest()
        elif isinstance(error, LeaseHeldError):
            self.metrics.snapshot_failures.labels("lease_held").inc()
            log.info("not publishing yet: %s", error)
        else:
            self.metrics.snapshot_failures.labels(type(error).__name__).inc()
            self.last_publish_ok = False
            log.error("publishing a snapshot failed; retrying in %.0fs", self.settings.retry_s, exc_info=error)

    async def _check_latest(self) -> None:
        """Adopt a snapshot another writer (a rebuild) published; rewind logs the broker lost."""
        self._next_latest_check = time.monotonic() + self.settings.latest_check_s
        try:
            rewound = await self.feed.rewind_lost_logs()
        except KafkaError as exc:
            log.warning("could not read the end offsets: %s", exc)
        else:
            self.metrics.logs_rewound.inc(len(rewound))
        try:
            latest = await asyncio.to_thread(self.store.read_latest)
        except (BotoCoreError, ClientError) as exc:
            # Only a check; a flaky S3 must not stop consumption. Publishing
            # reads LATEST again anyway.
            log.warning("could not read LATEST: %s", exc)
            return
        if latest is None or (self.latest is not None and latest.version == self.latest.version):
            return
        log.warning(
            "LATEST moved to %s (another writer published); adopting it and its offsets, dropping %d pending changes",
            latest.version,
            self._pending,
        )
        await self._load(latest)
        self.metrics.adoptions.inc()

    def _update_gauges(self) -> None:
        if self.vectors is not None:
            self.metrics.vectors.set(len(self.vectors))
            self.metrics.shards.set(self.vectors.shard_count)
            self.metrics.dirty_shards.set(len(self.vectors.dirty_shards()))
        self.metrics.pending_changes.set(self._pending)
        if self.latest is not None:
            self.metrics.snapshot_version.set(int(self.latest.version))
        if self._feed is not None:
            for topic, lag in self.feed.lag().items():
                self.metrics.lag.labels(topic).set(lag)

    # --- for tests and the health route --------------------------------------

    async def readiness(self) -> dict[str, bool]:
        return {
            "snapshot_loaded": self.base is not None,
            "consuming": self.consuming,
            "publishing": self.last_publish_ok,
        }
