"""Driving a real indexer against the test's own topics and bucket.

Everything here talks to the real broker and S3 endpoint of the ``stack``
fixture; nothing of our own stack is faked.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from mess.contracts.events import Event, ModelIdentity, SnapshotPublished, TrackEmbedded, TrackFailed, TrackRemoved
from mess.indexer.config import Settings
from mess.indexer.indexer import Indexer
from mess.indexer.snapshot_store import SnapshotStore, StoredManifest
from mess.indexer.snapshots import StepHook, load_snapshot
from mess.indexer.track_vectors import ModelGuard, TrackVectors
from mess.runtime.endpoints import StackSettings

DIM = 16
DSP = ModelIdentity(name="dsp", revision="test", dim=DIM, pooling="mean")
MERT = ModelIdentity(name="m-a-p/MERT-v1-95M", revision="test", dim=DIM, pooling="layers-mean")
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """A fixed instant, so ordering across topics is under the test's control."""
    return EPOCH + timedelta(seconds=seconds)


def indexer_settings(stack: StackSettings, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "stack": stack,
        "group_id": f"{stack.topic_prefix}mess-indexer",
        "writer_id": "test-indexer",
        "shard_count": 4,
        "snapshot_every_changes": 10_000,
        "snapshot_interval_s": 0.3,
        "latest_check_s": 0.3,
        "retry_s": 0.2,
        "flat_threshold": 1_000,
        "tuning_queries": 50,
    }
    values.update(overrides)
    return Settings(**values)


def snapshot_store(stack: StackSettings) -> SnapshotStore:
    kwargs: dict[str, Any] = stack.s3_client_kwargs()
    return SnapshotStore(boto3.client("s3", **kwargs), stack.bucket)


def unit_vector(seed: int, dim: int = DIM) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def embedded(track_id: str, seed: int, *, when: datetime | None = None, model: ModelIdentity = DSP) -> TrackEmbedded:
    return TrackEmbedded(
        track_id=track_id,
        sha256="0" * 64,
        model=model,
        vector=unit_vector(seed, model.dim),
        occurred_at=when or datetime.now(UTC),
    )


def removed(track_id: str, *, when: datetime | None = None) -> TrackRemoved:
    return TrackRemoved(track_id=track_id, occurred_at=when or datetime.now(UTC))


@asynccontextmanager
async def producer(stack: StackSettings) -> AsyncIterator[Callable[[Event], Any]]:
    """``send(event)`` to the event's topic, keyed as the contract says."""
    kafka = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    await kafka.start()
    topics = stack.topics
    topic_of = {TrackEmbedded: topics.tracks_embedded, TrackRemoved: topics.tracks_removed}

    async def send(event: Event) -> None:
        await kafka.send_and_wait(topic_of[type(event)], event.to_bytes(), key=event.key().encode())

    try:
        yield send
    finally:
        await kafka.stop()


async def send_raw(stack: StackSettings, topic: str, value: bytes | None, key: bytes | None) -> None:
    kafka = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    await kafka.start()
    try:
        await kafka.send_and_wait(topic, value, key=key)
    finally:
        await kafka.stop()


@asynccontextmanager
async def running(settings: Settings, step_hook: StepHook | None = None) -> AsyncIterator[Indexer]:
    indexer = Indexer(settings, step_hook=step_hook)
    await indexer.start()
    task = asyncio.create_task(indexer.run())
    try:
        yield indexer
    finally:
        indexer.request_stop()
        try:
            await asyncio.wait_for(task, timeout=30)
        finally:
            await indexer.close()


async def wait_until(check: Callable[[], Any], what: str, limit_s: float = 60.0) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + limit_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def wait_for_snapshot(
    store: SnapshotStore, check: Callable[[StoredManifest], bool], what: str, limit_s: float = 60.0
) -> StoredManifest:
    def latest_matches() -> StoredManifest | None:
        latest = store.read_latest()
        if latest is None:
            return None
        stored = store.read_manifest(latest.version)
        return stored if check(stored) else None

    result: StoredManifest = await wait_until(lambda: asyncio.to_thread(latest_matches), what, limit_s)
    return result


def read_back(store: SnapshotStore, version: str) -> TrackVectors:
    """A snapshot loaded as a restarting indexer loads it: every checksum verified."""
    manifest = store.read_manifest(version).manifest
    state = TrackVectors(manifest.shard_count, ModelGuard(manifest.model, None))
    load_snapshot(store, version, state)
    return state


def snapshot_ids(store: SnapshotStore, version: str) -> list[str]:
    """Every id in every shard of the snapshot, duplicates kept."""
    ids: list[str] = []
    for shard in store.read_manifest(version).manifest.shards:
        ids.extend(json.loads(store.fetch_verified(shard.ids)))
    return ids


async def read_topic(
    stack: StackSettings, topic: str, model: type[Event], enough: int | Callable[[list[Any]], bool]
) -> list[Any]:
    """Events on ``topic`` from the beginning, until there are ``enough`` (a
    count, or a test of what arrived). Partitions interleave in any order."""
    done = enough if callable(enough) else (lambda events: len(events) >= enough)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=stack.kafka_bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    events: list[Any] = []
    try:
        async with asyncio.timeout(30):
            while not done(events):
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    events.extend(model.from_bytes(r.value) for r in records)
    except TimeoutError:
        raise AssertionError(f"{len(events)} events on {topic} were not enough") from None
    finally:
        await consumer.stop()
    return events


async def dead_letters(stack: StackSettings, count: int) -> list[TrackFailed]:
    return await read_topic(stack, stack.topics.tracks_failed, TrackFailed, count)


async def announced_versions(stack: StackSettings, *versions: str) -> set[str]:
    """Versions announced on the snapshots topic, read until all of ``versions`` arrived."""
    events = await read_topic(
        stack,
        stack.topics.index_snapshots,
        SnapshotPublished,
        lambda events: set(versions) <= {e.version for e in events},
    )
    return {e.version for e in events}


async def consumed_everything(indexer: Indexer) -> bool:
    """True once the indexer has applied every record now on its topics."""
    ends = await indexer.feed.end_offsets()
    return indexer.feed.caught_up_with(ends)
