"""SIGTERM to a running `python -m mess.ingest` while work is in flight: the work is finished, committed
and published, and the process exits 0 within the time Kubernetes gives it.

Each test starts the real service as a process on its own slice of the real stack (broker, Postgres,
moto S3/SQS) and holds a piece of work in flight by something it controls, not by a sleep: an upload
body the test has not finished sending, or a Postgres table lock that a dropped object's registration
waits on. SIGTERM is sent while it waits; the test then waits until the listening socket is closed
(the shutdown has begun) before letting the work go on.
"""

import asyncio
import hashlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from mess.contracts.events import ModelIdentity, TrackAdded, TrackEmbedded
from mess.dev.pipeline import ServiceProcess
from mess.dev.stack import free_port
from mess.ingest.config import DEFAULT_STATUS_GROUP
from mess.ingest.outbox import OutboxRelay
from mess.runtime.endpoints import StackSettings

from .service_harness import (
    API_KEY,
    connect_db,
    ingest_settings,
    read_topic,
    running_ingest,
    table_count,
    tone,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy/k8s/base/ingest.yaml"


def kubernetes_budget_s() -> float:
    """Seconds between SIGTERM and SIGKILL in the manifest: the grace period less the preStop sleep."""
    text = MANIFEST.read_text(encoding="utf-8")
    grace = re.search(r"terminationGracePeriodSeconds:\s*(\d+)", text)
    pre_stop = re.search(r'command:\s*\["sleep",\s*"(\d+)"\]', text)
    assert grace is not None and pre_stop is not None, "the manifest no longer states its grace period and preStop"
    return float(grace.group(1)) - float(pre_stop.group(1))


def start_ingest(stack_env: dict[str, str], log_dir: Path, **settings: str) -> ServiceProcess:
    """The service as `make up` runs it (default shutdown_grace_s), with quick loops for a test."""
    port = free_port()
    env = {
        **os.environ,
        **stack_env,
        "MESS_INGEST_PORT": str(port),
        "MESS_INGEST_API_KEYS": API_KEY,
        "MESS_INGEST_RELAY_POLL_S": "0.2",
        "MESS_INGEST_SQS_WAIT_S": "2",
        **settings,
    }
    env.pop("MESS_INGEST_SHUTDOWN_GRACE_S", None)
    service = ServiceProcess("ingest", port, env, log_dir / "ingest.log")
    service.start()
    service.wait_live(timeout=60)
    return service


def wait_ready(service: ServiceProcess) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert service.running, service.log_path.read_text(errors="replace")[-3000:]
        if httpx.get(f"{service.url}/health/ready", timeout=5).status_code == 200:
            return
        time.sleep(0.2)
    raise AssertionError(f"ingest not ready: {httpx.get(f'{service.url}/health/ready', timeout=5).text}")


def accepts_connections(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def until_shutdown_began(service: ServiceProcess) -> None:
    """uvicorn closes its listening socket first thing on SIGTERM: new connections are then refused."""

    async def refused() -> bool:
        return not accepts_connections(service.port)

    await wait_until(refused, "the service kept accepting connections after SIGTERM", within_s=15, interval=0.02)


async def until_logged(service: ServiceProcess, line: str) -> None:
    async def logged() -> bool:
        return line in service.log_path.read_text(errors="replace")

    await wait_until(logged, f"the service never logged {line!r}", within_s=30, interval=0.05)


async def metric(service: ServiceProcess, name: str) -> float:
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"{service.url}/metrics")).text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def exit_status(service: ServiceProcess, within_s: float) -> tuple[int | None, str]:
    """The exit status if the process ended within ``within_s`` (else None, and it is killed), and its log."""
    assert service.process is not None
    try:
        code: int | None = await asyncio.to_thread(service.process.wait, within_s)
    except subprocess.TimeoutExpired:
        code = None
        service.kill()
    return code, service.log_path.read_text(errors="replace")


def added_for(records: list[Any], track_id: str) -> list[TrackAdded]:
    events = [TrackAdded.from_bytes(record.value) for record in records]
    return [event for event in events if event.track_id == track_id]


async def track_and_outbox(stack: StackSettings, track_id: str) -> tuple[Any, list[Any]]:
    connection = await connect_db(stack)
    try:
        track = await connection.fetchrow("SELECT id, status, dataset, source_key FROM tracks WHERE id = $1", track_id)
        outbox = await connection.fetch("SELECT key, published_at FROM outbox WHERE key = $1", track_id)
    finally:
        await connection.close()
    return track, list(outbox)


@pytest.fixture
def stopped_at_end() -> Iterator[list[ServiceProcess]]:
    """Services a test started; killed at the end whatever happened (a passing test has stopped them already)."""
    started: list[ServiceProcess] = []
    yield started
    for service in started:
        service.kill()


async def test_sigterm_mid_upload_body_answers_201_commits_and_publishes_before_exit_0(
    stack: StackSettings, stack_env: dict[str, str], tmp_path: Path, stopped_at_end: list[ServiceProcess]
) -> None:
    service = start_ingest(stack_env, tmp_path)
    stopped_at_end.append(service)
    wait_ready(service)
    audio = tone(seconds=3.0, hz=311.0)
    track_id = hashlib.sha256(audio).hexdigest()[:32]
    boundary = "mess-sigterm-boundary"
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="composer"\r\n\r\nBach\r\n'
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="sigterm_etude.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    rest_of_body = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield head + audio[: len(audio) // 2]
        await rest_of_body.wait()  # the second half is sent only once the shutdown has begun
        yield audio[len(audio) // 2 :] + tail

    async with httpx.AsyncClient(timeout=90) as client:
        upload = asyncio.create_task(
            client.post(
                f"{service.url}/tracks",
                content=body(),
                headers={"X-API-Key": API_KEY, "Content-Type": f"multipart/form-data; boundary={boundary}"},
            )
        )

        async def receiving() -> bool:
            return await metric(service, "mess_ingest_uploads_in_progress") == 1

        await wait_until(receiving, "the service never started reading the upload")
        assert service.process is not None
        service.process.send_signal(signal.SIGTERM)
        await until_shutdown_began(service)
        assert not upload.done()  # still streaming in when the shutdown began
        rest_of_body.set()
        answer = await upload

    code, log = await exit_status(service, kubernetes_budget_s())
    assert answer.status_code == 201, answer.text
    assert answer.json()["track_id"] == track_id
    assert code == 0, log[-3000:]
    assert "Application shutdown complete" in log
    track, outbox = await track_and_outbox(stack, track_id)
    assert track is not None and track["status"] == "registered" and track["dataset"] == "upload"
    # Published by this process's relay before it exited, not left for the next start.
    assert len(outbox) == 1 and outbox[0]["published_at"] is not None, outbox
    records = await read_topic(stack.kafka_bootstrap, stack.topics.tracks_added, at_least=1)
    added = added_for(records, track_id)
    assert len(added) == 1 and added[0].metadata.composer == "Bach"
    for loop in (
        "SQS drop worker stopped polling",
        "drop scan stopped",
        "status consumer stopped",
        "reconciler stopped",
    ):
        assert loop in log
    assert "outbox relay stopped with the outbox drained" in log


async def test_sigterm_while_a_drop_is_registering_finishes_it_deletes_its_notice_and_polls_no_more(
    stack: StackSettings, stack_env: dict[str, str], tmp_path: Path, stopped_at_end: list[ServiceProcess]
) -> None:
    # No drop scan: only the SQS worker may take objects, so what it does after SIGTERM is all that counts.
    service = start_ingest(stack_env, tmp_path, MESS_INGEST_DROP_SCAN_INTERVAL_S="0")
    stopped_at_end.append(service)
    wait_ready(service)
    s3_kwargs: dict[str, Any] = stack.s3_client_kwargs()
    s3 = boto3.client("s3", **s3_kwargs)
    sqs = boto3.client("sqs", **s3_kwargs)
    queue = sqs.get_queue_url(QueueName=stack.sqs_queue)["QueueUrl"]
    first, second = tone(seconds=2.0, hz=262.0), tone(seconds=2.0, hz=294.0)
    first_id, second_id = (hashlib.sha256(audio).hexdigest()[:32] for audio in (first, second))

    # Registration writes the track row, then its outbox row, in one transaction: holding a lock that
    # blocks outbox inserts (reads go on, so the relay keeps polling) stops it half way, uncommitted.
    holder = await connect_db(stack)
    try:
        lock = holder.transaction()
        await lock.start()
        await holder.execute("LOCK TABLE outbox IN EXCLUSIVE MODE")
        await asyncio.to_thread(s3.put_object, Bucket=stack.bucket, Key="drop/first_prelude.wav", Body=first)

        async def registration_waits() -> bool:
            waiting = await holder.fetchval(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'outbox'::regclass"
            )
            return int(waiting) == 1

        await wait_until(registration_waits, "the drop worker never reached the outbox insert")
        assert await metric(service, "mess_ingest_drops_in_progress") == 1
        assert service.process is not None
        service.process.send_signal(signal.SIGTERM)
        await until_shutdown_began(service)
        # A notice that arrives while the service stops must be left for another replica.
        await asyncio.to_thread(s3.put_object, Bucket=stack.bucket, Key="drop/second_prelude.wav", Body=second)
        # Held until uvicorn has handed over to the lifespan shutdown, so that it is the shutdown
        # code, not luck in the timing, that waits for the registration.
        await until_logged(service, "Waiting for application shutdown.")
        await lock.commit()
    finally:
        await holder.close()

    code, log = await exit_status(service, kubernetes_budget_s())
    assert code == 0, log[-3000:]
    assert "SQS drop worker stopped polling" in log and "Application shutdown complete" in log
    track, outbox = await track_and_outbox(stack, first_id)
    assert track is not None and track["source_key"] == "drop/first_prelude.wav", log[-3000:]
    assert len(outbox) == 1 and outbox[0]["published_at"] is not None, outbox
    records = await read_topic(stack.kafka_bootstrap, stack.topics.tracks_added, at_least=1)
    assert len(added_for(records, first_id)) == 1
    second_track, _ = await track_and_outbox(stack, second_id)
    assert second_track is None  # not taken after SIGTERM

    # The first notice was deleted (after the commit); the second waits, visible, in the queue.
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    assert attributes == {"ApproximateNumberOfMessages": "1", "ApproximateNumberOfMessagesNotVisible": "0"}
    left = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1)["Messages"]
    assert "second_prelude.wav" in left[0]["Body"]


async def test_sigterm_with_the_broker_down_exits_0_and_leaves_the_event_in_the_outbox_for_the_next_start(
    stack: StackSettings, stack_env: dict[str, str], tmp_path: Path, stopped_at_end: list[ServiceProcess]
) -> None:
    nobody = f"127.0.0.1:{free_port()}"  # no broker answers here
    service = start_ingest({**stack_env, "MESS_KAFKA_BOOTSTRAP": nobody}, tmp_path)
    stopped_at_end.append(service)
    audio = tone(seconds=2.0, hz=349.0)
    track_id = hashlib.sha256(audio).hexdigest()[:32]
    async with httpx.AsyncClient(timeout=60) as client:
        answer = await client.post(
            f"{service.url}/tracks", headers={"X-API-Key": API_KEY}, files={"file": ("fugue.wav", audio)}
        )
    assert answer.status_code == 201, answer.text
    assert service.process is not None
    service.process.send_signal(signal.SIGTERM)
    code, log = await exit_status(service, kubernetes_budget_s())
    assert code == 0, log[-3000:]
    assert "pending events stay in the outbox" in log
    _, outbox = await track_and_outbox(stack, track_id)
    assert len(outbox) == 1 and outbox[0]["published_at"] is None

    # The next start, with the broker back, publishes it.
    restarted = start_ingest(stack_env, tmp_path)
    stopped_at_end.append(restarted)
    records = await read_topic(stack.kafka_bootstrap, stack.topics.tracks_added, at_least=1)
    assert len(added_for(records, track_id)) == 1
    assert restarted.stop() == 0


async def test_sigterm_while_a_status_event_is_handled_applies_it_and_commits_its_offset(
    stack: StackSettings, stack_env: dict[str, str], tmp_path: Path, stopped_at_end: list[ServiceProcess]
) -> None:
    service = start_ingest(stack_env, tmp_path)
    stopped_at_end.append(service)
    wait_ready(service)
    audio = tone(seconds=2.0, hz=392.0)
    sha256 = hashlib.sha256(audio).hexdigest()
    async with httpx.AsyncClient(timeout=60) as client:
        answer = await client.post(
            f"{service.url}/tracks", headers={"X-API-Key": API_KEY}, files={"file": ("air.wav", audio)}
        )
    assert answer.status_code == 201, answer.text
    track_id = answer.json()["track_id"]
    embedded = TrackEmbedded(
        track_id=track_id,
        sha256=sha256,
        model=ModelIdentity(name="dsp", revision="test", dim=4, pooling="mean"),
        vector=np.ones(4, dtype=np.float32),
    )

    # The status update is an UPDATE of the track row: a lock that blocks writes to tracks holds it.
    holder = await connect_db(stack)
    try:
        lock = holder.transaction()
        await lock.start()
        await holder.execute("LOCK TABLE tracks IN EXCLUSIVE MODE")
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
        await producer.start()
        try:
            sent = await producer.send_and_wait(
                stack.topics.tracks_embedded, embedded.to_bytes(), key=embedded.key().encode()
            )
        finally:
            await producer.stop()

        async def update_waits() -> bool:
            waiting = await holder.fetchval(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'tracks'::regclass"
            )
            return int(waiting) == 1

        await wait_until(update_waits, "the status consumer never reached the track update", within_s=60)
        assert service.process is not None
        service.process.send_signal(signal.SIGTERM)
        await until_shutdown_began(service)
        await until_logged(service, "Waiting for application shutdown.")
        await lock.commit()
    finally:
        await holder.close()

    code, log = await exit_status(service, kubernetes_budget_s())
    assert code == 0, log[-3000:]
    assert "status consumer stopped" in log
    track, _ = await track_and_outbox(stack, track_id)
    assert track is not None and track["status"] == "embedded"
    # The offset after the event is committed for the status group: the next owner will not read it again.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=stack.kafka_bootstrap,
        group_id=f"{stack.topic_prefix}{DEFAULT_STATUS_GROUP}",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        committed = await consumer.committed(TopicPartition(sent.topic, sent.partition))
    finally:
        await consumer.stop()
    assert committed == sent.offset + 1


async def test_a_relay_told_to_finish_publishes_every_pending_row_then_returns(stack: StackSettings) -> None:
    # Rows committed while no relay ran: what a relay finds when the service stops right after a commit.
    settings = ingest_settings(stack, relay_enabled=False)
    async with running_ingest(settings) as service, service.client() as client:
        for hz in (440.0, 494.0, 523.0):
            answer = await client.post("/tracks", files={"file": ("t.wav", tone(hz=hz))})
            assert answer.status_code == 201, answer.text
    assert await table_count(stack, "outbox WHERE published_at IS NULL") == 3

    relay = OutboxRelay(settings)
    relay.finish()  # before it even starts: it must still publish what is pending, once, and return
    await asyncio.wait_for(relay.run(), timeout=60)

    assert await table_count(stack, "outbox WHERE published_at IS NULL") == 0
    records = await read_topic(stack.kafka_bootstrap, stack.topics.tracks_added, at_least=3)
    assert len(records) == 3
