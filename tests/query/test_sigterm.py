"""SIGTERM to a running `python -m mess.query` with requests in flight: every one is answered in full,
their analytics events reach the broker, and the process exits 0 within the time Kubernetes gives it.

The requests are held in flight by things the test controls, not by sleeps: /recommend requests wait on
a Postgres lock the test holds on ``tracks`` (their metadata read), /audio downloads wait on a client
that stops reading after the headers (a small receive buffer, so the 16 MB body cannot be buffered
away). SIGTERM is sent while they wait; once new connections are refused (the shutdown has begun),
the lock is released and the downloads read on.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import httpx
import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from mess.contracts.events import RecommendationServed
from mess.dev.pipeline import ServiceProcess
from mess.dev.stack import free_port
from mess.query.analytics import AnalyticsPublisher
from mess.query.config import Settings
from mess.query.metrics import QueryMetrics
from mess.runtime.endpoints import StackSettings

from .conftest import Catalogue, apply_registry, insert_tracks, track_row
from .snapshot_writer import SnapshotWriter

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy/k8s/base/query.yaml"
AUDIO_BYTES = 16 * 1024 * 1024
RECEIVE_BUFFER = 32 * 1024


def kubernetes_budget_s() -> float:
    """Seconds between SIGTERM and SIGKILL in the manifest: the grace period less the preStop sleep."""
    text = MANIFEST.read_text(encoding="utf-8")
    grace = re.search(r"terminationGracePeriodSeconds:\s*(\d+)", text)
    pre_stop = re.search(r'command:\s*\["sleep",\s*"(\d+)"\]', text)
    assert grace is not None and pre_stop is not None, "the manifest no longer states its grace period and preStop"
    return float(grace.group(1)) - float(pre_stop.group(1))


async def until(check: Any, what: str, within_s: float = 30.0, interval: float = 0.05) -> None:
    """Poll an async ``check`` until it is true (a condition, not a clock, ends the wait)."""
    try:
        async with asyncio.timeout(within_s):
            while not await check():  # noqa: ASYNC110 - the condition lives in another process
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(what) from None


def accepts_connections(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def metrics_text(service: ServiceProcess) -> str:
    async with httpx.AsyncClient(timeout=5) as client:
        return (await client.get(f"{service.url}/metrics")).text


def completed_requests(metrics: str, route: str) -> float:
    """How many requests to ``route`` have been answered (the timer records a request when it completes)."""
    pattern = rf'^mess_query_request_seconds_count\{{route="{re.escape(route)}",status="\d+"\}} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, metrics, re.MULTILINE))


class HeldDownload:
    """GET /audio over a raw socket whose reader stops after the headers, so the response cannot complete."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int, length: int) -> None:
        self.reader = reader
        self.writer = writer
        self.status = status
        self.length = length

    @classmethod
    async def start(cls, port: int, track_id: str) -> HeldDownload:
        sock = socket.socket()
        # A small, fixed receive buffer (no autotuning): the kernel cannot soak up the body for us.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=RECEIVE_BUFFER)
        writer.write(f"GET /audio/{track_id} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status = int(head.split(" ", 2)[1])
        length = re.search(r"(?im)^content-length:\s*(\d+)", head)
        assert length is not None, head
        return cls(reader, writer, status, int(length.group(1)))

    async def read_body(self) -> bytes:
        try:
            return await self.reader.readexactly(self.length)
        finally:
            self.writer.close()


def start_query(stack_env: dict[str, str], tmp_path: Path) -> ServiceProcess:
    """The service as `make up` runs it (default shutdown_grace_s), reading LATEST often."""
    port = free_port()
    env = {
        **os.environ,
        **stack_env,
        "MESS_QUERY_PORT": str(port),
        "MESS_QUERY_SNAPSHOT_CACHE_DIR": str(tmp_path / "snapshots"),
        "MESS_QUERY_SNAPSHOT_POLL_S": "0.5",
        # The test holds the registry's lock for a few seconds; the default 5 s would turn that into 503s.
        "MESS_QUERY_PG_COMMAND_TIMEOUT_S": "60",
    }
    env.pop("MESS_QUERY_SHUTDOWN_GRACE_S", None)
    service = ServiceProcess("query", port, env, tmp_path / "query.log")
    service.start()
    service.wait_live(timeout=60)
    return service


async def fully_ready(service: ServiceProcess) -> None:
    """Ready and not degraded: the snapshot serves and the analytics producer is connected."""

    async def ready() -> bool:
        assert service.running, service.log_path.read_text(errors="replace")[-3000:]
        async with httpx.AsyncClient(timeout=5) as client:
            answer = await client.get(f"{service.url}/health/ready")
        return answer.status_code == 200 and answer.json()["status"] == "ready"

    await until(ready, "the query service never became ready", within_s=60, interval=0.2)


async def exit_status(service: ServiceProcess, within_s: float) -> tuple[int | None, str]:
    assert service.process is not None
    try:
        code: int | None = await asyncio.to_thread(service.process.wait, within_s)
    except subprocess.TimeoutExpired:
        code = None
        service.kill()
    return code, service.log_path.read_text(errors="replace")


async def served_events(stack: StackSettings, at_least: int, within_s: float = 30.0) -> list[RecommendationServed]:
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    events: list[RecommendationServed] = []
    try:
        topic = stack.topics.recommendations_served
        await consumer.topics()
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        assert partitions, f"no partitions for {topic}"
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + within_s
        while len(events) < at_least and time.monotonic() < deadline:
            batch = await consumer.getmany(*partitions, timeout_ms=200)
            events.extend(RecommendationServed.from_bytes(r.value) for rs in batch.values() for r in rs)
        # One more fetch, so that a duplicate right behind them shows up too. (Not end_offsets(): Tansu
        # answers the base offset of the last batch + 1 there, not the offset after its last record.)
        batch = await consumer.getmany(*partitions, timeout_ms=500)
        events.extend(RecommendationServed.from_bytes(r.value) for rs in batch.values() for r in rs)
    finally:
        await consumer.stop()
    return events


@pytest.fixture
def stopped_at_end() -> Iterator[list[ServiceProcess]]:
    """Services a test started; killed at the end whatever happened (a passing test has stopped them already)."""
    started: list[ServiceProcess] = []
    yield started
    for service in started:
        service.kill()


async def test_sigterm_with_recommend_and_audio_requests_in_flight_answers_all_flushes_analytics_exits_0(
    stack: StackSettings,
    stack_env: dict[str, str],
    tmp_path: Path,
    catalogue: Catalogue,
    writer: SnapshotWriter,
    stopped_at_end: list[ServiceProcess],
) -> None:
    await apply_registry(stack)
    # A WAV header (what /audio recognises audio by), then noise.
    noise = np.random.default_rng(7).integers(0, 256, AUDIO_BYTES - 12, dtype=np.uint8).tobytes()
    audio = b"RIFF\x00\x00\x00\x00WAVE" + noise
    sha = hashlib.sha256(audio).hexdigest()
    s3_kwargs: dict[str, Any] = stack.s3_client_kwargs()
    boto3.client("s3", **s3_kwargs).put_object(Bucket=stack.bucket, Key=f"audio/{sha[:2]}/{sha}.wav", Body=audio)
    recording = track_row("sigterm-recording", status="registered", title="Goldberg aria")
    recording.update(sha256=sha, audio_uri=f"s3://{stack.bucket}/audio/{sha[:2]}/{sha}.wav")
    await insert_tracks(stack, [*catalogue.rows, recording])
    writer.write(1, catalogue.shards(2), dim=16)
    service = start_query(stack_env, tmp_path)
    stopped_at_end.append(service)
    await fully_ready(service)

    downloads = [await HeldDownload.start(service.port, "sigterm-recording") for _ in range(2)]
    seeds = catalogue.ids[::15]  # one seed per family
    holder = await asyncpg.connect(stack.postgres_dsn, server_settings={"search_path": stack.postgres_schema})
    try:
        lock = holder.transaction()
        await lock.start()
        await holder.execute("LOCK TABLE tracks IN ACCESS EXCLUSIVE MODE")
        async with httpx.AsyncClient(timeout=90) as client:
            recommendations = [
                asyncio.create_task(
                    client.get(
                        f"{service.url}/recommend/{seed}",
                        params={"k": 5},
                        headers={"X-Request-Id": f"sigterm-{number}"},
                    )
                )
                for number, seed in enumerate(seeds)
            ]

            async def all_waiting() -> bool:
                waiting = await holder.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'tracks'::regclass"
                )
                return int(waiting) == len(seeds)

            await until(all_waiting, "the /recommend requests never reached the registry")
            metrics = await metrics_text(service)
            # Nothing answered yet: all six requests are in flight when the signal comes.
            assert completed_requests(metrics, "/audio/{track_id}") == 0
            assert completed_requests(metrics, "/recommend/{track_id}") == 0
            assert service.process is not None
            service.process.send_signal(signal.SIGTERM)

            async def refused() -> bool:
                return not accepts_connections(service.port)

            await until(refused, "the service kept accepting connections after SIGTERM", within_s=15, interval=0.02)
            await lock.commit()
            answers = await asyncio.gather(*recommendations)
            bodies = await asyncio.gather(*(download.read_body() for download in downloads))
    finally:
        await holder.close()

    code, log = await exit_status(service, kubernetes_budget_s())
    for seed, answer in zip(seeds, answers, strict=True):
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["reference_track"]["track_id"] == seed
        assert [r["track_id"] for r in body["recommendations"]] == catalogue.expected_neighbours(seed, 5)
    for download, body in zip(downloads, bodies, strict=True):
        assert download.status == 200
        assert hashlib.sha256(body).hexdigest() == sha  # every byte of the 16 MB, none lost to the shutdown
    assert code == 0, log[-3000:]
    assert "Application shutdown complete" in log and "snapshot follower stopped" in log
    # The analytics events of the requests answered during the shutdown were flushed before exit.
    events = await served_events(stack, at_least=len(seeds))
    assert sorted(e.request_id for e in events) == [f"sigterm-{n}" for n in range(len(seeds))]
    assert {e.request.track_id for e in events} == set(seeds)


async def test_stopping_the_analytics_publisher_flushes_every_queued_event_to_the_broker(
    stack: StackSettings,
) -> None:
    settings = Settings(stack=stack)
    metrics = QueryMetrics()
    publisher = AnalyticsPublisher(settings, metrics)
    await publisher.start()

    async def connected() -> bool:
        return publisher.connected

    await until(connected, "the analytics producer never connected")
    queued = [
        RecommendationServed.model_validate(
            {
                "request_id": f"flush-{n}",
                "request": {"track_id": f"bach-{n:03d}", "k": 3, "strategy": "similar", "params": {}},
                "results": [],
                "snapshot_version": "000000000001",
                "latency_ms": 1.0,
                "cached": False,
            }
        )
        for n in range(50)
    ]
    for event in queued:
        publisher.offer(event)  # queued only: the publishing task has not run yet
    await publisher.stop(within_s=30)

    assert metrics.registry.get_sample_value("mess_query_analytics_published_total") == len(queued)
    events = await served_events(stack, at_least=len(queued))
    assert sorted(e.request_id for e in events) == sorted(e.request_id for e in queued)
