"""The full rebuild: replay the topics from the beginning into a fresh snapshot.

Used to change the index type, the shard count or the model. The registry's
facts come first: those saved in LATEST (the added topic keeps only 7 days),
then the added and removed topics read to their ends. Then the compacted
embedded topic is replayed up to the end offsets seen when the rebuild
started (later events are the live indexer's), with the live indexer's rules
(``feed_loop.apply_change``): later offset wins within the topic, whether or
not the broker has compacted yet, and an embedding counts only if the
track's latest fact is "added" with its sha256. As the facts were read after
those ends were taken, every embedding's TrackAdded is already known.
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

from aiokafka import TopicPartition

from mess.indexer.config import Settings
from mess.indexer.decoding import Malformed, decode
from mess.indexer.feed import Record, TrackEventFeed
from mess.indexer.feed_loop import CATCH_UP_EMPTY_POLLS, CATCH_UP_POLL_MS, apply_change
from mess.indexer.publisher import build_options, s3_client, snapshot_event
from mess.indexer.shard_index import check_factory
from mess.indexer.snapshot_store import LeaseHeldError, PublishLease, SnapshotStore
from mess.indexer.snapshots import Checkpoint, PublishedSnapshot, load_facts, publish_snapshot
from mess.indexer.track_vectors import ModelGuard, Outcome, TrackVectors
from mess.runtime import kafka

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
    if latest is not None:
        vectors.restore_facts(await asyncio.to_thread(load_facts, store, latest.version))
    topics = settings.stack.topics
    # No group: a rebuild reads everything and commits nothing.
    consumer = kafka.consumer(
        settings.stack, client_id="mess-indexer-rebuild", enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    outcomes: Counter[str] = Counter()
    records = 0
    started = time.perf_counter()

    def apply(record: Record, state: TrackVectors) -> None:
        change = decode(record, topics)
        if isinstance(change, Malformed):
            outcomes["malformed_event"] += 1
        else:
            outcome = apply_change(state, change)
            outcomes[outcome if outcome is not Outcome.MODEL_MISMATCH else "skipped_other_model"] += 1
        feed.advance(record)

    try:
        feed = TrackEventFeed(consumer, [topics.tracks_embedded, topics.tracks_removed, topics.tracks_added])
        await feed.seek({})
        embedded = feed.partitions_of([topics.tracks_embedded])
        ends = {tp: end for tp, end in (await feed.end_offsets()).items() if tp in embedded}
        log.info("replaying %d embedded records", sum(ends.values()))
        # The facts, to their end now (an empty poll, not end_offsets, says so: see feed_loop).
        facts = feed.partitions_of([topics.tracks_added, topics.tracks_removed])
        empty = 0
        while empty < CATCH_UP_EMPTY_POLLS:
            batch = await feed.poll(CATCH_UP_POLL_MS, settings.poll_max_records, facts)
            empty = 0 if batch else empty + 1
            for record in batch:
                records += 1
                apply(record, vectors)
        while not feed.caught_up_with(ends):
            batch = await feed.poll(500, settings.poll_max_records, embedded)
            if not batch:
                await feed.skip_gaps(ends)
            for record in batch:
                # Past the ends the facts may not cover yet: the live indexer's.
                if record.offset < ends[TopicPartition(record.topic, record.partition)]:
                    records += 1
                    apply(record, vectors)
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
    producer = kafka.producer(settings.stack, client_id="mess-indexer-rebuild")
    await producer.start()
    try:
        event = snapshot_event(store, published.stored, published.rebuilt_shards)
        await kafka.publish(kafka.via_producer(producer), topics.index_snapshots, event)
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
