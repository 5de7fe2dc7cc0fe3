"""SIGTERM in the middle of a poll batch: ``python -m mess.embedder`` finishes
the batch, publishes its outputs, commits it, fetches nothing more and exits 0
within its grace period.

Real broker and S3 endpoint throughout. The service reads S3 through
``HeldS3``, a pass-through to the real endpoint that holds the GETs of the
batch's audio: while they are held the batch is provably in flight (and
cannot have finished), so the signal lands mid-batch without any sleep.
"""

import asyncio
import hashlib
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import boto3
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from mess.contracts.events import TrackAdded, TrackEmbedded, TrackFailed, TrackMetadata
from mess.contracts.storage import audio_key, waveform_key
from mess.dev.pipeline import ServiceProcess
from mess.dev.stack import free_port
from mess.runtime.endpoints import StackSettings

from ..held_s3 import HeldS3
from .samples import audio_file, tone
from .service_process import produce

GRACE_S = 30
IN_FLIGHT = 4  # the poll batch the signal interrupts
LATER = 2  # events already waiting on the partition when the signal comes


def _upload(stack: StackSettings, seed: int) -> tuple[str, str, str]:
    """A distinct 3 s chord stored as ingest stores it; returns (track id, sha256, URI)."""
    data = audio_file(tone(3.0, 22050, (196.0 + 20 * seed, 311.1 + 15 * seed), seed=seed), 22050)
    sha = hashlib.sha256(data).hexdigest()
    kwargs: dict[str, Any] = stack.s3_client_kwargs()
    key = audio_key(sha, "wav")
    boto3.client("s3", **kwargs).put_object(Bucket=stack.bucket, Key=key, Body=data)
    return f"sig-{seed:02d}", sha, f"s3://{stack.bucket}/{key}"


def _added(track_id: str, sha: str, uri: str) -> tuple[bytes, bytes]:
    event = TrackAdded(track_id=track_id, sha256=sha, audio_uri=uri, dataset="upload", metadata=TrackMetadata())
    return track_id.encode(), event.to_bytes()


async def _committed(stack: StackSettings, group: str) -> int:
    """The group's committed offset on partition 0 (-1: none), read by a consumer
    that never joins the group (Tansu's OffsetFetch answer breaks aiokafka's admin client)."""
    reader = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, group_id=group, enable_auto_commit=False)
    await reader.start()
    try:
        offset = await reader.committed(TopicPartition(stack.topics.tracks_added, 0))
    finally:
        await reader.stop()
    return offset if offset is not None else -1


async def _outputs(stack: StackSettings) -> tuple[list[TrackEmbedded], list[TrackFailed]]:
    """Everything on the embedded and failed topics now, read to their end offsets."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    embedded: list[TrackEmbedded] = []
    failed: list[TrackFailed] = []
    try:
        await consumer.topics()  # refreshes the metadata partitions_for_topic reads
        partitions = [
            TopicPartition(topic, p)
            for topic in (stack.topics.tracks_embedded, stack.topics.tracks_failed)
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        async with asyncio.timeout(30):
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                    for record in records:
                        if tp.topic == stack.topics.tracks_embedded:
                            embedded.append(TrackEmbedded.from_bytes(record.value))
                        else:
                            failed.append(TrackFailed.from_bytes(record.value))
    finally:
        await consumer.stop()
    return embedded, failed


def _wait_for_log(service: ServiceProcess, pattern: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, service.log_path.read_text(errors="replace")):
        if time.monotonic() > deadline:
            raise AssertionError(f"no log line matching {pattern!r}:\n{service.log_path.read_text()[-3000:]}")
        time.sleep(0.05)


def _embedder(stack_env: dict[str, str], s3_url: str, log: Path) -> ServiceProcess:
    port = free_port()
    env = {
        **os.environ,
        **stack_env,
        "MESS_S3_ENDPOINT_URL": s3_url,
        "MESS_EMBEDDER_PORT": str(port),
        "MESS_EMBEDDER_MAX_TRACKS_PER_POLL": str(IN_FLIGHT),
        "MESS_EMBEDDER_TRACK_CONCURRENCY": str(IN_FLIGHT),  # every GET of the batch starts at once
        "MESS_EMBEDDER_POLL_WAIT_MS": "200",
        "MESS_EMBEDDER_SHUTDOWN_GRACE_S": str(GRACE_S),
        "MESS_EMBEDDER_SESSION_TIMEOUT_MS": "6000",
        "MESS_EMBEDDER_HEARTBEAT_INTERVAL_MS": "1000",
        "MESS_EMBEDDER_MAX_POLL_INTERVAL_MS": "10000",
    }
    return ServiceProcess("embedder", port, env, log)


def test_sigterm_mid_batch_commits_the_batch_fetches_nothing_more_and_exits_0(
    stack: StackSettings, stack_env: dict[str, str], tmp_path: Path
) -> None:
    tracks = [_upload(stack, seed) for seed in range(IN_FLIGHT + LATER)]
    batch, later = tracks[:IN_FLIGHT], tracks[IN_FLIGHT:]
    audio_path = {track_id: f"/{stack.bucket}/{uri.split('/', 3)[3]}" for track_id, _, uri in tracks}
    # All on partition 0, before the service starts: its first poll takes exactly these four.
    asyncio.run(produce(stack, [_added(*track) for track in batch]))
    group = f"{stack.topic_prefix}mess-embedder"

    held = HeldS3(stack.s3_endpoint_url or "", hold=lambda method, path: method == "GET" and "/audio/" in path)
    with held.running():
        service = _embedder(stack_env, held.url, tmp_path / "embedder.log")
        service.start()
        try:
            service.wait_live()
            in_flight = held.wait_held(IN_FLIGHT)
            assert sorted(path for _, path in in_flight) == sorted(audio_path[t] for t, _, _ in batch)
            # Two more events the consumer could take next; it must not.
            asyncio.run(produce(stack, [_added(*track) for track in later]))

            assert service.process is not None
            os.kill(service.process.pid, signal.SIGTERM)
            signalled = time.monotonic()
            _wait_for_log(service, rf"stopping: fetching no more; finishing the poll batch of {IN_FLIGHT} tracks")
            # The batch cannot finish while its audio is held: the process is waiting for it.
            assert service.process.poll() is None, service.log_path.read_text()
            assert asyncio.run(_committed(stack, group)) == -1

            held.release()
            status = service.process.wait(timeout=GRACE_S)
            took = time.monotonic() - signalled
        finally:
            service.kill()
    log = service.log_path.read_text()
    assert status == 0, log
    assert took < GRACE_S
    assert "consumer and producer closed" in log and "cut off by the shutdown" not in log

    # Every event of the batch has its output, and the offset is committed past them, not past the later two.
    embedded, failed = asyncio.run(_outputs(stack))
    assert failed == []
    assert sorted(event.track_id for event in embedded) == sorted(t for t, _, _ in batch)
    assert {event.track_id: event.sha256 for event in embedded} == {t: sha for t, sha, _ in batch}
    assert asyncio.run(_committed(stack, group)) == IN_FLIGHT
    # Nothing further was fetched: no GET of the later tracks' audio ever reached S3.
    fetched = {path for method, path in held.seen if method == "GET" and "/audio/" in path}
    assert fetched == {audio_path[t] for t, _, _ in batch}
    kwargs: dict[str, Any] = stack.s3_client_kwargs()
    s3 = boto3.client("s3", **kwargs)
    for track_id, _, _ in batch:
        s3.head_object(Bucket=stack.bucket, Key=waveform_key(track_id))  # peaks written before the commit

    # A restarted embedder takes up exactly where the commit left off: the later two, once each.
    restarted = _embedder(stack_env, stack.s3_endpoint_url or "", tmp_path / "embedder-2.log")
    restarted.start()
    try:
        restarted.wait_live()
        deadline = time.monotonic() + 60
        while asyncio.run(_committed(stack, group)) < IN_FLIGHT + LATER:
            assert time.monotonic() < deadline, restarted.log_path.read_text()[-3000:]
            time.sleep(0.2)
        assert restarted.stop(timeout=GRACE_S) == 0
    finally:
        restarted.kill()
    embedded, failed = asyncio.run(_outputs(stack))
    assert failed == []
    assert sorted(event.track_id for event in embedded) == sorted(t for t, _, _ in tracks)
