"""Running ``python -m mess.embedder`` as a process on a test's slice of the real stack."""

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from mess.contracts.events import TrackEmbedded, TrackFailed
from mess.dev.stack import free_port
from mess.runtime.endpoints import StackSettings


@dataclass
class EmbedderProcess:
    url: str
    process: "subprocess.Popen[bytes]"
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@contextmanager
def embedder_process(env: dict[str, str], log_path: Path, ready_timeout: float = 120.0) -> Iterator[EmbedderProcess]:
    """Start the service, wait until /health/ready says ready, stop it (SIGTERM) afterwards."""
    port = free_port()
    full_env = {**os.environ, **env, "MESS_EMBEDDER_PORT": str(port)}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "mess.embedder"], env=full_env, stdout=log_file, stderr=subprocess.STDOUT
        )
    running = EmbedderProcess(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the embedder exited with {process.returncode}:\n{running.log()}")
            try:
                if httpx.get(f"{running.url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the embedder was not ready in {ready_timeout:.0f} s:\n{running.log()}")
            time.sleep(0.3)
        yield running
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


async def produce(stack: StackSettings, messages: list[tuple[bytes | None, bytes]], partition: int = 0) -> None:
    """Send (key, value) pairs to TrackAdded, all on one partition so their order is kept."""
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(stack.topics.tracks_added, value, key=key, partition=partition)
    finally:
        await producer.stop()


async def collect(
    stack: StackSettings, embedded: int, failed: int, wait_s: float = 90.0
) -> tuple[list[TrackEmbedded], list[TrackFailed]]:
    """Read the output topics from the start until the expected counts arrive."""
    consumer = AIOKafkaConsumer(
        stack.topics.tracks_embedded,
        stack.topics.tracks_failed,
        bootstrap_servers=stack.kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=f"{stack.topic_prefix}test-reader",
    )
    await consumer.start()
    done: list[TrackEmbedded] = []
    dead: list[TrackFailed] = []
    try:
        async with asyncio.timeout(wait_s):
            while len(done) < embedded or len(dead) < failed:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        if record.topic == stack.topics.tracks_embedded:
                            done.append(TrackEmbedded.from_bytes(record.value))
                        else:
                            dead.append(TrackFailed.from_bytes(record.value))
    except TimeoutError:
        pass  # the caller's assertions say what is missing
    finally:
        await consumer.stop()
    return done, dead
