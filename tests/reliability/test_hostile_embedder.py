"""Hostile audio and poison records against the embedder (issue 14, class 2: decoded size unbounded).

- A small file whose header claims an implausible rate or channel count is a decode error, dead-lettered
  at once, before a frame is decoded; the partition moves on to the good track behind it. (Before: the
  655,350 Hz FLAC was decoded and embedded, costing the process about 0.9 GB.)
- A record whose processing kills the process is dead-lettered after ``max_crashes`` deaths, and the
  innocent records of its batch are still embedded. (Before: the batch was redelivered for ever.)
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import numpy.typing as npt
import soundfile as sf
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from mess.contracts.events import TrackAdded, TrackEmbedded, TrackFailed
from mess.contracts.storage import audio_key
from mess.dev.stack import free_port
from mess.runtime.endpoints import StackSettings


def _tone(seconds: float, rate: int, channels: int = 1) -> npt.NDArray[np.float32]:
    t = np.arange(int(seconds * rate)) / rate
    mono = (0.3 * np.sin(2 * np.pi * 220.0 * t) + 0.1 * np.sin(2 * np.pi * 331.0 * t)).astype(np.float32)
    return np.repeat(mono[:, None], channels, axis=1) if channels > 1 else mono


def _file(samples: npt.NDArray[np.float32], rate: int, fmt: str) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype="PCM_16")
    return buffer.getvalue()


def _store(stack: StackSettings, data: bytes, extension: str) -> TrackAdded:
    sha = hashlib.sha256(data).hexdigest()
    key = audio_key(sha, extension)
    kwargs: dict[str, Any] = stack.s3_client_kwargs()
    boto3.client("s3", **kwargs).put_object(Bucket=stack.bucket, Key=key, Body=data)
    return TrackAdded(track_id=f"hostile-{sha[:12]}", sha256=sha, audio_uri=f"s3://{stack.bucket}/{key}", dataset="t")


@contextmanager
def _embedder(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    port = free_port()
    full = {**os.environ, **env, "MESS_EMBEDDER_PORT": str(port), "MESS_EMBEDDER_POLL_WAIT_MS": "200"}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "mess.embedder"], env=full, stdout=log_file, stderr=log_file)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log_path.read_text(errors="replace")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")
            time.sleep(0.3)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


async def _produce(stack: StackSettings, events: list[TrackAdded]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    await producer.start()
    try:
        for event in events:
            await producer.send_and_wait(
                stack.topics.tracks_added, event.to_bytes(), key=event.track_id.encode(), partition=0
            )
    finally:
        await producer.stop()


async def _outcomes(
    stack: StackSettings, wanted: set[str], wait_s: float = 90.0
) -> dict[str, TrackEmbedded | TrackFailed]:
    consumer = AIOKafkaConsumer(
        stack.topics.tracks_embedded,
        stack.topics.tracks_failed,
        bootstrap_servers=stack.kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=f"{stack.topic_prefix}hostile-reader",
    )
    await consumer.start()
    seen: dict[str, TrackEmbedded | TrackFailed] = {}
    try:
        async with asyncio.timeout(wait_s):
            while not wanted <= set(seen):
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        event: TrackEmbedded | TrackFailed
                        if record.topic == stack.topics.tracks_embedded:
                            event = TrackEmbedded.from_bytes(record.value)
                        else:
                            event = TrackFailed.from_bytes(record.value)
                        if event.track_id is not None:
                            seen[event.track_id] = event
    except TimeoutError:
        pass  # the assertions say what is missing
    finally:
        await consumer.stop()
    return seen


def test_implausible_rates_and_channel_counts_are_dead_lettered_as_decode_errors(
    stack: StackSettings, stack_env: dict[str, str], tmp_path: Path
) -> None:
    # 3 s at 655,350 Hz: a 0.4 MB FLAC that decodes to 2M samples (900 s of it: 2.4 GB of float32).
    high_rate = _store(stack, _file(_tone(3.0, 655_350), 655_350, "FLAC"), "flac")
    # 200 channels of 3 s: a per-frame block would be 200 times wider than the samples it yields.
    wide = _store(stack, _file(_tone(3.0, 8_000, channels=200), 8_000, "WAV"), "wav")
    low_rate = _store(stack, _file(_tone(3.0, 1_000), 1_000, "WAV"), "wav")
    good = _store(stack, _file(_tone(3.0, 44_100), 44_100, "WAV"), "wav")
    with _embedder({**stack_env, "MESS_EMBEDDER_MAX_CRASHES": "2"}, tmp_path / "embedder.log"):
        asyncio.run(_produce(stack, [high_rate, wide, low_rate, good]))
        seen = asyncio.run(_outcomes(stack, {high_rate.track_id, wide.track_id, low_rate.track_id, good.track_id}))
    for event, what in ((high_rate, "sample rate"), (wide, "channel count"), (low_rate, "sample rate")):
        outcome = seen.get(event.track_id)
        assert isinstance(outcome, TrackFailed), f"{event.track_id}: {outcome!r}"
        assert outcome.error_kind == "decode" and f"implausible {what}" in outcome.error, outcome.error
        assert outcome.attempts == 1  # refused at once, never retried
    assert isinstance(seen.get(good.track_id), TrackEmbedded)


# The handler in a process of its own, with its real attempt ledger; the broker and the model are
# stand-ins because the point is the process dying: the stand-in model SIGKILLs its own process on
# the track named "killer", as the OOM killer would.
_HANDLER_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os, signal, sys
    import numpy as np
    from mess.contracts.events import TrackAdded
    from mess.contracts.storage import WaveformPeaks
    from mess.embedder.config import Settings
    from mess.embedder.consumer import AddedTrackHandler
    from mess.embedder.embedding import EmbeddedTrack
    from mess.contracts.events import ModelIdentity

    out_path, ledger_path = sys.argv[1], sys.argv[2]

    class Record:
        def __init__(self, offset, track_id):
            self.topic, self.partition, self.offset = "mess.tracks.added.v1", 0, offset
            self.key = track_id.encode()
            self.value = TrackAdded(
                track_id=track_id, sha256="a" * 64, audio_uri="s3://b/k.wav", dataset="t"
            ).to_bytes()
            self.headers = []

    class Message:
        def __init__(self, records):
            self.raw_message = tuple(records)
        async def ack(self):
            print("acked", flush=True)
        async def nack(self):
            print("nacked", flush=True)

    class Store:
        async def fetch(self, uri):
            return b"audio"
        async def put_waveform(self, peaks):
            return "waveforms/x.json"

    class Model:
        identity = ModelIdentity(name="fake", revision="0", dim=2, pooling="none")
        async def embed(self, track_id, data, sha):
            if track_id == "killer":
                os.kill(os.getpid(), signal.SIGKILL)
            await asyncio.sleep(0.2)
            peaks = WaveformPeaks(track_id=track_id, duration_s=1.0, sample_rate=8000, samples_per_peak=4,
                                  mins=[], maxs=[])
            return EmbeddedTrack(vector=np.array([0.6, 0.8], dtype=np.float32), chunks=1, duration_s=1.0, peaks=peaks)

    async def publish(event, topic):
        with open(out_path, "a") as out:
            out.write(json.dumps({"type": event.event_type, "track_id": event.track_id,
                                  "kind": getattr(event, "error_kind", None)}) + "\\n")

    async def main():
        settings = Settings(attempts_file=ledger_path, max_crashes=2)
        handler = AddedTrackHandler(settings, publish, Store(), Model())
        records = [Record(10, "innocent-1"), Record(11, "killer"), Record(12, "innocent-2")]
        await handler.handle_batch(Message(records))

    asyncio.run(main())
    """
)


def test_a_record_that_kills_the_process_is_dead_lettered_after_a_bounded_number_of_deaths(tmp_path: Path) -> None:
    script = tmp_path / "handler.py"
    script.write_text(_HANDLER_SCRIPT)
    out = tmp_path / "published.jsonl"
    ledger = tmp_path / "attempts.sqlite"
    exits = []
    for _ in range(4):  # the group redelivers the uncommitted batch after every death
        run = subprocess.run(
            [sys.executable, str(script), str(out), str(ledger)], capture_output=True, timeout=60, check=False
        )
        exits.append(run.returncode)
        if run.returncode == 0:
            assert b"acked" in run.stdout, run.stderr.decode(errors="replace")
            break
    # Two deaths (the first with the whole batch in flight, the second with the killer alone), then the
    # killer is dead-lettered unprocessed and the batch is committed.
    assert exits == [-signal.SIGKILL, -signal.SIGKILL, 0], exits
    last_run = [json.loads(line) for line in out.read_text().splitlines()][-3:]
    assert [(e["track_id"], e["type"], e["kind"]) for e in last_run] == [
        ("innocent-1", "TrackEmbedded", None),
        ("killer", "TrackFailed", "crash_loop"),
        ("innocent-2", "TrackEmbedded", None),
    ]
