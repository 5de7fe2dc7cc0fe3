"""Driving a real indexer against the test's own topics and bucket.

Everything here talks to the real broker and S3 endpoint of the ``stack``
fixture; nothing of our own stack is faked.
"""

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from mess.contracts.events import (
    Event,
    ModelIdentity,
    SnapshotPublished,
    TrackAdded,
    TrackEmbedded,
    TrackFailed,
    TrackRemoved,
)
from mess.contracts.topics import REGISTRY_SEQUENCE_HEADER
from mess.indexer.config import Settings
from mess.indexer.indexer import Indexer
from mess.indexer.snapshot_store import SnapshotStore, StoredManifest
from mess.indexer.snapshots import StepHook, load_snapshot
from mess.indexer.track_vectors import ModelGuard, Outcome, TrackVectors, Vector
from mess.runtime.endpoints import StackSettings

DIM = 16
DSP = ModelIdentity(name="dsp", revision="test", dim=DIM, pooling="mean")
MERT = ModelIdentity(name="m-a-p/MERT-v1-95M", revision="test", dim=DIM, pooling="layers-mean")
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
SHA = "0" * 64
# The registry sequence the ingest outbox relay stamps on every fact: one
# counter for the whole test session, so every later fact has a larger one.
_REGISTRY_SEQUENCE = itertools.count(1)


def next_registry_sequence() -> int:
    return next(_REGISTRY_SEQUENCE)


def content(n: int) -> str:
    """A distinct sha256 for "the track's n-th content"."""
    return f"{n:064x}"


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


def embedded(
    track_id: str, seed: int, *, when: datetime | None = None, model: ModelIdentity = DSP, sha256: str = SHA
) -> TrackEmbedded:
    return TrackEmbedded(
        track_id=track_id,
        sha256=sha256,
        model=model,
        vector=unit_vector(seed, model.dim),
        occurred_at=when or datetime.now(UTC),
    )


def removed(track_id: str, *, when: datetime | None = None) -> TrackRemoved:
    return TrackRemoved(track_id=track_id, occurred_at=when or datetime.now(UTC))


def added(track_id: str, sha256: str = SHA) -> TrackAdded:
    return TrackAdded(track_id=track_id, sha256=sha256, audio_uri=f"s3://audio/{sha256}.wav", dataset="test")


def index(
    state: TrackVectors, track_id: str, model: ModelIdentity, vector: Vector, sequence: Any = None, sha256: str = SHA
) -> Outcome:
    """Register ``track_id`` with content ``sha256`` (unless it already is), then apply its embedding."""
    fact = state.fact(track_id)
    if fact is None or fact.sha256 != sha256:
        state.apply_added(track_id, sha256, next_registry_sequence())
    return state.apply_embedded(track_id, model, vector, sha256, sequence)


class Send:
    """``send(event)`` to the event's topic, keyed as the contract says; facts
    (TrackAdded, TrackRemoved) carry the next registry sequence as the ingest
    outbox relay stamps it, and an embedding is preceded by the TrackAdded of
    its content, as the embedder only ever embeds announced tracks."""

    def __init__(self, kafka: AIOKafkaProducer, stack: StackSettings) -> None:
        self.kafka = kafka
        topics = stack.topics
        self.topic_of: dict[type[Event], str] = {
            TrackAdded: topics.tracks_added,
            TrackEmbedded: topics.tracks_embedded,
            TrackRemoved: topics.tracks_removed,
        }

    async def __call__(self, event: Event, *, register: bool = True, sequence: int | None = None) -> None:
        """``register=False``: an embedding sent alone; ``sequence``: the fact's registry sequence."""
        if isinstance(event, TrackEmbedded) and register:
            await self(added(event.track_id, event.sha256))
        headers: list[tuple[str, bytes]] = []
        if isinstance(event, TrackAdded | TrackRemoved):
            number = sequence if sequence is not None else next_registry_sequence()
            headers.append((REGISTRY_SEQUENCE_HEADER, str(number).encode()))
        await self.kafka.send_and_wait(
            self.topic_of[type(event)], event.to_bytes(), key=event.key().encode(), headers=headers or None
        )


@asynccontextmanager
async def producer(stack: StackSettings) -> AsyncIterator[Send]:
    kafka = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    await kafka.start()
    send = Send(kafka, stack)

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
