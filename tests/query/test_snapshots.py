"""Loading, refusing and swapping snapshots, against the real broker, S3 endpoint and Postgres."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from mess.contracts.events import TrackFailed
from mess.runtime.endpoints import StackSettings

from .conftest import Catalogue, StartQuery, apply_registry, eventually, insert_tracks
from .snapshot_writer import ShardInput, SnapshotWriter, Tampering


async def _ready(client: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
    response = await client.get("/health/ready")
    return response.status_code, response.json()


async def test_not_ready_until_a_snapshot_then_ready_on_the_known_empty_one(
    stack: StackSettings, start_query: StartQuery, writer: SnapshotWriter
) -> None:
    await apply_registry(stack)
    async with start_query(snapshot_poll_s=0.2) as query:
        status, body = await _ready(query.client)
        assert status == 503
        assert body["checks"]["snapshot"] is False
        recommend = await query.client.get("/recommend/anything")
        assert recommend.status_code == 503
        assert "no snapshot" in recommend.json()["detail"]

        writer.write_empty(1)  # LATEST only: found by the poll
        await query.wait_for_version("000000000001")
        status, body = await _ready(query.client)
        assert status == 200
        assert body["snapshot_version"] == "000000000001"
        assert body["vectors"] == 0


async def test_snapshot_event_swaps_without_waiting_for_the_poll(
    stack: StackSettings, start_query: StartQuery, writer: SnapshotWriter, catalogue: Catalogue
) -> None:
    await apply_registry(stack)
    await insert_tracks(stack, catalogue.rows)
    first = writer.write(1, catalogue.shards(2), dim=16)
    async with start_query(snapshot_poll_s=3600) as query:  # the start-up read of LATEST, then no polls
        await query.wait_for_version(first.version)
        old = weakref.ref(query.resources.follower.current)
        second = writer.write(2, catalogue.shards(3), dim=16)
        await writer.announce(second)
        await query.wait_for_version(second.version)
        assert query.resources.follower.current is not None
        assert len(query.resources.follower.current.shards) == 3
        assert query.metric("mess_query_snapshot_swaps_total") == 2
        gc.collect()
        assert old() is None  # the old searcher (indexes, memory maps) was released


async def test_latest_poll_swaps_without_an_event(
    stack: StackSettings, start_query: StartQuery, writer: SnapshotWriter, catalogue: Catalogue
) -> None:
    await apply_registry(stack)
    first = writer.write(1, catalogue.shards(1), dim=16)
    async with start_query(snapshot_poll_s=0.2, snapshot_events=False) as query:
        await query.wait_for_version(first.version)
        second = writer.write(2, catalogue.shards(2), dim=16)
        await query.wait_for_version(second.version)


async def test_unchanged_shards_are_reused_not_reloaded(
    stack: StackSettings, start_query: StartQuery, writer: SnapshotWriter, catalogue: Catalogue
) -> None:
    await apply_registry(stack)
    first = writer.write(1, catalogue.shards(2), dim=16)
    async with start_query() as query:
        await query.wait_for_version(first.version)
        old = query.resources.follower.current
        assert old is not None
        shards = catalogue.shards(2)
        # Shard 1 gets new content (its rows reversed); shard 0 is the earlier snapshot's entry.
        shards[1] = ShardInput(ids=shards[1].ids[::-1], vectors=shards[1].vectors[::-1].copy())
        second = writer.write(2, shards, dim=16, reuse={0: first.shards[0]})
        await writer.announce(second)
        new = await query.resources.follower.wait_for_version(second.version, 20)
        assert new.shards[0] is old.shards[0]  # same object: not downloaded or loaded again
        assert new.shards[1] is not old.shards[1]


@pytest.mark.parametrize(
    ("tampering", "reason"),
    [
        (Tampering(corrupt_vectors_of_shard=1), "checksum"),
        (Tampering(rotate_vectors_of_shard=0), "canary"),
    ],
    ids=["corrupt-file", "vectors-out-of-line"],
)
async def test_a_broken_snapshot_is_refused_and_the_old_one_keeps_serving(
    stack: StackSettings,
    start_query: StartQuery,
    writer: SnapshotWriter,
    catalogue: Catalogue,
    caplog: pytest.LogCaptureFixture,
    tampering: Tampering,
    reason: str,
) -> None:
    await apply_registry(stack)
    await insert_tracks(stack, catalogue.rows)
    first = writer.write(1, catalogue.shards(2), dim=16)
    async with start_query() as query:
        await query.wait_for_version(first.version)
        # Three shards: new content, so nothing can come from the local cache of snapshot 1.
        broken = writer.write(2, catalogue.shards(3), dim=16, tampering=tampering)
        with caplog.at_level(logging.ERROR, logger="mess.query"):
            await writer.announce(broken)
            await eventually(
                lambda: query.metric("mess_query_snapshot_refused_total", {"reason": reason}) >= 1, "the refusal"
            )
        assert query.resources.follower.current is not None
        assert query.resources.follower.current.version == first.version
        assert any("snapshot 000000000002 refused" in r.getMessage() for r in caplog.records)
        response = await query.client.get(f"/recommend/{catalogue.ids[0]}?k=3")
        assert response.status_code == 200
        assert response.json()["snapshot_version"] == first.version
        _, body = await _ready(query.client)
        assert {"version": "000000000002", "reason": "snapshot_refused"} in body["refused_snapshots"]

        # A later good snapshot is still taken.
        third = writer.write(3, catalogue.shards(2), dim=16)
        await writer.announce(third)
        await query.wait_for_version(third.version)


async def test_a_malformed_snapshot_event_is_dead_lettered_and_skipped(
    stack: StackSettings, start_query: StartQuery, writer: SnapshotWriter, catalogue: Catalogue
) -> None:
    await apply_registry(stack)
    first = writer.write(1, catalogue.shards(1), dim=16)
    async with start_query() as query:
        await query.wait_for_version(first.version)
        await eventually(lambda: query.resources.analytics.connected, "the producer")
        await writer.send_raw(b'{"version": "not a snapshot event"}', b"bad")
        second = writer.write(2, [ShardInput(catalogue.ids, catalogue.vectors)], dim=16)
        await writer.announce(second)
        await query.wait_for_version(second.version)  # the poison did not block what came after it
        assert query.metric("mess_query_snapshot_events_malformed_total") == 1

    consumer = AIOKafkaConsumer(
        stack.topics.tracks_failed,
        bootstrap_servers=stack.kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=f"{stack.topic_prefix}dlq-reader",
    )
    await consumer.start()
    try:
        async with asyncio.timeout(20):
            record = await consumer.getone()
    finally:
        await consumer.stop()
    letter = TrackFailed.from_bytes(record.value)
    assert letter.stage == "query"
    assert letter.error_kind == "malformed_event"
    assert letter.source_topic == stack.topics.index_snapshots
    assert letter.original_payload == '{"version": "not a snapshot event"}'


async def test_only_the_indexers_own_snapshot_that_latest_names_is_ever_served(
    stack: StackSettings, start_query: StartQuery, writer: SnapshotWriter, catalogue: Catalogue
) -> None:
    """Forged SnapshotPublished events, each pointing at a well-formed manifest with intact files, are refused,
    dead-lettered and never ranked: a manifest outside the snapshot prefix, a 128-digit version, and a
    version ahead of LATEST. The real next snapshot is then served."""
    await apply_registry(stack)
    first = writer.write(1, catalogue.shards(2), dim=16)
    s3 = writer.s3
    async with start_query() as query:  # LATEST polls every 30 s: only events can move it here
        await query.wait_for_version(first.version)
        await eventually(lambda: query.resources.analytics.connected, "the producer")

        elsewhere = writer.write(2, catalogue.shards(3), dim=16, update_latest=False)
        forged_key = "audio/forged/manifest.json"
        s3.copy_object(
            Bucket=stack.bucket,
            Key=forged_key,
            CopySource={"Bucket": stack.bucket, "Key": f"snapshots/{elsewhere.version}/manifest.json"},
        )
        s3.delete_object(Bucket=stack.bucket, Key=f"snapshots/{elsewhere.version}/manifest.json")
        outside = writer.event(elsewhere).model_copy(update={"manifest_uri": f"s3://{stack.bucket}/{forged_key}"})
        await writer.send_raw(outside.to_bytes(), elsewhere.version.encode())
        await writer.announce(writer.write(int("9" * 128), catalogue.shards(3), dim=16, update_latest=False))
        await writer.announce(writer.write(3, catalogue.shards(3), dim=16, update_latest=False))

        for reason in ("location", "version", "latest"):
            await eventually(
                lambda reason=reason: query.metric("mess_query_snapshot_refused_total", {"reason": reason}) >= 1,
                f"the refusal by {reason}",
            )
        assert query.resources.follower.current is not None
        assert query.resources.follower.current.version == first.version

        real = writer.write(4, catalogue.shards(1), dim=16)
        await writer.announce(real)
        await query.wait_for_version(real.version)
        assert query.resources.follower.current.version == real.version
        assert query.metric("mess_query_snapshot_swaps_total") == 2

    consumer = AIOKafkaConsumer(
        stack.topics.tracks_failed,
        bootstrap_servers=stack.kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=f"{stack.topic_prefix}dlq-reader",
    )
    await consumer.start()
    letters: list[TrackFailed] = []
    try:
        async with asyncio.timeout(20):
            while len(letters) < 3:
                letters.append(TrackFailed.from_bytes((await consumer.getone()).value))
    finally:
        await consumer.stop()
    assert [(f.stage, f.error_kind) for f in letters] == [("query", "bad_snapshot")] * 3
    # Each forged event is dead-lettered once (the keys are the versions they claimed).
    assert sorted(f.original_key or "" for f in letters) == ["000000000002", "000000000003", "9" * 128]
