"""The embedder process end to end, through the real broker and S3 endpoint."""

import asyncio
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from mess.contracts.events import TrackAdded, TrackEmbedded, TrackMetadata
from mess.contracts.storage import WaveformPeaks, audio_key, waveform_key
from mess.runtime.endpoints import StackSettings

from .samples import audio_file, tone, write_mert_dir
from .service_process import collect, embedder_process, produce


def _upload(stack: StackSettings, data: bytes, extension: str = "wav") -> tuple[str, str]:
    """Store like ingest does (content-addressed); returns (sha256, s3 URI)."""
    sha = hashlib.sha256(data).hexdigest()
    kwargs: dict[str, Any] = stack.s3_client_kwargs()
    key = audio_key(sha, extension)
    boto3.client("s3", **kwargs).put_object(Bucket=stack.bucket, Key=key, Body=data)
    return sha, f"s3://{stack.bucket}/{key}"


def _added(track_id: str, sha: str, uri: str) -> TrackAdded:
    return TrackAdded(track_id=track_id, sha256=sha, audio_uri=uri, dataset="upload", metadata=TrackMetadata())


async def _committed(stack: StackSettings, group: str) -> int:
    """The group's committed offset on partition 0 (-1 when none). Read through a
    consumer that never joins the group: Tansu answers aiokafka's admin
    OffsetFetch with a frame the admin client cannot parse."""
    reader = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, group_id=group, enable_auto_commit=False)
    await reader.start()
    try:
        offset = await reader.committed(TopicPartition(stack.topics.tracks_added, 0))
    finally:
        await reader.stop()
    return offset if offset is not None else -1


def _service_env(stack_env: dict[str, str], stack: StackSettings, **extra: str) -> dict[str, str]:
    return {
        **stack_env,
        "MESS_EMBEDDER_POLL_WAIT_MS": "200",
        "MESS_EMBEDDER_FETCH_ATTEMPTS": "2",
        "MESS_EMBEDDER_RETRY_BASE_S": "0.05",
        **extra,
    }


def test_events_in_vectors_and_dead_letters_out(
    stack: StackSettings, stack_env: dict[str, str], tmp_path: Path
) -> None:
    good_a = audio_file(np.stack([tone(7.0, 44100, (220.0, 277.2))] * 2, axis=1), 44100, subtype="PCM_16")
    good_b = audio_file(tone(3.0, 48000, (196.0, 293.7), seed=3), 48000, "FLAC")
    corrupt = b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(4000)
    sha_a, uri_a = _upload(stack, good_a)
    sha_b, uri_b = _upload(stack, good_b, "flac")
    sha_c, uri_c = _upload(stack, corrupt)
    missing_uri = f"s3://{stack.bucket}/audio/00/{'0' * 64}.wav"
    malformed = b'{"track_id": "broken-1", "audio_uri": 42}'

    a, b = sha_a[:32], sha_b[:32]
    messages = [
        (b"corrupt-1", _added("corrupt-1", sha_c, uri_c).to_bytes()),
        (a.encode(), _added(a, sha_a, uri_a).to_bytes()),
        (b"broken-1", malformed),
        (b"missing-1", _added("missing-1", "0" * 64, missing_uri).to_bytes()),
        (b.encode(), _added(b, sha_b, uri_b).to_bytes()),
        (a.encode(), _added(a, sha_a, uri_a).to_bytes()),  # the same track again
    ]
    group = f"{stack.topic_prefix}mess-embedder"
    with embedder_process(_service_env(stack_env, stack), tmp_path / "embedder.log") as service:
        asyncio.run(produce(stack, messages))
        embedded, failed = asyncio.run(collect(stack, embedded=3, failed=3))
        assert len(embedded) == 3 and len(failed) == 3, service.log()

        # Offsets are committed once every record has its output: all six, none skipped.
        committed = -1
        for _ in range(40):
            committed = asyncio.run(_committed(stack, group))
            if committed == len(messages):
                break
            asyncio.run(asyncio.sleep(0.25))
        assert committed == len(messages)

        metrics = httpx.get(f"{service.url}/metrics", timeout=5).text
        identity = httpx.get(f"{service.url}/model", timeout=5).json()

    by_track: dict[str, list[TrackEmbedded]] = {}
    for event in embedded:
        by_track.setdefault(event.track_id, []).append(event)
    assert sorted(by_track) == sorted([a, b])
    first, again = by_track[a]
    # Reprocessing the same event gives the same vector, to the last bit.
    assert first.vector.tobytes() == again.vector.tobytes()
    assert first.sha256 == sha_a
    assert first.model.name == "dsp" and first.model.dim == first.vector.shape[0] == 438
    assert first.model.model_dump() == identity
    assert first.chunks == 2 and abs((first.duration_s or 0) - 7.0) < 1e-6
    assert abs(float(np.linalg.norm(first.vector)) - 1.0) < 1e-5
    assert float(first.vector @ by_track[b][0].vector) < 0.999  # different audio, different vector

    kinds = {event.track_id: event for event in failed}
    assert kinds["corrupt-1"].error_kind == "decode"
    assert kinds["missing-1"].error_kind == "missing_audio"
    assert kinds["broken-1"].error_kind == "malformed_event"
    assert kinds["broken-1"].original_payload == malformed.decode()
    assert kinds["broken-1"].source_offset == 2
    assert all(event.stage == "embed" and event.source_topic == stack.topics.tracks_added for event in failed)

    kwargs: dict[str, Any] = stack.s3_client_kwargs()
    body = boto3.client("s3", **kwargs).get_object(Bucket=stack.bucket, Key=waveform_key(a))["Body"].read()
    peaks = WaveformPeaks.model_validate_json(body)
    assert peaks.track_id == a and peaks.sample_rate == 44100 and 1990 <= len(peaks.maxs) <= 2000

    assert 'mess_embedder_failures_total{kind="decode"} 1.0' in metrics
    assert 'mess_embedder_tracks_total{outcome="embedded"} 3.0' in metrics
    assert "mess_embedder_consumer_lag{" in metrics
    assert "mess_embedder_batch_chunks_count" in metrics


def test_mert_service_embeds_with_the_checkpoints_identity(
    stack: StackSettings, stack_env: dict[str, str], tmp_path: Path
) -> None:
    model_dir = write_mert_dir(tmp_path / "MERT-v1-95M")
    data = audio_file(tone(6.0, 22050, (261.6, 329.6)), 22050)
    sha, uri = _upload(stack, data)
    env = _service_env(
        stack_env,
        stack,
        MESS_EMBEDDER_BACKEND="mert",
        MESS_EMBEDDER_MODEL_DIR=str(model_dir),
        MESS_EMBEDDER_DEVICE="cpu",
    )
    with embedder_process(env, tmp_path / "embedder.log") as service:
        asyncio.run(produce(stack, [(sha[:32].encode(), _added(sha[:32], sha, uri).to_bytes())]))
        embedded, failed = asyncio.run(collect(stack, embedded=1, failed=0))
        assert len(embedded) == 1 and not failed, service.log()
    event = embedded[0]
    weights_sha = hashlib.sha256((model_dir / "pytorch_model.bin").read_bytes()).hexdigest()
    assert event.model.name == "m-a-p/MERT-v1-95M"
    assert event.model.dim == 32
    assert weights_sha.startswith(event.model.revision)
    assert "layers=mean(1,2)" in event.model.pooling and "chunks=5s" in event.model.pooling
    assert event.chunks == 2


def test_a_model_that_cannot_load_stops_the_process_with_the_reason(tmp_path: Path) -> None:
    model_dir = write_mert_dir(tmp_path / "cqt-variant")
    config = (
        (model_dir / "config.json")
        .read_text()
        .replace('"feature_extractor_cqt": false', '"feature_extractor_cqt": true')
    )
    (model_dir / "config.json").write_text(config)
    env = {
        **os.environ,
        "MESS_EMBEDDER_BACKEND": "mert",
        "MESS_EMBEDDER_MODEL_DIR": str(model_dir),
        "MESS_EMBEDDER_PORT": "0",
        # No broker is needed: the model loads first, and this one never does.
        "MESS_KAFKA_BOOTSTRAP": "127.0.0.1:1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "mess.embedder"], env=env, capture_output=True, timeout=120, check=False
    )
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode != 0
    assert "cannot be loaded, stopping" in output
    assert "feature_extractor_cqt is true" in output
