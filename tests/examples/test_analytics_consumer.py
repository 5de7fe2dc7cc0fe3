"""The analytics example reads real topics and counts what it saw."""

import asyncio
import subprocess
import sys
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaProducer

from mess.contracts import (
    RecommendationServed,
    RecommendedItem,
    RecommendRequestSummary,
    TrackAdded,
)
from mess.runtime.endpoints import StackSettings

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "analytics_consumer.py"


async def _publish(stack: StackSettings) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    await producer.start()
    try:
        for i in range(3):
            added = TrackAdded(track_id=f"t{i}", sha256=f"{i:064x}", audio_uri=f"s3://b/audio/{i}.wav", dataset="demo")
            await producer.send_and_wait(stack.topics.tracks_added, added.to_bytes(), key=added.key().encode())
        rng = np.random.default_rng(0)
        for i in range(5):
            served = RecommendationServed(
                request_id=f"r{i}",
                request=RecommendRequestSummary(track_id="t0", k=2, strategy="similar"),
                results=[
                    RecommendedItem(track_id="t1", score=0.9, rank=1),
                    RecommendedItem(track_id="t2" if i < 2 else "t1x", score=0.8, rank=2),
                ],
                snapshot_version="000000000001",
                latency_ms=float(rng.uniform(1, 3)),
                cached=i % 2 == 1,
            )
            await producer.send_and_wait(stack.topics.recommendations_served, served.to_bytes(), key=b"t0")
        await producer.send_and_wait(stack.topics.recommendations_served, b"not json", key=b"t0")
    finally:
        await producer.stop()


def test_example_counts_recommendations_and_ingest(stack: StackSettings) -> None:
    asyncio.run(_publish(stack))
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE),
            "--bootstrap",
            stack.kafka_bootstrap,
            "--prefix",
            stack.topic_prefix,
            "--group",
            f"{stack.topic_prefix}analytics",
            "--from-beginning",
            "--once",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = result.stdout.strip().split("---")[-1]
    assert "tracks added: 3" in report
    assert "recommendations served: 5" in report
    assert "cache hit rate 40%" in report
    assert "1. t1  recommended 5x" in report
    assert "2. t1x  recommended 3x" in report
    assert "(1 messages were not JSON objects and were skipped)" in report
