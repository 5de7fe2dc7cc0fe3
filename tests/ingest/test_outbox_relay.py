"""The outbox relay against real brokers: outbox order, and a broker outage that loses nothing.

The outage is real: the test starts a Tansu broker of its own, kills it in the
middle of the test and starts it again on the same port (the shared broker is
never touched).
"""

import asyncio
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from mess.contracts.events import TrackAdded, TrackFailed, TrackMetadata
from mess.contracts.topics import REGISTRY_SEQUENCE_HEADER, TRACKS_ADDED
from mess.dev import stack as local
from mess.ingest.audio import AudioFacts
from mess.ingest.outbox import OutboxRelay
from mess.ingest.registry import StoredAudio, TrackCandidate
from mess.runtime.endpoints import StackSettings

from .service_harness import (
    connect_db,
    ingest_settings,
    outbox_drained,
    read_topic,
    running_ingest,
    table_count,
    tone,
)


def registry_candidate(n: int, stack: StackSettings) -> TrackCandidate:
    """A track as the registry sees one; the relay never looks at the audio, so none is stored."""
    sha256 = hashlib.sha256(f"track {n}".encode()).hexdigest()
    facts = AudioFacts(format="WAV", extension="wav", duration_s=2.0, sample_rate=22050, channels=1, peak=0.5)
    return TrackCandidate(
        track_id=sha256[:32],
        dataset="upload",
        metadata=TrackMetadata(title=f"track {n}"),
        audio=StoredAudio(sha256=sha256, audio_uri=f"s3://{stack.bucket}/audio/{n}.wav", size_bytes=1, facts=facts),
    )


async def test_relay_publishes_in_outbox_order_and_marks_rows(stack: StackSettings) -> None:
    settings = ingest_settings(stack, relay_enabled=False, drop_worker_enabled=False, relay_batch=7)
    async with running_ingest(settings) as service:
        registry = service.resources.registry
        for n in range(30):
            await registry.register(registry_candidate(n, stack))
        # A second announcement of every track (as the reconciler makes), queued after all the first ones.
        reannounced = await registry.reannounce_stale(grace_s=0, limit=100)
        assert len(reannounced) == 30
        connection = await connect_db(stack)
        try:
            queued = [
                (row["key"], row["id"]) for row in await connection.fetch("SELECT id, key FROM outbox ORDER BY id")
            ]
        finally:
            await connection.close()

        relay = OutboxRelay(settings)
        relaying = asyncio.create_task(relay.run())
        try:
            await outbox_drained(stack)
        finally:
            relaying.cancel()
            await asyncio.gather(relaying, return_exceptions=True)

    records = await read_topic(stack.kafka_bootstrap, stack.topics.tracks_added, at_least=60)
    assert len(records) == 60
    # Kafka orders per partition: each partition must hold its keys in outbox (commit) order.
    by_partition: dict[int, list[str]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_partition[record.partition].append(record.key.decode())
    for partition, keys in by_partition.items():
        expected = [key for key, _ in queued if key in set(keys)]
        assert keys == expected, f"partition {partition} out of outbox order"
    reasons = [TrackAdded.from_bytes(r.value).reason for r in sorted(records, key=lambda r: (r.partition, r.offset))]
    assert reasons.count("new") == 30 and reasons.count("reconcile") == 30


async def test_a_row_no_broker_can_take_is_dead_lettered_and_the_rest_go_on_in_order(stack: StackSettings) -> None:
    settings = ingest_settings(stack, relay_enabled=False, drop_worker_enabled=False, relay_batch=4)
    async with running_ingest(settings) as service:
        registry = service.resources.registry
        for n in range(3):
            await registry.register(registry_candidate(n, stack))
        connection = await connect_db(stack)
        try:
            # Rows the broker can never accept, however they got into the outbox: one over the
            # producer's max_request_size (1 MiB), one for a topic that is none of ours.
            oversized = json.dumps({"track_id": "oversized-row", "padding": "x" * (2 * 1024 * 1024)})
            await connection.execute(
                "INSERT INTO outbox (topic, key, payload) VALUES ($1, $2, $3::jsonb)",
                TRACKS_ADDED,
                "oversized-row",
                oversized,
            )
            await connection.execute(
                "INSERT INTO outbox (topic, key, payload) VALUES ($1, $2, $3::jsonb)",
                "mess.nowhere.v1",
                "stray-row",
                '{"track_id": "stray-row"}',
            )
            for n in range(3, 8):
                await registry.register(registry_candidate(n, stack))
            queued = [
                (row["key"], row["id"])
                for row in await connection.fetch(
                    "SELECT id, key FROM outbox WHERE topic = $1 ORDER BY id", TRACKS_ADDED
                )
            ]

            relay = OutboxRelay(settings)
            relaying = asyncio.create_task(relay.run())
            try:
                await outbox_drained(stack)
            finally:
                relaying.cancel()
                await asyncio.gather(relaying, return_exceptions=True)
            marks = {
                row["key"]: row["dead_letter_reason"]
                for row in await connection.fetch("SELECT key, dead_letter_reason FROM outbox")
            }
        finally:
            await connection.close()

    assert "MessageSizeTooLargeError" in (marks.pop("oversized-row") or "")
    assert "mess.nowhere.v1" in (marks.pop("stray-row") or "")
    assert set(marks.values()) == {None}, "only the two unpublishable rows are marked as dead letters"

    records = await read_topic(stack.kafka_bootstrap, stack.topics.tracks_added, at_least=8)
    assert len(records) == 8
    by_partition: dict[int, list[str]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_partition[record.partition].append(record.key.decode())
        # Every announcement carries the registry's sequence (its outbox row id), which orders a track's facts.
        assert dict(record.headers)[REGISTRY_SEQUENCE_HEADER] == str(dict(queued)[record.key.decode()]).encode()
    for partition, keys in by_partition.items():
        assert keys == [key for key, _ in queued if key in set(keys)], f"partition {partition} out of outbox order"

    letters = [
        TrackFailed.from_bytes(r.value)
        for r in await read_topic(stack.kafka_bootstrap, stack.topics.tracks_failed, at_least=2)
    ]
    assert sorted((f.original_key, f.error_kind, f.stage) for f in letters) == [
        ("oversized-row", "unpublishable", "ingest"),
        ("stray-row", "unpublishable", "ingest"),
    ]
    oversized_letter = next(f for f in letters if f.original_key == "oversized-row")
    assert oversized_letter.original_truncated and oversized_letter.track_id == "oversized-row"


@pytest.fixture
def own_broker(stack: StackSettings, tmp_path: Path) -> Iterator["OwnBroker"]:
    broker = OwnBroker(local.free_port(), stack, tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        broker.delete_storage()


class OwnBroker:
    """A Tansu process this test owns, killed and restarted at will.

    Its log lives in a bucket of its own on the S3 endpoint (Tansu's s3://
    storage), so a restarted broker has the topics and messages it had, like
    a real Kafka after an outage; a memory-storage Tansu would come back empty.
    """

    def __init__(self, port: int, stack: StackSettings, log_dir: Path) -> None:
        self.port = port
        self.bootstrap = f"127.0.0.1:{port}"
        self.log_dir = log_dir
        self.bucket = f"{stack.bucket}-broker"
        kwargs: dict[str, Any] = stack.s3_client_kwargs()
        self.s3 = boto3.client("s3", **kwargs)
        self.s3.create_bucket(Bucket=self.bucket)
        self.env = {
            "AWS_ENDPOINT": stack.s3_endpoint_url or "",
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": stack.aws_access_key_id or "",
            "AWS_SECRET_ACCESS_KEY": (
                stack.aws_secret_access_key.get_secret_value() if stack.aws_secret_access_key else ""
            ),
            "AWS_DEFAULT_REGION": stack.s3_region,
            "AWS_REGION": stack.s3_region,
        }
        self.pid: int | None = None

    def start(self) -> None:
        command = [*local.broker_command("127.0.0.1", self.port), "--storage-engine", f"s3://{self.bucket}/"]
        self.pid, _ = local.spawn("broker", command, self.log_dir, env=self.env)
        local.wait_for(lambda: local.broker_answers(self.bootstrap), "the test's own broker")

    def stop(self) -> None:
        if self.pid is not None:
            local.stop_process(self.pid)
            self.pid = None

    def delete_storage(self) -> None:
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            keys: list[Any] = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})
        self.s3.delete_bucket(Bucket=self.bucket)


async def test_broker_outage_loses_no_event(stack: StackSettings, own_broker: OwnBroker) -> None:
    broker = own_broker
    stack = stack.model_copy(update={"kafka_bootstrap": broker.bootstrap})
    await local.create_topics(stack)
    settings = ingest_settings(stack, drop_worker_enabled=False, kafka_timeout_ms=1500)
    async with running_ingest(settings) as service, service.client() as client:
        before = await client.post("/tracks", files={"file": ("before.wav", tone(hz=200.0))})
        assert before.status_code == 201, before.text
        await outbox_drained(stack)

        await asyncio.to_thread(broker.stop)
        during = []
        for hz in (300.0, 400.0, 500.0):
            answer = await client.post("/tracks", files={"file": ("during.wav", tone(hz=hz))})
            assert answer.status_code == 201, answer.text  # uploads do not need the broker
            during.append(answer.json()["track_id"])
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"] == {"postgres": True, "s3": True, "broker": False}
        assert await table_count(stack, "outbox WHERE published_at IS NULL") == 3

        await asyncio.to_thread(broker.start)
        await outbox_drained(stack, within_s=60)
        records = await read_topic(stack.kafka_bootstrap, stack.topics.tracks_added, at_least=4)
        published = [TrackAdded.from_bytes(r.value).track_id for r in records]
        # Every event, the one from before and the three from the outage; at least once, so a repeat is allowed.
        assert set(published) == {before.json()["track_id"], *during}
        ready_again = await _ready(client)
        assert ready_again.json()["checks"]["broker"] is True


async def _ready(client: httpx.AsyncClient) -> httpx.Response:
    for _ in range(50):
        answer = await client.get("/health/ready")
        if answer.status_code == 200:
            return answer
        await asyncio.sleep(0.2)
    return answer
