"""Snapshot build and upload: time and size at 10k, 100k (or 1M) vectors of dimension 768.

The indexer's state is filled directly (no broker; bench/indexer_consume.py
measures consumption), then one full snapshot is published to a private moto
S3 server exactly as the live indexer publishes it: every shard built, tuned,
serialised and uploaded with its ids, vectors and registry facts, then the manifest and
LATEST. Then the snapshot is loaded back as a restarting indexer loads it,
every checksum verified. Then one track changes and a second snapshot is
published, which rebuilds and uploads that track's shard only.

    .venv/bin/python bench/indexer_snapshot.py                    # 10k and 100k
    .venv/bin/python bench/indexer_snapshot.py --sizes 1000000    # the long one (see also indexer_million.py)

Prints the figures and the process's peak memory.
"""

from __future__ import annotations

import argparse
import json
import time

import faiss
import numpy as np
from indexer_workload import Stopwatch, corpus, filled_store, model, peak_rss_mb, private_s3

from mess.indexer.config import Settings
from mess.indexer.publisher import build_options
from mess.indexer.snapshot_store import SnapshotStore
from mess.indexer.snapshots import Checkpoint, PublishedSnapshot, load_snapshot, publish_snapshot
from mess.indexer.track_vectors import ModelGuard, TrackVectors


def publish(
    store: SnapshotStore, state: TrackVectors, settings: Settings, base: PublishedSnapshot | None
) -> PublishedSnapshot:
    shards = state.dirty_shards() if base else list(range(state.shard_count))
    checkpoint = Checkpoint(
        offsets={},
        model=state.model,
        shard_count=state.shard_count,
        captures=state.capture(shards),
        tuning_queries=state.sample(settings.tuning_queries),
        base=base.stored if base else None,
        expect_latest=base.latest.version if base else None,
    )
    lease = store.acquire_lease("bench", 3600)
    try:
        return publish_snapshot(store, checkpoint, build_options(settings), lease, 3600)
    finally:
        store.release_lease(lease)


def run(count: int, dim: int, settings: Settings) -> dict[str, object]:
    clock = Stopwatch()
    vectors, _ = corpus(count, dim, 0)
    state = filled_store(vectors, settings.shard_count)
    del vectors
    fill_s = clock.lap()
    with private_s3() as store:
        clock.lap()
        first = publish(store, state, settings, None)
        publish_s = clock.lap()
        manifest = first.stored.manifest
        index_bytes = sum(s.index.size_bytes for s in manifest.shards)
        vector_bytes = sum(s.vectors.size_bytes for s in manifest.shards)

        loaded = TrackVectors(settings.shard_count, ModelGuard(manifest.model, None))
        load_snapshot(store, manifest.version, loaded)
        load_s = clock.lap()
        assert len(loaded) == count
        del loaded

        state.apply_embedded("track-0000000", model(dim), np.ones(dim, dtype=np.float32), "0" * 64)
        second = publish(store, state, settings, first)
        incremental_s = clock.lap()
    return {
        "vectors": count,
        "shards": settings.shard_count,
        "index_types": sorted({s.index_factory for s in manifest.shards}),
        "search_params": sorted({json.dumps(s.search_params) for s in manifest.shards}),
        "fill_s": round(fill_s, 2),
        "publish_s": round(publish_s, 2),
        "build_s": round(first.build_seconds, 2),
        "upload_s": round(first.upload_seconds, 2),
        "uploaded_mb": round(first.uploaded_bytes / 1e6, 1),
        "index_mb": round(index_bytes / 1e6, 1),
        "index_bytes_per_vector": round(index_bytes / count, 1),
        "vectors_mb": round(vector_bytes / 1e6, 1),
        "min_tuned_recall": round(min(first.recalls.values()), 3) if first.recalls else None,
        "restart_load_s": round(load_s, 2),
        "one_change_publish_s": round(incremental_s, 2),
        "one_change_rebuilt_shards": second.rebuilt_shards,
        "one_change_uploaded_mb": round(second.uploaded_bytes / 1e6, 1),
        "peak_rss_mb": round(peak_rss_mb()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--index", default=None, help="approximate factory (default: the service's)")
    args = parser.parse_args()
    settings = Settings(shard_count=args.shards, **({"approximate_index": args.index} if args.index else {}))
    print(
        f"{faiss.omp_get_max_threads()} OpenMP threads; shards {settings.shard_count}; "
        f"Flat below {settings.flat_threshold:,} per shard, else {settings.approximate_index}",
        flush=True,
    )
    for count in args.sizes:
        started = time.perf_counter()
        print(json.dumps(run(count, args.dim, settings)), f"({time.perf_counter() - started:.0f}s in all)", flush=True)


if __name__ == "__main__":
    main()
