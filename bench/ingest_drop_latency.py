"""S3-drop-to-event latency: from an object landing under the drop prefix to its TrackAdded on the broker.

Run with the local stack up (``make stack``):

    .venv/bin/python bench/ingest_drop_latency.py [--objects 60] [--rate 2] [--seconds 10]

Objects are put one at a time at ``--rate`` per second (so the figure is the
pipeline's latency, not a queue's); each latency runs from the end of the
PUT to the moment a consumer receives the event. The path measured is the
whole auto-ingest: the bucket notification into SQS, the worker's long poll,
download, decode, copy to the audio key, the registry transaction, the
relay's NOTIFY wake-up and the publish. Prints p50/p95/max and saves a
histogram to ``bench/results/ingest_drop_latency.png``.
"""

import argparse
import asyncio
import hashlib
import time
from typing import Any

import boto3
from ingest_stack import RESULTS, ingest_process, percentile, private_stack, tone_wav

from mess.contracts.events import TrackAdded
from mess.runtime import kafka
from mess.runtime.endpoints import StackSettings


async def measure(settings: StackSettings, objects: int, rate: float, seconds: float) -> list[float]:
    kwargs: dict[str, Any] = settings.s3_client_kwargs()
    s3 = boto3.client("s3", **kwargs)
    files = [tone_wav(seconds, 150.0 + 0.53 * n) for n in range(objects)]
    put_at: dict[str, float] = {}
    received_at: dict[str, float] = {}

    consumer = kafka.consumer(
        settings,
        settings.topics.tracks_added,
        client_id="mess-bench",
        group_id=f"{settings.topic_prefix}bench",
        auto_offset_reset="earliest",
    )
    await consumer.start()

    async def consume() -> None:
        while len(received_at) < objects:
            batch = await consumer.getmany(timeout_ms=200)
            now = time.perf_counter()
            for records in batch.values():
                for record in records:
                    received_at.setdefault(TrackAdded.from_bytes(record.value).track_id, now)

    consuming = asyncio.create_task(consume())
    try:
        for n, audio in enumerate(files):
            track_id = hashlib.sha256(audio).hexdigest()[:32]
            await asyncio.to_thread(
                s3.put_object, Bucket=settings.bucket, Key=f"{settings.drop_prefix}bench/{n:04d}.wav", Body=audio
            )
            put_at[track_id] = time.perf_counter()
            await asyncio.sleep(1.0 / rate)
        await asyncio.wait_for(consuming, timeout=300)
    finally:
        consuming.cancel()
        await consumer.stop()
    return [received_at[t] - put_at[t] for t in put_at if t in received_at]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=60)
    parser.add_argument("--rate", type=float, default=2.0, help="objects put per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each WAV (22.05 kHz mono)")
    args = parser.parse_args()

    with private_stack() as settings, ingest_process(settings) as _:
        latencies = asyncio.run(measure(settings, args.objects, args.rate, args.seconds))
    ms = [value * 1000 for value in latencies]
    print(
        f"S3 drop -> TrackAdded over {len(ms)} objects ({args.seconds:g} s WAV, {args.rate:g}/s): "
        f"p50 {percentile(ms, 50):.0f} ms  p95 {percentile(ms, 95):.0f} ms  max {max(ms):.0f} ms"
    )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.hist(ms, bins=30, color="#55a868")
    axis.axvline(percentile(ms, 50), color="black", linestyle="--", label="p50")
    axis.axvline(percentile(ms, 95), color="red", linestyle="--", label="p95")
    axis.set_xlabel("drop -> TrackAdded (ms)")
    axis.set_ylabel("objects")
    axis.set_title("S3 auto-ingest latency (2-core CPU machine)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(RESULTS / "ingest_drop_latency.png", dpi=120)
    print(f"plot: {RESULTS / 'ingest_drop_latency.png'}")


if __name__ == "__main__":
    main()
