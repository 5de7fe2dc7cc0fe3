"""Publishing snapshots: under the lease, in a worker thread, then announced.

One publish runs at a time. The caller captures a ``Checkpoint`` between two
Kafka batches and hands it to ``begin``; the build and upload run in a daemon
thread while consumption goes on, and ``finished`` reports the outcome once
(the caller puts a failed publish's shards and changes back). A published
snapshot is announced (SnapshotPublished) and its offsets are copied to the
consumer group for lag tools.
"""

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
import numpy as np
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from mess.contracts.events import SnapshotCounts, SnapshotPublished
from mess.indexer.config import Settings
from mess.indexer.metrics import IndexerMetrics
from mess.indexer.snapshot_store import (
    LatestMovedError,
    LatestPointer,
    LeaseHeldError,
    SnapshotStore,
    StoredManifest,
)
from mess.indexer.snapshots import BuildOptions, Checkpoint, Offsets, PublishedSnapshot, StepHook, publish_snapshot
from mess.runtime import kafka

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

T = TypeVar("T")

CommitOffsets = Callable[[Offsets], Awaitable[None]]


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
class InFlight:
    task: "asyncio.Task[PublishedSnapshot]"
    shards: list[int]
    changes: int


@dataclass(frozen=True)
class Finished:
    """A publish's outcome: ``published``, or the ordinary ``error`` it failed with."""

    shards: list[int]
    changes: int
    published: PublishedSnapshot | None
    error: Exception | None


class SnapshotPublisher:
    def __init__(
        self,
        settings: Settings,
        metrics: IndexerMetrics,
        store: SnapshotStore,
        producer: AIOKafkaProducer,
        commit: CommitOffsets,
        step_hook: StepHook | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self._producer = producer
        self._commit = commit
        self._options = build_options(settings)
        self._step_hook = step_hook
        self.in_flight: InFlight | None = None

    async def publish_known_empty(self) -> LatestPointer:
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

    async def announce(self, stored: StoredManifest, rebuilt_shards: int) -> None:
        event = snapshot_event(self.store, stored, rebuilt_shards)
        await kafka.publish(kafka.via_producer(self._producer), self.settings.stack.topics.index_snapshots, event)

    def begin(self, checkpoint: Checkpoint, changes: int) -> None:
        """Publish ``checkpoint`` (holding ``changes`` changes) in the background."""
        if self.in_flight is not None:
            raise RuntimeError("a snapshot is being published already")
        shards = [capture.shard for capture in checkpoint.captures]
        task = asyncio.create_task(self._publish(checkpoint), name="indexer-publish")
        self.in_flight = InFlight(task, shards, changes)

    async def wait(self, deadline: float) -> bool:
        """Let a snapshot being written complete (until ``deadline``); False when it is still running."""
        in_flight = self.in_flight
        if in_flight is None:
            return True
        await asyncio.wait({in_flight.task}, timeout=max(0.0, deadline - time.monotonic()))
        return in_flight.task.done()

    def finished(self) -> Finished | None:
        """The outcome of a publish that has ended, once; None while none has.
        A crash (a BaseException, or its stand-in in tests) is raised."""
        in_flight = self.in_flight
        if in_flight is None or not in_flight.task.done():
            return None
        self.in_flight = None
        error = in_flight.task.exception()
        if error is not None and not isinstance(error, Exception):
            raise error
        if error is None:
            return Finished(in_flight.shards, in_flight.changes, in_flight.task.result(), None)
        if isinstance(error, LatestMovedError):
            self.metrics.snapshot_failures.labels("latest_moved").inc()
        elif isinstance(error, LeaseHeldError):
            self.metrics.snapshot_failures.labels("lease_held").inc()
            log.info("not publishing yet: %s", error)
        else:
            self.metrics.snapshot_failures.labels(type(error).__name__).inc()
            log.error("publishing a snapshot failed; retrying in %.0fs", self.settings.retry_s, exc_info=error)
        return Finished(in_flight.shards, in_flight.changes, None, error)

    async def settle(self, timeout_s: float) -> None:
        """Give an in-flight publish a short while to land (it is crash-safe either way) and forget it."""
        in_flight, self.in_flight = self.in_flight, None
        if in_flight is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError, asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(in_flight.task), timeout=timeout_s)

    async def _publish(self, checkpoint: Checkpoint) -> PublishedSnapshot:
        published = await self._publish_under_lease(checkpoint)
        await self.announce(published.stored, published.rebuilt_shards)
        try:
            await self._commit(published.stored.manifest.offsets)
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
        self._record(published)
        return published

    def _record(self, published: PublishedSnapshot) -> None:
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
