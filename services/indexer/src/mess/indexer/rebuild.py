"""The full rebuild: replay both topics from the beginning into a fresh snapshot.

Used to change the index type, the shard count or the model. The replay reads
the compacted embedded topic and the removed topic up to the end offsets seen
when it starts (later events are the live indexer's), applying them with the
same rules as the live indexer: later offset wins within a topic, whether or
not the broker has compacted yet, and ``occurred_at`` orders the two topics.
Every shard is built anew, nothing is referenced from older snapshots.

Events are not dead-lettered again: the live indexer did that when they first
arrived. Vectors of another model than the rebuild's are skipped and counted
(after a model switch they are the tracks not yet re-embedded).

The snapshot is published like any other (under the publish lease, LATEST
moved with a conditional write), so the query service keeps serving the old
one until this one lands, and a running live indexer notices the new LATEST
and adopts it with its offsets.
"""

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from mess.indexer.config import Settings
from mess.indexer.decoding import Malformed, Removal, decode
from mess.indexer.feed import TrackEventFeed
from mess.indexer.indexer import build_options, s3_client, snapshot_event
from mess.indexer.shard_index import check_factory
from mess.indexer.snapshot_store import LeaseHeldError, PublishLease, SnapshotStore
from mess.indexer.snapshots import Checkpoint, PublishedSnapshot, publish_snapshot
from mess.indexer.track_vectors import ModelGuard, Outcome, TrackVectors

log = logging.getLogger(__name__)


@dataclass
class RebuildReport:
    version: str
    vectors: int
    shards: int
    model: str | None
    index_factories: list[str]
    records: int
    outcomes: Counter[str] = field(default_factory=Counter)
    replay_seconds: float = 0.0
    publish_seconds: float = 0.0

    def lines(self) -> list[str]:
        lines = [
            f"published snapshot {self.version}: {self.vectors} vectors in {self.shards} shards, "
            f"model {self.model or 'none'}, index {', '.join(sorted(set(self.index_factories))) or 'none'}",
            f"replayed {self.records} records in {self.replay_seconds:.1f}s, published in {self.publish_seconds:.1f}s",
        ]
        lines += [f"  {outcome}: {count}" for outcome, count in sorted(self.outcomes.items())]
        return lines


def rebuild_settings(settings: Settings, *, index_type: str | None, model: str | None, shards: int | None) -> Settings:
    """The settings with the command's overrides, validated like the environment's."""
    updates: dict[str, object] = {}
    if index_type is not None:
        updates["approximate_index"] = index_type
    if model is not None:
        updates["model"] = model
    if shards is not None:
        updates["shard_count"] = shards
    return Settings.model_validate({**settings.model_dump(), **updates})


async def rebuild(settings: Settings, *, lease_wait_seconds: float = 900.0) -> RebuildReport:
    store = SnapshotStore(await asyncio.to_thread(s3_client, settings), settings.stack.bucket)
    latest = await asyncio.to_thread(store.read_latest)
    model = settings.model
    if model is None and latest is not None:
        current = await asyncio.to_thread(store.read_manifest, latest.version)
        if current.manifest.model is not None:
            model = current.manifest.model.fingerprint()
    vectors = TrackVectors(settings.shard_count, ModelGuard(None, model))
    topics = settings.stack.topics
    # No group: a rebuild reads everything and commits nothing.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.stack.kafka_bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    outcomes: Counter[str] = Counter()
    records = 0
    started = time.perf_counter()
    try:
        feed = TrackEventFeed(consumer, [topics.tracks_embedded, topics.tracks_removed])
        await feed.seek({})
        ends = await feed.end_offsets()
        log.info("replaying %d records", sum(ends.values()))
        while not feed.caught_up_with(ends):
            batch = await feed.poll(timeout_ms=500, max_records=settings.poll_max_records)
            if not batch:
                await feed.skip_gaps()
            for record in batch:
                records += 1
                change = decode(record, topics.tracks_embedded)
                if isinstance(change, Malformed):
                    outcomes["malformed_event"] += 1
                elif isinstance(change, Removal):
                    outcomes[vectors.apply_removed(change.track_id, change.occurred_at_us)] += 1
                else:
                    outcome = vectors.apply_embedded(
                        change.track_id, change.model, change.vector, change.occurred_at_us
                    )
                    outcomes[outcome if outcome is not Outcome.MODEL_MISMATCH else "skipped_other_model"] += 1
                feed.advance(record)
        replay_seconds = time.perf_counter() - started
        if vectors.dim is not None:
            check_factory(settings.approximate_index, vectors.dim)
        checkpoint = Checkpoint(
            offsets=feed.offsets(),
            model=vectors.model,
            shard_count=vectors.shard_count,
            captures=vectors.capture(range(vectors.shard_count)) if vectors.model is not None else [],
            tuning_queries=vectors.sample(settings.tuning_queries),
            base=None,
            expect_latest=None,
            replace_any_latest=True,
        )
        del vectors  # the captures hold what the snapshot needs
        started = time.perf_counter()
        published = await _publish(store, settings, checkpoint, lease_wait_seconds)
        publish_seconds = time.perf_counter() - started
    finally:
        await consumer.stop()
    producer = AIOKafkaProducer(bootstrap_servers=settings.stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        event = snapshot_event(store, published.stored, published.rebuilt_shards)
        await producer.send_and_wait(topics.index_snapshots, event.to_bytes(), key=event.key().encode())
    finally:
        await producer.stop()
    manifest = published.stored.manifest
    return RebuildReport(
        version=manifest.version,
        vectors=manifest.vector_count,
        shards=manifest.shard_count,
        model=manifest.model.fingerprint() if manifest.model else None,
        index_factories=[s.index_factory for s in manifest.shards],
        records=records,
        outcomes=outcomes,
        replay_seconds=replay_seconds,
        publish_seconds=publish_seconds,
    )


async def _publish(
    store: SnapshotStore, settings: Settings, checkpoint: Checkpoint, lease_wait_seconds: float
) -> PublishedSnapshot:
    ttl = settings.publish_lease_s
    writer = f"rebuild:{settings.writer_id}"
    deadline = time.monotonic() + lease_wait_seconds
    lease: PublishLease | None = None
    while lease is None:
        try:
            lease = await asyncio.to_thread(store.acquire_lease, writer, ttl)
        except LeaseHeldError as exc:
            if time.monotonic() > deadline:
                raise
            log.info("waiting for the publish lease: %s", exc)
            await asyncio.sleep(1.0)
    try:
        published = await asyncio.to_thread(publish_snapshot, store, checkpoint, build_options(settings), lease, ttl)
        await asyncio.to_thread(store.prune, settings.keep_snapshots)
    finally:
        await asyncio.to_thread(store.release_lease, lease)
    return published
