"""Vectors consumed per second: TrackEmbedded events through the real broker into the indexer.

Needs the local stack's broker (`make stack`). Uses topics of its own (a fresh
prefix, deleted afterwards) and a private moto S3 server. Produces N events
of dimension 768 first, then starts the real ``Indexer`` (snapshots held back)
and times it from start until every event is applied: decode, validate,
normalise, shard, store. Then one snapshot of the result is published, so
the catch-up-then-checkpoint path is timed end to end.

    .venv/bin/python bench/indexer_consume.py --events 10000
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from indexer_workload import corpus, model, peak_rss_mb, private_s3, track_id

from mess.contracts.events import TrackAdded, TrackEmbedded
from mess.contracts.topics import REGISTRY_SEQUENCE_HEADER
from mess.dev import stack as local
from mess.indexer.config import Settings
from mess.indexer.indexer import Indexer
from mess.runtime import kafka
from mess.runtime.endpoints import StackSettings


async def produce(stack: StackSettings, count: int, dim: int) -> float:
    vectors, _ = corpus(count, dim, 0)
    identity = model(dim)
    producer = kafka.producer(stack, client_id="mess-bench", linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    started = time.perf_counter()
    try:
        sends = []
        for row in range(count):
            # The indexer indexes only content the registry announced, so each
            # embedding follows its TrackAdded, as from ingest's outbox relay.
            added = TrackAdded(
                track_id=track_id(row), sha256="0" * 64, audio_uri="s3://bench/audio.wav", dataset="bench"
            )
            sequence = [(REGISTRY_SEQUENCE_HEADER, str(row + 1).encode())]
            sends.append(
                await producer.send(
                    stack.topics.tracks_added, added.to_bytes(), key=added.key().encode(), headers=sequence
                )
            )
            event = TrackEmbedded(track_id=track_id(row), sha256="0" * 64, model=identity, vector=vectors[row])
            sends.append(await producer.send(stack.topics.tracks_embedded, event.to_bytes(), key=event.key().encode()))
        await asyncio.gather(*sends)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def consume(settings: Settings, count: int) -> tuple[float, float, int]:
    indexer = Indexer(settings)
    await indexer.start()
    started = time.perf_counter()
    run = asyncio.create_task(indexer.run())
    try:
        while indexer.vectors is None or len(indexer.vectors) < count:
            if run.done():
                run.result()
            await asyncio.sleep(0.05)
        consumed_s = time.perf_counter() - started
        # The count trigger (set to N) starts the catch-up snapshot right away.
        while indexer.latest is None or indexer.latest.version == "000000000001":
            if run.done():
                run.result()
            await asyncio.sleep(0.05)
        snapshot_s = time.perf_counter() - started - consumed_s
        return consumed_s, snapshot_s, len(indexer.vectors)
    finally:
        indexer.request_stop()
        await run
        await indexer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--partitions", type=int, default=8)
    args = parser.parse_args()

    suffix = uuid.uuid4().hex[:8]
    stack = StackSettings().model_copy(update={"topic_prefix": f"ibench{suffix}.", "topic_partitions": args.partitions})
    asyncio.run(local.create_topics(stack))
    try:
        with private_s3() as store:
            stack = stack.model_copy(update={"s3_endpoint_url": store.s3.meta.endpoint_url, "bucket": store.bucket})
            produce_s = asyncio.run(produce(stack, args.events, args.dim))
            print(f"produced {args.events:,} events of dim {args.dim} in {produce_s:.1f}s", flush=True)
            settings = Settings(
                stack=stack,
                group_id=f"{stack.topic_prefix}mess-indexer",
                snapshot_every_changes=2 * args.events,  # each vector and its TrackAdded
                snapshot_interval_s=10**6,
            )
            consumed_s, snapshot_s, held = asyncio.run(consume(settings, args.events))
    finally:
        asyncio.run(local.delete_topics(stack))
    print(
        f"consumed {held:,} events in {consumed_s:.2f}s after start-up: {held / consumed_s:,.0f} vectors/s; "
        f"then the snapshot of all of them in {snapshot_s:.2f}s; peak RSS {peak_rss_mb():.0f} MB"
    )


if __name__ == "__main__":
    main()
