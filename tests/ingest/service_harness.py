"""Running the real ingest app for a test, and reading what it did.

The app runs in the test's event loop behind a real uvicorn server on a free
port, so uploads travel over HTTP exactly as a client sends them (streamed,
multipart). Everything it talks to is the test's own slice of the real stack
(``stack``): topics, bucket, queue, Postgres schema.
"""

import asyncio
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import numpy as np
import soundfile as sf
import uvicorn
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from mess.dev.stack import free_port
from mess.ingest.config import Settings
from mess.ingest.main import create_app
from mess.ingest.resources import IngestResources
from mess.runtime.endpoints import StackSettings

API_KEY = "test-key-0123456789abcdef"


def ingest_settings(stack: StackSettings, **overrides: Any) -> Settings:
    """Quick loops and short timeouts; the reconciler, drop scan and status consumer only where a test asks."""
    values: dict[str, Any] = {
        "stack": stack,
        "port": free_port(),
        "api_keys": API_KEY,
        "relay_poll_s": 0.2,
        "relay_retry_max_s": 1.0,
        "kafka_timeout_ms": 3000,
        "sqs_wait_s": 1,
        "drop_scan_interval_s": 0,
        "status_enabled": False,
        "reconciler_enabled": False,
        "pg_pool_max": 4,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class RunningIngest:
    settings: Settings
    url: str
    resources: IngestResources

    def client(self, api_key: str | None = API_KEY) -> httpx.AsyncClient:
        headers = {"X-API-Key": api_key} if api_key is not None else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=60)


@asynccontextmanager
async def running_ingest(settings: Settings) -> AsyncIterator[RunningIngest]:
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_config=None, lifespan="on"))
    serving = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(60):
            while not server.started:
                if serving.done():
                    serving.result()  # raises what stopped start-up
                    raise RuntimeError("the ingest server exited during start-up")
                await asyncio.sleep(0.02)
        yield RunningIngest(settings, f"http://127.0.0.1:{settings.port}", app.state.resources)
    finally:
        server.should_exit = True
        await serving


def tone(
    seconds: float = 2.0,
    hz: float = 440.0,
    fmt: str = "WAV",
    rate: int = 22050,
    amplitude: float = 0.3,
    subtype: str | None = None,
) -> bytes:
    """A real audio file of a tone; different ``hz`` gives different content."""
    t = np.arange(int(seconds * rate), dtype=np.float32) / rate
    signal = (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    buffer = io.BytesIO()
    default_subtype = {"WAV": "PCM_16", "FLAC": "PCM_16", "OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}
    sf.write(buffer, signal, rate, format=fmt, subtype=subtype or default_subtype.get(fmt))
    return buffer.getvalue()


async def connect_db(stack: StackSettings) -> "asyncpg.Connection[asyncpg.Record]":
    return await asyncpg.connect(stack.postgres_dsn, server_settings={"search_path": stack.postgres_schema})


async def table_count(stack: StackSettings, table: str) -> int:
    connection = await connect_db(stack)
    try:
        return int(await connection.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await connection.close()


async def wait_until(check: Any, what: str, within_s: float = 30.0, interval: float = 0.1) -> Any:
    """Poll an async ``check`` until it returns something truthy (a condition, not a clock, ends the wait)."""
    async with asyncio.timeout(within_s):
        while True:
            value = await check()
            if value:
                return value
            await asyncio.sleep(interval)
    raise AssertionError(what)  # pragma: no cover - timeout raises first


async def outbox_drained(stack: StackSettings, within_s: float = 30.0) -> None:
    """Wait until the relay has published every outbox row."""

    async def drained() -> bool:
        return await table_count(stack, "outbox WHERE published_at IS NULL") == 0

    await wait_until(drained, "the outbox never drained", within_s)


async def read_topic(
    bootstrap: str, topic: str, *, at_least: int = 0, within_s: float = 30.0
) -> list["ConsumerRecord[bytes, bytes]"]:
    """Every record on ``topic`` from the beginning: at least ``at_least`` of them, and all up to the end
    offsets seen once those have arrived (so a test can also assert that nothing more is there)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(await _partitions(consumer, topic))]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        async with asyncio.timeout(within_s):
            while True:
                end = await consumer.end_offsets(partitions)
                positions = [await _position(consumer, p) for p in partitions]
                caught_up = all(position >= end[p] for position, p in zip(positions, partitions, strict=True))
                if len(records) >= at_least and caught_up:
                    return records
                batch = await consumer.getmany(*partitions, timeout_ms=200)
                for chunk in batch.values():
                    records.extend(chunk)
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    async with asyncio.timeout(15):
        while True:
            found = consumer.partitions_for_topic(topic)
            if found:
                return set(found)
            await consumer.topics()  # refreshes metadata for every topic
            await asyncio.sleep(0.1)


async def _position(consumer: AIOKafkaConsumer, partition: TopicPartition) -> int:
    return int(await consumer.position(partition))
