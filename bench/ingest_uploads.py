"""Uploads per second through ``POST /tracks`` (stream to S3, hash, decode, register, outbox).

Run with the local stack up (``make stack``):

    .venv/bin/python bench/ingest_uploads.py [--uploads 120] [--seconds 10] [--concurrency 1 4 8]

Every upload is distinct content (a chord at its own pitch), so each one is
stored, decoded and registered; the server is a separate ``python -m
mess.ingest`` process. Prints uploads/s, MB/s and latency percentiles per
concurrency level, and saves a plot to ``bench/results/ingest_uploads.png``.
"""

import argparse
import asyncio
import time

import httpx
from ingest_stack import API_KEY, RESULTS, ingest_process, percentile, private_stack, tone_wav


async def run_level(url: str, files: list[bytes], concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for audio in files:
        queue.put_nowait(audio)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            audio = queue.get_nowait()
            started = time.perf_counter()
            answer = await client.post("/tracks", files={"file": ("bench.wav", audio, "audio/wav")})
            latencies.append(time.perf_counter() - started)
            if answer.status_code != 201:
                raise RuntimeError(f"upload answered {answer.status_code}: {answer.text}")

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": API_KEY}, timeout=120, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return elapsed, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--uploads", type=int, default=120, help="uploads per concurrency level")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each uploaded WAV (22.05 kHz mono)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args()

    rows = []
    with private_stack() as settings, ingest_process(settings, MESS_INGEST_DROP_WORKER_ENABLED="false") as url:
        pitch = 100.0
        for concurrency in args.concurrency:
            files = []
            for _ in range(args.uploads):
                pitch += 0.37  # every file differs, so none is a duplicate
                files.append(tone_wav(args.seconds, pitch))
            size_mb = sum(len(f) for f in files) / 1e6
            elapsed, latencies = asyncio.run(run_level(url, files, concurrency))
            rows.append((concurrency, args.uploads / elapsed, size_mb / elapsed, latencies))
            p50, p95 = percentile(latencies, 50) * 1000, percentile(latencies, 95) * 1000
            print(
                f"concurrency {concurrency:>2}: {args.uploads / elapsed:6.1f} uploads/s  "
                f"{size_mb / elapsed:6.1f} MB/s  latency p50 {p50:6.0f} ms  p95 {p95:6.0f} ms"
                f"  ({args.uploads} x {len(files[0]) / 1e6:.2f} MB WAV, {args.seconds:g} s each)",
                flush=True,
            )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.bar([str(r[0]) for r in rows], [r[1] for r in rows], color="#4c72b0")
    axis.set_xlabel("concurrent clients")
    axis.set_ylabel("uploads per second")
    axis.set_title(f"POST /tracks, {args.seconds:g} s WAV files (2-core CPU machine)")
    figure.tight_layout()
    figure.savefig(RESULTS / "ingest_uploads.png", dpi=120)
    print(f"plot: {RESULTS / 'ingest_uploads.png'}")


if __name__ == "__main__":
    main()
