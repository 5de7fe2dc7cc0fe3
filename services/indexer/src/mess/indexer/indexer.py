"""The live indexer: consume, apply, snapshot, repeat.

Start-up loads LATEST (verifying every checksum) or, on a bucket with none,
publishes the known-empty snapshot; then seeks the feed to the snapshot's
offsets and re-announces it (a SnapshotPublished lost to a crash right after
LATEST moved is so sent again; readers treat a repeat as a no-op).

The loop applies each Kafka batch to ``TrackVectors`` (``feed_loop``) and,
when the ``schedule`` says a snapshot is due, captures the dirty shards and
hands them to the ``publisher``, which builds and uploads in a worker thread
while consumption goes on. Only one publish runs at a time; a
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
import logging
import time

import faiss
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from botocore.exceptions import BotoCoreError, ClientError

from mess.indexer.config import Settings
from mess.indexer.feed import TrackEventFeed
from mess.indexer.feed_loop import FeedLoop
from mess.indexer.metrics import IndexerMetrics
from mess.indexer.publisher import SnapshotPublisher, s3_client
from mess.indexer.schedule import SnapshotSchedule
from mess.indexer.shard_index import check_factory, factory_fits
from mess.indexer.snapshot_store import (
    LatestMovedError,
    LatestPointer,
    LeaseHeldError,
    SnapshotStore,
    StoredManifest,
)
from mess.indexer.snapshots import Checkpoint, StepHook, load_snapshot
from mess.indexer.track_vectors import ModelGuard, TrackVectors
from mess.runtime import kafka

log = logging.getLogger(__name__)


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
        self.schedule = SnapshotSchedule(settings)
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._feed: TrackEventFeed | None = None
        self._loop: FeedLoop | None = None
        self._publisher: SnapshotPublisher | None = None
        self.vectors: TrackVectors | None = None
        self.base: StoredManifest | None = None
        self.latest: LatestPointer | None = None
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
        store = SnapshotStore(await asyncio.to_thread(s3_client, self.settings), stack.bucket)
        self._producer = kafka.producer(stack, client_id="mess-indexer")
        await self._producer.start()
        self._consumer = kafka.consumer(
            stack,
            client_id="mess-indexer",
            group_id=self.settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await self._consumer.start()
        self._feed = TrackEventFeed(
            self._consumer, [self.topics.tracks_embedded, self.topics.tracks_removed, self.topics.tracks_added]
        )
        self._loop = FeedLoop(
            self.topics, self._feed, self._producer, self.metrics, self.schedule, self.settings.poll_max_records
        )
        self._publisher = SnapshotPublisher(
            self.settings, self.metrics, store, self._producer, self._feed.commit, self._step_hook
        )
        latest = await asyncio.to_thread(store.read_latest)
        if latest is None:
            latest = await self.publisher.publish_known_empty()
        await self._load(latest)
        if self.base is not None:
            await self.publisher.announce(self.base, rebuilt_shards=0)
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
        if self._publisher is not None and not await self.publisher.wait(deadline):
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
        while self.schedule.pending:
            if self.vectors is None or self.vectors.model is None:
                log.info("%d pending facts of never-indexed tracks wait for the first vector", self.schedule.pending)
                return
            if time.monotonic() >= deadline:
                log.error("no time left for a final snapshot; a restart replays %d changes", self.schedule.pending)
                return
            self._begin_publish()
            if not await self._wait_for_publish(deadline):
                return
            if self.schedule.pending == 0 and self.latest is not None:
                log.info("final snapshot %s published; nothing is left to replay", self.latest.version)
                return
            if self.latest_moved:
                log.warning("LATEST moved under the final snapshot; the next start adopts the other writer's")
                return
            await asyncio.sleep(min(self.settings.retry_s, max(0.0, deadline - time.monotonic())))

    async def close(self) -> None:
        """After ``run`` returned: an in-flight publish gets a short while to
        land (it is crash-safe either way), then the clients close."""
        if self._publisher is not None:
            await self._publisher.settle(timeout_s=20)
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
        return self.publisher.store

    @property
    def publisher(self) -> SnapshotPublisher:
        if self._publisher is None:
            raise RuntimeError("the indexer is not started")
        return self._publisher

    @property
    def feed(self) -> TrackEventFeed:
        if self._feed is None:
            raise RuntimeError("the indexer is not started")
        return self._feed

    @property
    def feed_loop(self) -> FeedLoop:
        if self._loop is None:
            raise RuntimeError("the indexer is not started")
        return self._loop

    @property
    def state(self) -> TrackVectors:
        if self.vectors is None:
            raise RuntimeError("no snapshot is loaded")
        return self.vectors

    # --- loading and adopting -----------------------------------------------

    async def _load(self, latest: LatestPointer) -> None:
        """Replace the state with snapshot ``latest`` and seek to its offsets."""
        self.vectors = self.feed_loop.state = None  # let the old state go before the new one loads
        base_manifest = await asyncio.to_thread(self.store.read_manifest, latest.version)
        guard = ModelGuard(base_manifest.manifest.model, self.settings.model)
        vectors = TrackVectors(self.settings.shard_count, guard)
        stored = await asyncio.to_thread(load_snapshot, self.store, latest.version, vectors)
        if vectors.dim is not None:
            check_factory(self.settings.approximate_index, vectors.dim)
        self._mark_stale_index_types(stored, vectors)
        await self.feed.seek(stored.manifest.offsets)
        self.vectors, self.base, self.latest = vectors, stored, latest
        self.feed_loop.state = vectors
        self.feed_loop.reset()
        self.schedule.reset(len(vectors.dirty_shards()))
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

    # --- the loop -----------------------------------------------------------

    async def run(self) -> None:
        while not self._stopping.is_set():
            await self.feed_loop.step(timeout_ms=200)
            await self._after_publish()
            if self.publisher.in_flight is None:
                if self.schedule.due(model_known=self.state.model is not None):
                    self._begin_publish()
                elif time.monotonic() >= self._next_latest_check:
                    await self._check_latest()
            self._update_gauges()

    # --- snapshots ----------------------------------------------------------

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
        self.publisher.begin(checkpoint, changes=self.schedule.taken())

    async def _after_publish(self) -> None:
        finished = self.publisher.finished()
        if finished is None:
            return
        self.latest_moved = isinstance(finished.error, LatestMovedError)
        if finished.published is not None:
            self.base, self.latest = finished.published.stored, finished.published.latest
            self.last_publish_ok = True
            return
        # The captured shards were marked clean; they are not in any snapshot.
        self.state.mark_dirty(finished.shards)
        self.schedule.failed(finished.changes)
        if self.latest_moved:
            if not self._stopping.is_set():  # a stopping indexer leaves adopting to its successor
                await self._check_latest()
        elif not isinstance(finished.error, LeaseHeldError):
            self.last_publish_ok = False

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
            self.schedule.pending,
        )
        await self._load(latest)
        self.metrics.adoptions.inc()

    def _update_gauges(self) -> None:
        if self.vectors is not None:
            self.metrics.vectors.set(len(self.vectors))
            self.metrics.shards.set(self.vectors.shard_count)
            self.metrics.dirty_shards.set(len(self.vectors.dirty_shards()))
        self.metrics.pending_changes.set(self.schedule.pending)
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
