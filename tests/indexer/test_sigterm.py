"""SIGTERM to ``python -m mess.indexer``: what it has applied is published
before it exits 0, a snapshot being written completes first, and the publish
lease is free for whoever comes next.

Real broker and S3 endpoint throughout. The in-flight states are made
deterministic without sleeps: "applied, not yet snapshotted" by a snapshot
interval no test waits out, confirmed on ``/metrics``; "a snapshot is being
written" by reading S3 through ``HeldS3``, a pass-through to the real endpoint
that holds the PUT of that snapshot's manifest.
"""

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from mess.contracts.events import SnapshotPublished
from mess.contracts.storage import manifest_key
from mess.dev.pipeline import ServiceProcess
from mess.dev.stack import free_port
from mess.indexer.snapshot_store import LEASE_KEY, SnapshotStore
from mess.runtime.endpoints import StackSettings

from ..held_s3 import HeldS3
from .indexer_harness import embedded, producer, read_topic, removed, snapshot_ids, snapshot_store

GRACE_S = 30
NEVER_S = "3600"  # a snapshot interval no test waits out: changes stay applied but unpublished


def _indexer(stack_env: dict[str, str], stack: StackSettings, log: Path, **settings: str) -> ServiceProcess:
    port = free_port()
    env = {
        **os.environ,
        **stack_env,
        "MESS_INDEXER_PORT": str(port),
        "MESS_INDEXER_GROUP_ID": f"{stack.topic_prefix}mess-indexer",
        "MESS_INDEXER_SHARD_COUNT": "2",
        "MESS_INDEXER_TUNING_QUERIES": "20",
        "MESS_INDEXER_SHUTDOWN_GRACE_S": str(GRACE_S),
        **{f"MESS_INDEXER_{name.upper()}": value for name, value in settings.items()},
    }
    return ServiceProcess("indexer", port, env, log)


def _send(stack: StackSettings, events: list[Any]) -> None:
    async def go() -> None:
        async with producer(stack) as send:
            for event in events:
                await send(event)

    asyncio.run(go())


def _metric(service: ServiceProcess, name: str) -> float:
    """The sum of every sample of ``name`` (all label sets) on /metrics."""
    text = httpx.get(f"{service.url}/metrics", timeout=5).text
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE))


def _wait(check: Callable[[], object], what: str, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _ready(service: ServiceProcess) -> bool:
    try:
        return httpx.get(f"{service.url}/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _sigterm(service: ServiceProcess) -> float:
    assert service.process is not None
    os.kill(service.process.pid, signal.SIGTERM)
    return time.monotonic()


def _log_says(service: ServiceProcess, text: str) -> bool:
    return text in service.log_path.read_text(errors="replace")


async def _log_ends(stack: StackSettings) -> dict[str, dict[str, int]]:
    """End offsets of every partition of the three topics the indexer reads, as a manifest records them."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap)
    await consumer.start()
    try:
        await consumer.topics()
        topics = (stack.topics.tracks_embedded, stack.topics.tracks_removed, stack.topics.tracks_added)
        partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    result: dict[str, dict[str, int]] = {t: {} for t in topics}
    for tp, end in ends.items():
        result[tp.topic][str(tp.partition)] = end
    return result


async def _committed(stack: StackSettings, offsets: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The indexer group's committed offsets for the partitions named in ``offsets``,
    read by a consumer that never joins the group (Tansu breaks aiokafka's admin OffsetFetch)."""
    reader = AIOKafkaConsumer(
        bootstrap_servers=stack.kafka_bootstrap,
        group_id=f"{stack.topic_prefix}mess-indexer",
        enable_auto_commit=False,
    )
    await reader.start()
    try:
        result: dict[str, dict[str, int]] = {}
        for topic, partitions in offsets.items():
            result[topic] = {}
            for partition in partitions:
                committed = await reader.committed(TopicPartition(topic, int(partition)))
                result[topic][partition] = -1 if committed is None else committed
    finally:
        await reader.stop()
    return result


def _lease_free(store: SnapshotStore) -> bool:
    held = json.loads(store.s3.get_object(Bucket=store.bucket, Key=LEASE_KEY)["Body"].read())
    return float(held["expires_at"]) <= time.time()


def _announced(stack: StackSettings, *versions: str) -> set[str]:
    events = asyncio.run(
        read_topic(
            stack,
            stack.topics.index_snapshots,
            SnapshotPublished,
            lambda got: set(versions) <= {e.version for e in got},
        )
    )
    return {event.version for event in events}


def test_sigterm_publishes_the_applied_changes_and_a_successor_with_another_writer_id_replays_nothing(
    stack: StackSettings, stack_env: dict[str, str], tmp_path: Path
) -> None:
    store = snapshot_store(stack)
    first = _indexer(
        stack_env, stack, tmp_path / "first.log", writer_id="first", snapshot_interval_s=NEVER_S, latest_check_s="1"
    )
    events = [embedded(f"track-{n:02d}", n) for n in range(20)] + [removed("track-07")]
    expected = {f"track-{n:02d}" for n in range(20)} - {"track-07"}
    first.start()
    try:
        _wait(lambda: _ready(first), "readiness (the known-empty snapshot)")
        _send(stack, events[:-1])
        # Each embedding comes with its TrackAdded (the harness registers it, as ingest would).
        _wait(lambda: _metric(first, "mess_indexer_events_total") == 2 * (len(events) - 1), "the vectors applied")
        _send(stack, events[-1:])  # after them, so the removal finds its track
        # Applied (every topic, every partition) but in no snapshot: LATEST is still the empty one.
        _wait(lambda: _metric(first, "mess_indexer_pending_changes") == 2 * len(events) - 1, "every change applied")
        latest = store.read_latest()
        assert latest is not None and latest.version == "000000000001"

        signalled = _sigterm(first)
        assert first.process is not None
        status = first.process.wait(timeout=GRACE_S)
        took = time.monotonic() - signalled
    finally:
        first.kill()
    log = first.log_path.read_text()
    assert status == 0, log
    assert took < GRACE_S
    assert "final snapshot 000000000002 published" in log

    # The final snapshot holds every applied change, and its offsets are the ends of the logs.
    latest = store.read_latest()
    assert latest is not None and latest.version == "000000000002"
    manifest = store.read_manifest(latest.version).manifest
    ends = asyncio.run(_log_ends(stack))
    assert sorted(snapshot_ids(store, latest.version)) == sorted(expected)
    assert manifest.offsets == ends
    assert "000000000002" in _announced(stack, "000000000002")
    assert asyncio.run(_committed(stack, ends)) == ends
    assert _lease_free(store)

    # Another writer id starts from it, replays nothing and can publish at once (the lease is free).
    second = _indexer(stack_env, stack, tmp_path / "second.log", writer_id="second", snapshot_interval_s="0.3")
    second.start()
    try:
        _wait(lambda: _ready(second), "the successor's readiness")
        _send(stack, [embedded("track-20", 20)])
        _wait(lambda: _metric(second, "mess_indexer_snapshots_published_total") >= 1, "the successor's snapshot")
        # The new embedding and its TrackAdded only: nothing replayed.
        assert _metric(second, "mess_indexer_events_total") == 2
        assert _metric(second, "mess_indexer_snapshot_failures_total") == 0
        assert second.stop(timeout=GRACE_S) == 0
    finally:
        second.kill()
    latest = store.read_latest()
    assert latest is not None and latest.version == "000000000003"
    assert sorted(snapshot_ids(store, latest.version)) == sorted(expected | {"track-20"})


def test_sigterm_while_a_snapshot_is_written_lets_it_complete_then_publishes_the_changes_applied_since(
    stack: StackSettings, stack_env: dict[str, str], tmp_path: Path
) -> None:
    store = snapshot_store(stack)
    second_manifest = f"/{stack.bucket}/{manifest_key('000000000002')}"
    held = HeldS3(stack.s3_endpoint_url or "", hold=lambda method, path: method == "PUT" and path == second_manifest)
    with held.running():
        service = _indexer(
            {**stack_env, "MESS_S3_ENDPOINT_URL": held.url},
            stack,
            tmp_path / "indexer.log",
            writer_id="held",
            snapshot_interval_s="0.3",
        )
        service.start()
        try:
            _wait(lambda: _ready(service), "readiness")
            _send(stack, [embedded(f"track-{n:02d}", n) for n in range(10)])
            # Snapshot 2 (those ten) is written up to its manifest, which is held.
            held.wait_held(1)
            _send(stack, [embedded(f"track-{n:02d}", n) for n in range(10, 15)])
            _wait(lambda: _metric(service, "mess_indexer_pending_changes") == 10, "the later five applied")

            signalled = _sigterm(service)
            _wait(lambda: _log_says(service, "stopping: consuming no more"), "the shutdown to begin")
            # The process waits for the snapshot in hand; nothing of it is current yet.
            assert service.process is not None and service.process.poll() is None
            latest = store.read_latest()
            assert latest is not None and latest.version == "000000000001"

            held.release()
            status = service.process.wait(timeout=GRACE_S)
            took = time.monotonic() - signalled
        finally:
            service.kill()
    log = service.log_path.read_text()
    assert status == 0, log
    assert took < GRACE_S

    # Snapshot 2 completed with the first ten; the final snapshot 3 holds all fifteen.
    assert sorted(snapshot_ids(store, "000000000002")) == [f"track-{n:02d}" for n in range(10)]
    latest = store.read_latest()
    assert latest is not None and latest.version == "000000000003"
    assert sorted(snapshot_ids(store, latest.version)) == [f"track-{n:02d}" for n in range(15)]
    ends = asyncio.run(_log_ends(stack))
    assert store.read_manifest(latest.version).manifest.offsets == ends
    assert {"000000000002", "000000000003"} <= _announced(stack, "000000000002", "000000000003")
    assert asyncio.run(_committed(stack, ends)) == ends
    assert _lease_free(store)
