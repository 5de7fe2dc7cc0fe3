"""Draws bench/results/query_load.png from the query_load_*.json results.

.venv/bin/python bench/query_plot.py
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("query_load_*.json"))]
    if not runs:
        raise SystemExit("no query_load_*.json results yet: run bench/query_load.py first")
    figure, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.5), squeeze=False)
    for axis, run in zip(axes[0], runs, strict=True):
        rows = run["scenarios"]
        labels = [f"{r['scenario']}\n{r['concurrency']} conn" for r in rows]
        positions = range(len(rows))
        axis.bar([p - 0.2 for p in positions], [r["p50_ms"] for r in rows], width=0.4, label="p50")
        axis.bar([p + 0.2 for p in positions], [r["p99_ms"] for r in rows], width=0.4, label="p99")
        for position, row in zip(positions, rows, strict=True):
            axis.annotate(f"{row['req_per_s']:.0f}/s", (position, row["p99_ms"]), ha="center", va="bottom", fontsize=8)
        axis.set_xticks(list(positions), labels, fontsize=8)
        axis.set_yscale("log")
        axis.set_ylabel("latency (ms, log scale)")
        axis.set_title(f"{run['tracks']:,} tracks x {run['dim']}, {run['shards']} {run['index']} shards")
        axis.legend()
    figure.suptitle("GET /recommend over loopback, 2-core shared CPU machine (req/s above the bars)")
    figure.tight_layout()
    out = RESULTS / "query_load.png"
    figure.savefig(out, dpi=110)
    print(f"written {out}")


if __name__ == "__main__":
    main()
