"""Index types compared: bytes per vector, build time, tuned knob, recall@10, latency.

For each FAISS factory string, one index over the whole corpus is built and
tuned exactly as the indexer builds a shard (the knob tuned on stored vectors
to the service's default target), then measured on two workloads of 1,000
queries each: stored tracks, themselves left out (what /recommend/{id} does),
and unseen vectors from the same distribution. Recall@10 is against exact
search; latency is single-query with one OpenMP thread (how the query service
searches). Bytes per vector is the serialised index size, which is its size
in memory. ``--shape manifold`` swaps the clustered corpus for one with no
clusters at all (a 32-dimensional subspace plus noise).

    .venv/bin/python bench/indexer_index_types.py                      # 100k x 768
    .venv/bin/python bench/indexer_index_types.py --vectors 10000
    .venv/bin/python bench/indexer_index_types.py --types HNSW32,SQ8 "IVF{nlist},SQ8" --shape manifold

Prints a Markdown table and saves a recall/latency plot under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import numpy as np
from indexer_workload import corpus

from mess.indexer.config import Settings
from mess.indexer.shard_index import (
    build_shard_index,
    exact_top_k,
    load_index,
    plan_for,
    recall_at_k,
    tuning_truth,
)

RESULTS = Path(__file__).parent / "results"
DEFAULT_TYPES = [
    "Flat",
    "HNSW32,Flat",
    "HNSW32,SQ8",
    "HNSW16,SQ8",
    "IVF{nlist},SQ8",
    "IVF{nlist},PQ96",
    "IVF{nlist},PQ192",
]


def measure(
    vectors: np.ndarray, unseen: np.ndarray, truth: np.ndarray, factory: str, threads: int
) -> dict[str, object]:
    faiss.omp_set_num_threads(threads)
    plan = plan_for(len(vectors), flat_threshold=0, approximate_factory=factory)
    rng = np.random.default_rng(1)
    defaults = Settings()
    tuning = vectors[rng.choice(len(vectors), defaults.tuning_queries, replace=False)]
    started = time.perf_counter()
    built = build_shard_index(
        vectors,
        plan,
        tuning_queries=tuning,
        target_recall=defaults.tuning_recall,
        ef_construction=defaults.hnsw_ef_construction,
    )
    build_s = time.perf_counter() - started
    index = load_index(built.index_bytes, built.search_params)

    faiss.omp_set_num_threads(1)
    # Workload 1, /recommend/{id}: the query is a stored track, which is left
    # out of both lists (the service drops the track itself).
    tracks = vectors[rng.choice(len(vectors), len(unseen), replace=False)]
    track_truth = tuning_truth(tracks, vectors)
    _, found = index.search(tracks, 11)
    others = np.full((len(tracks), 10), -1, dtype=np.int64)
    for row, own in enumerate(track_truth.own_rows):
        kept = [int(label) for label in found[row] if int(label) not in own][:10]
        others[row, : len(kept)] = kept
    track_recall = recall_at_k(track_truth.labels, others)
    # Workload 2: a vector the index has never seen (e.g. a new recording).
    _, found = index.search(unseen, 10)
    unseen_recall = recall_at_k(truth, found)
    latencies = []
    for row in range(len(unseen)):
        started = time.perf_counter()
        index.search(unseen[row : row + 1], 10)
        latencies.append(time.perf_counter() - started)
    ms = np.array(latencies) * 1000
    faiss.omp_set_num_threads(threads)
    return {
        "factory": plan.factory,
        "search_params": built.search_params,
        "bytes_per_vector": len(built.index_bytes) / len(vectors),
        "index_mb": len(built.index_bytes) / 1e6,
        "build_s": build_s,
        "tuning_recall": built.recall_at_10,
        "recall_at_10_tracks": track_recall,
        "recall_at_10_unseen": unseen_recall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def plot(rows: list[dict[str, object]], count: int, dim: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        x, y = float(row["p50_ms"]), float(row["recall_at_10_unseen"])  # type: ignore[arg-type]
        axis.scatter(x, y)
        axis.annotate(f"{row['factory']}\n{float(row['bytes_per_vector']):.0f} B/vec", (x, y), fontsize=8)  # type: ignore[arg-type]
    axis.axhline(0.95, linestyle="--", linewidth=0.8)
    axis.set_xscale("log")
    axis.set_xlabel("single-query latency p50, ms (1 thread, log scale)")
    axis.set_ylabel("recall@10 vs exact, unseen queries")
    axis.set_title(f"Index types on {count:,} clustered vectors of dimension {dim} (2-core CPU)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--threads", type=int, default=2, help="OpenMP threads for builds")
    parser.add_argument("--types", nargs="+", default=DEFAULT_TYPES)
    parser.add_argument("--spread", type=float, default=1.0, help="noise length relative to the cluster centre")
    parser.add_argument(
        "--shape", choices=["clusters", "manifold"], default="clusters", help="manifold: no clusters (32-dim subspace)"
    )
    args = parser.parse_args()

    vectors, queries = corpus(args.vectors, args.dim, args.queries, spread=args.spread, shape=args.shape)
    started = time.perf_counter()
    truth = exact_top_k(queries, vectors)
    exact_s = time.perf_counter() - started
    print(f"{args.vectors:,} x {args.dim} vectors; exact top-10 of {args.queries} queries in {exact_s:.1f}s")

    rows = []
    for factory in args.types:
        row = measure(vectors, queries, truth, factory, args.threads)
        rows.append(row)
        print(json.dumps(row), flush=True)

    print()
    print("| index | B/vector | build s | tuned | recall@10 tracks | recall@10 unseen | p50 ms | p99 ms |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        tuned = ", ".join(f"{k}={v}" for k, v in row["search_params"].items()) or "exact"  # type: ignore[attr-defined]
        print(
            f"| {row['factory']} | {row['bytes_per_vector']:.0f} | {row['build_s']:.1f} | {tuned} | "
            f"{row['recall_at_10_tracks']:.3f} | {row['recall_at_10_unseen']:.3f} | "
            f"{row['p50_ms']:.3f} | {row['p99_ms']:.3f} |"
        )
    RESULTS.mkdir(exist_ok=True)
    name = f"indexer_index_types_{args.vectors}" + (f"_spread{args.spread:g}" if args.spread != 1.0 else "")
    name += "_manifold" if args.shape == "manifold" else ""
    plot(rows, args.vectors, args.dim, RESULTS / f"{name}.png")
    (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=1))
    path = RESULTS / f"{name}.png"
    print(f"\nplot: {path}")


if __name__ == "__main__":
    main()
