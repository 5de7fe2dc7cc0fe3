"""In-process FAISS search time alone: the floor under the service's /recommend latency.

For each size and index kind: one query at a time (as the service runs them, one
OpenMP thread), first on the raw FAISS shards, then through the service's own
``SnapshotSearcher`` (every shard plus the exact merge), so the merge's cost and,
compared with query_load.py, the service's overhead are visible.

    .venv/bin/python bench/query_faiss_search.py            # 10k and 100k, 768 dims
    .venv/bin/python bench/query_faiss_search.py --sizes 10000 --dim 128
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import faiss
import numpy as np
from query_corpus import build_shards, search_params

from mess.contracts.storage import SnapshotManifest
from mess.query.searcher import LoadedShard, SnapshotSearcher

RESULTS = Path(__file__).parent / "results"
NEIGHBOURS = 16  # what /recommend?k=10&strategy=similar asks the shards for (k + self + margin)


def _percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.array(samples) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


def measure(count: int, dim: int, shards: int, factory: str, queries: int) -> dict[str, object]:
    built = build_shards(count, dim, shards, factory)
    loaded = []
    for number, shard in enumerate(built):
        index = faiss.deserialize_index(np.frombuffer(shard.index_bytes, dtype=np.uint8))
        for name, value in search_params(factory).items():
            faiss.ParameterSpace().set_index_parameter(index, name, value)
        loaded.append(LoadedShard(number, index, tuple(shard.ids), shard.vectors, (str(number), "", "", "")))
    manifest = SnapshotManifest.model_validate(
        {
            "version": "000000000001",
            "created_at": "2026-01-01T00:00:00Z",
            "model": {"name": "bench", "revision": "1", "dim": dim, "pooling": "none"},
            "dim": dim,
            "shard_count": shards,
            "vector_count": count,
            "shards": [],
        }
    )
    searcher = SnapshotSearcher(manifest=manifest, shards=tuple(loaded))
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(1)
    picks = [searcher.shards[int(rng.integers(shards))] for _ in range(queries)]
    rows = [int(rng.integers(p.count)) for p in picks]
    raw: list[float] = []
    merged: list[float] = []
    recall_hits = 0
    for shard, row in zip(picks, rows, strict=True):
        query = np.ascontiguousarray(shard.vectors[row : row + 1])
        started = time.perf_counter()
        for each in searcher.shards:
            each.index.search(query, NEIGHBOURS)
        raw.append(time.perf_counter() - started)
        started = time.perf_counter()
        found = searcher.search(query[0], NEIGHBOURS)
        merged.append(time.perf_counter() - started)
        recall_hits += found[0].track_id == shard.ids[row]
    return {
        "tracks": count,
        "dim": dim,
        "shards": shards,
        "index": factory,
        "queries": queries,
        "faiss_shards": _percentiles(raw),
        "searcher_with_merge": _percentiles(merged),
        "self_found_first": recall_hits / queries,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--indexes", nargs="+", default=["Flat", "HNSW32"])
    parser.add_argument("--queries", type=int, default=500)
    args = parser.parse_args()
    results = []
    print(f"FAISS search alone, {args.dim} dims, {args.shards} shards, top {NEIGHBOURS}, one thread per query")
    print(f"{'tracks':>8} {'index':>8} | {'FAISS p50':>9} {'p99':>7} | {'+merge p50':>10} {'p99':>7} | self@1")
    for count in args.sizes:
        for factory in args.indexes:
            row = measure(count, args.dim, args.shards, factory, args.queries)
            results.append(row)
            raw, merged = row["faiss_shards"], row["searcher_with_merge"]
            assert isinstance(raw, dict) and isinstance(merged, dict)
            print(
                f"{count:>8} {factory:>8} | {raw['p50_ms']:>7.2f}ms {raw['p99_ms']:>5.2f}ms | "
                f"{merged['p50_ms']:>8.2f}ms {merged['p99_ms']:>5.2f}ms | {row['self_found_first']:.3f}"
            )
    print(f"1-minute load average at the end: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores, shared machine)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"query_faiss_search_{args.dim}d_{args.shards}shards.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
