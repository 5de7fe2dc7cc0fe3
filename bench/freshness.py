"""Freshness: from `POST /tracks` to the first successful `/recommend` for that track.

Starts the four services on the `dsp` backend against the local stack
(`make stack` first; this uses its own topic prefix, bucket and schema so it
never touches a running demo), uploads 30-second renditions one at a time and
polls `/recommend/{id}` until it answers 200. Prints p50 and p95.

    .venv/bin/python bench/freshness.py --tracks 20
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from mess.corpus import demo_renditions, render_to_file
from mess.dev import stack as local
from mess.dev.pipeline import Pipeline
from mess.runtime.endpoints import StackSettings

API_KEY = "freshness-bench-key"


def measure(settings: StackSettings, args: argparse.Namespace) -> list[float]:
    """Seconds from each upload to the first 200 of /recommend for that track."""
    work = Path(tempfile.mkdtemp(prefix="mess-freshness-"))
    renditions = demo_renditions(args.tracks, renditions_per_work=1)[: args.tracks]
    print(f"rendering {len(renditions)} tracks of {args.seconds:.0f} s ...", flush=True)
    files = [render_to_file(r, work / f"{r.name}.flac", max_seconds=args.seconds) for r in renditions]
    extra = {
        "MESS_INGEST_API_KEYS": API_KEY,
        "MESS_EMBEDDER_BACKEND": "dsp",
        "MESS_EMBEDDER_GROUP_ID": f"{settings.topic_prefix}mess-embedder",
        "MESS_INDEXER_GROUP_ID": f"{settings.topic_prefix}mess-indexer",
        "MESS_INGEST_STATUS_GROUP_ID": f"{settings.topic_prefix}mess-ingest-status",
        "MESS_INDEXER_SNAPSHOT_INTERVAL_S": str(args.snapshot_interval),
        "MESS_INDEXER_SNAPSHOT_EVERY_CHANGES": "1",
        "MESS_QUERY_SNAPSHOT_CACHE_DIR": str(work / "query-cache"),
        "MESS_QUERY_SNAPSHOT_POLL_S": "1",
    }
    latencies: list[float] = []
    with Pipeline(local.stack_env(settings), work / "logs", extra) as pipeline:
        pipeline.start()
        client = httpx.Client(timeout=30)
        for path in files:
            started = time.perf_counter()
            with path.open("rb") as audio:
                response = client.post(
                    f"{pipeline['ingest'].url}/tracks",
                    files={"file": (path.name, audio, "audio/flac")},
                    headers={"X-API-Key": API_KEY},
                )
            response.raise_for_status()
            track_id = response.json()["track_id"]
            while True:
                answer = client.get(f"{pipeline['query'].url}/recommend/{track_id}", params={"k": 5})
                if answer.status_code == 200:
                    break
                if time.perf_counter() - started > 120:
                    raise SystemExit(f"{track_id} not recommendable after 120 s: {answer.text[:200]}")
                time.sleep(0.05)
            latencies.append(time.perf_counter() - started)
            print(f"  {path.name}: {latencies[-1]:.2f} s", flush=True)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each track")
    parser.add_argument("--snapshot-interval", type=float, default=0.5, help="indexer's time trigger, seconds")
    args = parser.parse_args()

    with local.private_stack(StackSettings(), "fresh") as settings:
        latencies = measure(settings, args)
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    print(
        f"freshness over {len(ordered)} uploads of {args.seconds:.0f} s tracks: "
        f"p50 {statistics.median(ordered):.2f} s, p95 {p95:.2f} s, max {ordered[-1]:.2f} s"
    )


if __name__ == "__main__":
    main()
