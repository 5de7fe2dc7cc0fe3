"""Dataset importer throughput against the local S3 endpoint (moto).

Prints, for a generated folder of short WAVs: files/s and MB/s of a fresh
import at several ``--jobs`` values, and of a re-run that skips everything;
for two large WAVs (multipart): MB/s and the importer's peak memory growth,
which stays near the part size because files are streamed, not read whole;
and the demo importer's renditions/s (music21 + fluidsynth in 2 processes),
for the default 40 works x 3 renditions that ``make run`` renders.
Uses a bucket of its own (no S3 notification, so no ingest worker reacts)
and deletes it afterwards. Plot: bench/results/ingest_importers.png.

    .venv/bin/python bench/ingest_importers.py [--files 200] [--large-mb 70] [--demo-works 40]
"""

import argparse
import resource
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import soundfile as sf

from mess.ingest.importers.demo import import_demo, list_demo
from mess.ingest.importers.drop import DropBucket
from mess.ingest.importers.folder import list_folder
from mess.ingest.importers.run import import_listing
from mess.runtime.endpoints import StackSettings

RESULTS = Path(__file__).parent / "results"


def write_wavs(folder: Path, count: int, seconds: float) -> int:
    rate = 22050
    t = np.arange(int(seconds * rate), dtype=np.float32) / rate
    total = 0
    for index in range(count):
        path = folder / f"album-{index // 20:02d}" / f"track-{index:04d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), (0.3 * np.sin(2 * np.pi * (110 + index) * t)).astype(np.float32), rate)
        total += path.stat().st_size
    return total


def write_large_wav(path: Path, megabytes: int) -> int:
    """Written block by block so generating it does not raise this process's peak memory."""
    rate, channels = 44100, 2
    frames = megabytes * 1024 * 1024 // (2 * channels)
    block = np.zeros((rate, channels), dtype=np.float32)
    block[:, 0] = 0.2 * np.sin(np.linspace(0, 2 * np.pi * 440, rate, dtype=np.float32))
    block[:, 1] = block[:, 0]
    path.parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(str(path), "w", samplerate=rate, channels=channels, subtype="PCM_16") as out:
        written = 0
        while written < frames:
            chunk = block[: min(rate, frames - written)]
            out.write(chunk)
            written += len(chunk)
    return path.stat().st_size


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def empty_bucket(s3: Any, bucket: str) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--large-mb", type=int, default=70)
    parser.add_argument("--demo-works", type=int, default=40, help="the default demo, what make run renders")
    parser.add_argument("--demo-renditions", type=int, default=3)
    args = parser.parse_args()

    settings = StackSettings().model_copy(update={"bucket": f"mess-bench-{uuid.uuid4().hex[:10]}"})
    kwargs: dict[str, Any] = settings.s3_client_kwargs()
    s3 = boto3.client("s3", **kwargs)
    s3.create_bucket(Bucket=settings.bucket)
    rows: list[tuple[str, float]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="mess-bench-import-") as scratch:
            folder = Path(scratch) / "small"
            total = write_wavs(folder, args.files, args.seconds)
            print(f"{args.files} WAVs of {args.seconds:.0f} s, {total / 1e6:.1f} MB in all")
            for jobs in (1, 4, 8):
                drop = DropBucket.connect(settings, connections=max(10, jobs * 4))
                listing = list_folder(folder, dataset=f"bench-j{jobs}")
                started = time.perf_counter()
                report = import_listing(listing, drop, jobs=jobs, quiet=True)
                elapsed = time.perf_counter() - started
                assert report.uploaded == args.files, report.summary()
                rows.append((f"fresh, jobs={jobs}", args.files / elapsed))
                print(
                    f"  fresh import, --jobs {jobs}: {args.files / elapsed:7.1f} files/s  "
                    f"{total / 1e6 / elapsed:6.1f} MB/s  ({elapsed:.2f} s)"
                )
            started = time.perf_counter()
            report = import_listing(listing, drop, jobs=8, quiet=True)
            elapsed = time.perf_counter() - started
            assert report.skipped == args.files, report.summary()
            rows.append(("re-run, all skipped", args.files / elapsed))
            print(f"  re-run, everything skipped, --jobs 8: {args.files / elapsed:7.1f} files/s ({elapsed:.2f} s)")
            empty_bucket(s3, settings.bucket)

            large = Path(scratch) / "large"
            size = sum(write_large_wav(large / f"take-{i}.wav", args.large_mb) for i in range(2))
            before = peak_rss_mb()
            started = time.perf_counter()
            report = import_listing(list_folder(large, "bench-large"), DropBucket.connect(settings), jobs=2, quiet=True)
            elapsed = time.perf_counter() - started
            assert report.uploaded == 2, report.summary()
            print(
                f"2 WAVs of {args.large_mb} MB (multipart, 16 MB parts): {size / 1e6 / elapsed:6.1f} MB/s; "
                f"peak RSS grew {peak_rss_mb() - before:.0f} MB (from {before:.0f} MB) for {size / 1e6:.0f} MB uploaded"
            )
            empty_bucket(s3, settings.bucket)

        demo_tracks = list_demo(args.demo_works, args.demo_renditions)
        started = time.perf_counter()
        report = import_demo(demo_tracks, DropBucket.connect(settings), max_seconds=30.0, quiet=True)
        elapsed = time.perf_counter() - started
        rows.append(("demo renditions", report.uploaded / elapsed))
        print(
            f"demo: {report.uploaded} renditions of <= 30 s rendered and uploaded in {elapsed:.1f} s "
            f"({report.uploaded / elapsed:.2f}/s, 2 render processes), failed {report.failed}"
        )
    finally:
        empty_bucket(s3, settings.bucket)
        s3.delete_bucket(Bucket=settings.bucket)
    plot(rows)


def plot(rows: list[tuple[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(exist_ok=True)
    figure, axis = plt.subplots(figsize=(7, 3.2))
    axis.barh([name for name, _ in rows], [rate for _, rate in rows], color="#4a7ab0")
    axis.set_xscale("log")
    axis.set_xlabel("tracks per second (log scale)")
    axis.set_title("mess-import against local moto S3, 2-core CPU machine")
    figure.tight_layout()
    figure.savefig(RESULTS / "ingest_importers.png", dpi=120)
    print(f"plot: {RESULTS / 'ingest_importers.png'}")


if __name__ == "__main__":
    main()
