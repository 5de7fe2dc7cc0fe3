"""Load on the real query service over loopback: cached, uncached, and during ten swaps.

Starts `python -m mess.query` as its own process against the local stack (broker,
Postgres, Redis, S3 endpoint; `make stack`), with names of its own (topic prefix,
bucket, schema, Redis prefix) that are removed afterwards. It publishes a snapshot
of N synthetic tracks (768 dims by default, like the MERT embedder; the DSP one is
smaller), registers the tracks in Postgres, then drives GET /recommend with a
small asyncio HTTP/1.1 keep-alive client in this process (the other core):

- uncached: every request a track not asked before (a Redis miss, a search, the
  metadata of its neighbours from Postgres or the in-process cache, a Redis write)
- cached: the same 200 tracks again and again (Redis hits)
- swaps: half hot, half new tracks while ten snapshots are published one after
  another (each replaces one shard, as the indexer's incremental snapshots do)

    .venv/bin/python bench/query_load.py --tracks 10000 --index Flat
    .venv/bin/python bench/query_load.py --tracks 100000 --index HNSW32 --shards 4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import httpx
import numpy as np
from aiokafka import AIOKafkaProducer
from query_corpus import BuiltShard, build_shard, build_shards, npy_bytes, search_params
from redis.asyncio import Redis

from mess.contracts.events import ModelIdentity, SnapshotCounts, SnapshotPublished
from mess.contracts.storage import LATEST_KEY, ShardManifest, SnapshotManifest, StoredFile, manifest_key
from mess.dev import stack as local
from mess.runtime import kafka
from mess.runtime.endpoints import StackSettings

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MIGRATION = ROOT / "services/ingest/src/mess/ingest/migrations/0001_tracks.sql"
COMPOSERS = ["Bach", "Mozart", "Chopin", "Debussy", "Brahms", "Ravel", "Schubert", "Liszt"]


# --- the stack, under names of our own ---------------------------------------------


def bench_stack() -> StackSettings:
    suffix = uuid.uuid4().hex[:8]
    return StackSettings().model_copy(
        update={
            "topic_prefix": f"bench{suffix}.",
            "bucket": f"mess-bench{suffix}",
            "sqs_queue": f"mess-bench{suffix}",
            "postgres_schema": f"bench_{suffix}",
            "redis_prefix": f"bench{suffix}:",
            "topic_partitions": 1,
        }
    )


async def register_tracks(stack: StackSettings, ids: list[str]) -> None:
    connection = await asyncpg.connect(stack.postgres_dsn)
    try:
        await connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{stack.postgres_schema}"')
        await connection.execute(f'SET search_path TO "{stack.postgres_schema}"')
        await connection.execute(MIGRATION.read_text(encoding="utf-8"))
        records = [
            (
                track_id,
                hashlib.sha256(track_id.encode()).hexdigest(),
                f"s3://{stack.bucket}/audio/{track_id}.wav",
                "bench",
                f"Piece {i}",
                COMPOSERS[i % len(COMPOSERS)],
                "indexed",
            )
            for i, track_id in enumerate(ids)
        ]
        await connection.copy_records_to_table(
            "tracks",
            records=records,
            columns=["id", "sha256", "audio_uri", "dataset", "title", "composer", "status"],
            schema_name=stack.postgres_schema,
        )
    finally:
        await connection.close()


async def forget_redis_keys(stack: StackSettings) -> int:
    redis = Redis.from_url(stack.redis_url)
    removed = 0
    try:
        async for key in redis.scan_iter(match=f"{stack.redis_prefix}*", count=1000):
            removed += await redis.delete(key)
    finally:
        await redis.aclose()
    return removed


# --- snapshots, the way the indexer publishes them ---------------------------------


class SnapshotPublisher:
    def __init__(self, stack: StackSettings) -> None:
        self.stack = stack
        s3_kwargs: dict[str, Any] = stack.s3_client_kwargs()
        self.s3: Any = boto3.client("s3", **s3_kwargs)

    def _put(self, key: str, body: bytes) -> StoredFile:
        self.s3.put_object(Bucket=self.stack.bucket, Key=key, Body=body)
        return StoredFile(key=key, sha256=hashlib.sha256(body).hexdigest(), size_bytes=len(body))

    def upload_shard(self, version: str, number: int, shard: BuiltShard, factory: str) -> ShardManifest:
        folder = f"snapshots/{version}/"
        return ShardManifest(
            shard=number,
            count=len(shard.ids),
            index_factory=factory,
            index=self._put(f"{folder}shard-{number:03d}.faiss", shard.index_bytes),
            ids=self._put(f"{folder}shard-{number:03d}.ids.json", json.dumps(shard.ids).encode()),
            vectors=self._put(f"{folder}shard-{number:03d}.vectors.npy", npy_bytes(shard.vectors)),
            built_in=version,
            search_params=search_params(factory),
        )

    def publish_manifest(self, version: str, shards: list[ShardManifest], dim: int) -> SnapshotManifest:
        manifest = SnapshotManifest(
            version=version,
            created_at=datetime.now(UTC),
            model=ModelIdentity(name="bench", revision="1", dim=dim, pooling="none"),
            dim=dim,
            shard_count=len(shards),
            vector_count=sum(s.count for s in shards),
            shards=shards,
        )
        self.s3.put_object(
            Bucket=self.stack.bucket, Key=manifest_key(version), Body=manifest.model_dump_json().encode()
        )
        self.s3.put_object(Bucket=self.stack.bucket, Key=LATEST_KEY, Body=version.encode())
        return manifest

    async def announce(self, producer: AIOKafkaProducer, manifest: SnapshotManifest) -> None:
        event = SnapshotPublished(
            version=manifest.version,
            manifest_uri=f"s3://{self.stack.bucket}/{manifest_key(manifest.version)}",
            counts=SnapshotCounts(vectors=manifest.vector_count, shards=len(manifest.shards)),
            model=manifest.model,
        )
        await producer.send_and_wait(self.stack.topics.index_snapshots, event.to_bytes(), key=event.key().encode())


# --- the load generator ------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.cached = 0
        self.versions: dict[str, int] = {}


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> tuple[int, bytes]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def drive(
    port: int, next_path: Callable[[], str], concurrency: int, until: Callable[[], bool], recorder: Recorder
) -> float:
    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not until():
                path = next_path()
                started = time.perf_counter()
                try:
                    status, body = await _request(reader, writer, path)
                except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                    recorder.errors.append(f"{path}: {exc!r}")
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    continue
                recorder.latencies.append(time.perf_counter() - started)
                if status != 200:
                    recorder.errors.append(f"{path}: {status} {body[:200]!r}")
                    continue
                # The two per-request fields sit at the end of the body; no full parse needed.
                tail = body[-80:]
                recorder.cached += b'"cached":true' in tail
                start = body.find(b'"snapshot_version":"') + 20
                version = body[start : start + 12].decode()
                recorder.versions[version] = recorder.versions.get(version, 0) + 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return time.perf_counter() - started


def summary(name: str, recorder: Recorder, elapsed: float) -> dict[str, Any]:
    ms = np.array(recorder.latencies) * 1000 if recorder.latencies else np.array([0.0])
    row = {
        "scenario": name,
        "requests": len(recorder.latencies),
        "errors": len(recorder.errors),
        "cached_share": recorder.cached / max(len(recorder.latencies), 1),
        "req_per_s": len(recorder.latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "versions_served": len(recorder.versions),
    }
    print(
        f"  {name:<10} {row['requests']:>7} req {row['req_per_s']:>7.0f} req/s  p50 {row['p50_ms']:6.2f} ms  "
        f"p90 {row['p90_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms  errors {row['errors']}  "
        f"cached {row['cached_share']:.0%}"
    )
    for error in recorder.errors[:5]:
        print(f"    error: {error}")
    return row


def for_seconds(seconds: float) -> Callable[[], bool]:
    deadline = time.perf_counter() + seconds
    return lambda: time.perf_counter() >= deadline


# --- the run -----------------------------------------------------------------------


def start_service(stack: StackSettings, port: int, cache_dir: str, log_path: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **local.stack_env(stack),
        "MESS_QUERY_PORT": str(port),
        "MESS_QUERY_SNAPSHOT_CACHE_DIR": cache_dir,
        "MESS_QUERY_CACHE_TTL_S": "900",
        "MESS_QUERY_LOG_LEVEL": "WARNING",
    }
    log = log_path.open("wb")
    return subprocess.Popen([sys.executable, "-m", "mess.query"], env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_for_version(port: int, version: str, timeout_s: float = 300) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        with contextlib.suppress(httpx.TransportError):
            body = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=5).json()
            if body.get("snapshot_version") == version:
                return time.perf_counter() - started
        time.sleep(0.05)
    raise RuntimeError(f"snapshot {version} not served within {timeout_s}s")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    stack = bench_stack()
    print(f"setting up {args.tracks} tracks x {args.dim} dims, {args.shards} {args.index} shards ...")
    shards = build_shards(args.tracks, args.dim, args.shards, args.index)
    # Two versions of shard 0 to alternate between, so every swap brings new bytes to fetch and load.
    rng = np.random.default_rng(7)
    changed_vectors = shards[0].vectors + 0.01 * rng.standard_normal(shards[0].vectors.shape, dtype=np.float32)
    changed_vectors /= np.linalg.norm(changed_vectors, axis=1, keepdims=True)
    variants = [shards[0], build_shard(shards[0].ids, changed_vectors.astype(np.float32), args.index)]
    ids = [track_id for shard in shards for track_id in shard.ids]

    await local.create_topics(stack)
    local.provision_storage(stack)
    service: subprocess.Popen[bytes] | None = None
    work_dir = Path(tempfile.mkdtemp(prefix="mess-bench-query-"))
    cache_dir = str(work_dir / "snapshots")
    log_path = work_dir / "service.log"
    results: dict[str, Any] = {
        "tracks": args.tracks,
        "dim": args.dim,
        "shards": args.shards,
        "index": args.index,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "machine": f"{os.cpu_count()}-core CPU, shared",
    }
    try:
        await register_tracks(stack, ids)
        publisher = SnapshotPublisher(stack)
        first = [publisher.upload_shard("000000000001", n, s, args.index) for n, s in enumerate(shards)]
        publisher.publish_manifest("000000000001", first, args.dim)
        port = local.free_port()
        service = start_service(stack, port, cache_dir, log_path)
        load_s = wait_for_version(port, "000000000001")
        results["first_load_s"] = load_s
        print(f"  service ready on snapshot 1 after {load_s:.1f}s")

        order = ids.copy()
        random.Random(3).shuffle(order)
        hot = order[-200:]
        fresh: Iterator[int] = itertools.count()

        def uncached_path() -> str:
            # Each track once; past the end, the same tracks with another k (a new cache key).
            turn = next(fresh)
            return f"/recommend/{order[turn % (len(order) - 200)]}?k={11 + turn // (len(order) - 200)}"

        def cached_path() -> str:
            return f"/recommend/{random.choice(hot)}?k=10"

        async with httpx.AsyncClient() as client:  # warm the hot set (and the connections)
            for track_id in hot:
                await client.get(f"http://127.0.0.1:{port}/recommend/{track_id}?k=10")

        rows = []
        for concurrency in args.concurrency:
            print(f"  {concurrency} connection(s):")
            recorder = Recorder()
            elapsed = await drive(port, uncached_path, concurrency, for_seconds(args.seconds), recorder)
            rows.append({**summary("uncached", recorder, elapsed), "concurrency": concurrency})
            recorder = Recorder()
            elapsed = await drive(port, cached_path, concurrency, for_seconds(args.seconds), recorder)
            rows.append({**summary("cached", recorder, elapsed), "concurrency": concurrency})

        # Ten swaps while the load runs.
        swap_times: list[float] = []
        done = asyncio.Event()

        async def swapper() -> None:
            producer = kafka.producer(stack, client_id="mess-bench")
            await producer.start()
            try:
                previous = first
                for number in range(2, 12):
                    version = f"{number:012d}"
                    variant = variants[(number - 1) % 2]
                    entry = await asyncio.to_thread(publisher.upload_shard, version, 0, variant, args.index)
                    entries = [entry, *previous[1:]]  # the other shards are the earlier snapshot's files
                    manifest = await asyncio.to_thread(publisher.publish_manifest, version, entries, args.dim)
                    started = time.perf_counter()
                    await publisher.announce(producer, manifest)
                    await asyncio.to_thread(wait_for_version, port, version)
                    swap_times.append(time.perf_counter() - started)
                    previous = entries
            finally:
                await producer.stop()
                done.set()

        def mixed_path() -> str:
            return uncached_path() if random.random() < 0.5 else cached_path()

        recorder = Recorder()
        swapping = asyncio.create_task(swapper())
        concurrency = max(args.concurrency)
        print(f"  {concurrency} connection(s), half new and half hot tracks, during ten swaps:")
        elapsed = await drive(port, mixed_path, concurrency, done.is_set, recorder)
        await swapping
        row = {**summary("swaps", recorder, elapsed), "concurrency": concurrency}
        row["swap_seconds"] = swap_times
        print(
            f"  ten swaps: announce -> served {np.mean(swap_times):.2f}s mean, {max(swap_times):.2f}s max; "
            f"{row['versions_served']} snapshot versions answered requests"
        )
        rows.append(row)
        results["scenarios"] = rows
        return results
    finally:
        if service is not None:
            service.terminate()
            try:
                service.wait(timeout=30)
            except subprocess.TimeoutExpired:
                service.kill()
        shutil.rmtree(cache_dir, ignore_errors=True)  # the service's downloaded snapshots; the log stays
        removed = await forget_redis_keys(stack)
        await local.drop_schema(stack)
        await local.delete_topics(stack)
        local.delete_storage(stack)
        print(f"  cleaned up (bench schema, topics, bucket, {removed} Redis keys); service log: {log_path}")
        problems = [line for line in log_path.read_text(errors="replace").splitlines() if " ERROR " in line]
        if problems:
            print(f"  {len(problems)} ERROR lines in the service log, first: {problems[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--index", default="Flat", help="faiss index_factory string, e.g. Flat or HNSW32")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="keep-alive connections")
    parser.add_argument("--seconds", type=float, default=15, help="per cached/uncached scenario")
    args = parser.parse_args()
    before = os.getloadavg()[0]
    results = asyncio.run(run(args))
    # The machine is shared: the load average says how much else was running.
    results["load_average_1min"] = {"before": before, "after": os.getloadavg()[0]}
    print(f"1-minute load average: {before:.1f} before, {os.getloadavg()[0]:.1f} after ({os.cpu_count()} cores)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"query_load_{args.tracks}_{args.index}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
