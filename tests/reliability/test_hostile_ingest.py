"""Hostile uploads, drops and edits against the real ingest service (issue 14, the ingest side).

Each test is one class of attack, tried the way an attacker would: through the API with a key, or by
writing the bucket's drop prefix with no key at all. Everything runs on the test's own slice of the real
stack (broker, Postgres, S3 and SQS endpoint); the ingest app is served by uvicorn in the test's loop.
"""

import hashlib
import io
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import soundfile as sf
from prometheus_client import REGISTRY

from mess.contracts.events import TrackFailed, TrackMetadata
from mess.contracts.ids import track_id_from_parts
from mess.contracts.limits import MAX_AUDIO_BYTES, MAX_METADATA_BYTES, SILENCE_SPAN_S
from mess.contracts.storage import LATEST_KEY, waveform_key
from mess.ingest.audio import AudioLimits, UnacceptableAudioError, inspect_audio
from mess.ingest.config import Settings
from mess.runtime.access import KeyStore, digest_key
from mess.runtime.endpoints import StackSettings

from ..ingest.service_harness import (
    RunningIngest,
    connect_db,
    ingest_settings,
    read_topic,
    running_ingest,
    tone,
    wait_until,
)


def s3_client(stack: StackSettings) -> Any:
    kwargs: dict[str, Any] = stack.s3_client_kwargs()
    return boto3.client("s3", **kwargs)


def sqs_client(stack: StackSettings) -> Any:
    kwargs: dict[str, Any] = stack.s3_client_kwargs()
    return boto3.client("sqs", **kwargs)


def objects(stack: StackSettings, prefix: str) -> list[str]:
    listed = s3_client(stack).list_objects_v2(Bucket=stack.bucket, Prefix=prefix)
    return sorted(item["Key"] for item in listed.get("Contents", []))


@pytest.fixture
async def ingest(stack: StackSettings) -> AsyncIterator[RunningIngest]:
    async with running_ingest(ingest_settings(stack)) as service:
        yield service


async def upload(service: RunningIngest, audio: bytes, **fields: Any) -> Any:
    async with service.client() as client:
        return await client.post("/tracks", files={"file": ("a.wav", audio, "audio/wav")}, data=fields)


async def drop_state(service: RunningIngest, key: str) -> dict[str, Any]:
    async with service.client() as client:
        answer = await client.get("/drops", params={"key": key})
    assert answer.status_code == 200, answer.text
    state: dict[str, Any] = answer.json()
    return state


async def settled_state(service: RunningIngest, key: str) -> dict[str, Any] | None:
    state = await drop_state(service, key)
    return state if state["state"] != "unknown" else None


async def track_row(stack: StackSettings, track_id: str) -> dict[str, Any] | None:
    connection = await connect_db(stack)
    try:
        row = await connection.fetchrow("SELECT * FROM tracks WHERE id = $1", track_id)
    finally:
        await connection.close()
    return dict(row) if row is not None else None


def stereo(left: np.ndarray, right: np.ndarray, rate: int = 22050, fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.stack([left, right], axis=1).astype(np.float32), rate, format=fmt, subtype="PCM_16")
    return buffer.getvalue()


# --- 1. identity by claim ----------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "claim"),
    [
        # A drop claiming an API upload's id, with no dataset named (so dataset "s3").
        (None, "victim"),
        # A drop claiming it in a dataset of its own.
        ("evil", "victim"),
        # A dataset's id from another dataset's folder.
        ("evil", "smd-bach-0123456789ab"),
        # Posing as the API's own dataset.
        ("upload", "victim"),
    ],
)
async def test_a_drop_cannot_claim_a_track_it_did_not_write(
    stack: StackSettings, ingest: RunningIngest, dataset: str | None, claim: str
) -> None:
    answer = await upload(ingest, tone(hz=330.0), title="the original")
    assert answer.status_code == 201, answer.text
    victim = answer.json()["track_id"]
    claimed = victim if claim == "victim" else claim
    key = f"{stack.drop_prefix}{dataset or 's3'}/impostor.wav"
    metadata = {"mess-track-id": claimed, "mess-metadata": json.dumps({"title": "the impostor"})}
    if dataset is not None:
        metadata["mess-dataset"] = dataset
    s3_client(stack).put_object(Bucket=stack.bucket, Key=key, Body=tone(hz=660.0), Metadata=metadata)

    state = await wait_until(lambda: settled_state(ingest, key), "the claiming drop was never settled")
    assert state["state"] == "rejected"
    assert state["reason"].startswith("claim_refused:")
    row = await track_row(stack, victim)
    assert row is not None
    assert (row["title"], row["dataset"], row["status"]) == ("the original", "upload", "registered")
    assert row["sha256"] == answer.json()["sha256"]
    assert await track_row(stack, claimed) is None or claimed == victim


async def test_a_drop_may_replace_only_its_own_datasets_tracks(stack: StackSettings, ingest: RunningIngest) -> None:
    """The same authority may replace: a dataset file changed at its path replaces its track; a drop of
    another dataset's folder naming the same id in that dataset is refused by the namespace rule above."""
    s3 = s3_client(stack)
    track_id = track_id_from_parts("smd", "piece.wav")
    key = f"{stack.drop_prefix}smd/piece.wav"
    metadata = {"mess-dataset": "smd", "mess-track-id": track_id}
    s3.put_object(Bucket=stack.bucket, Key=key, Body=tone(hz=440.0), Metadata=metadata)
    await wait_until(lambda: settled_state(ingest, key), "the first version was never ingested")
    first = await track_row(stack, track_id)
    s3.put_object(Bucket=stack.bucket, Key=key, Body=tone(hz=450.0), Metadata=metadata)

    async def replaced() -> bool:
        row = await track_row(stack, track_id)
        return row is not None and first is not None and row["sha256"] != first["sha256"]

    await wait_until(replaced, "the changed dataset file never replaced its track")


# --- 2. decoded size and shared definitions ------------------------------------


def _shaped(rate: int, channels: int, seconds: float = 2.0, fmt: str = "WAV") -> bytes:
    frames = int(rate * seconds)
    signal = 0.3 * np.sin(2 * np.pi * 440.0 * np.arange(frames) / rate)
    buffer = io.BytesIO()
    sf.write(
        buffer, np.repeat(signal[:, None], channels, axis=1).astype(np.float32), rate, format=fmt, subtype="PCM_16"
    )
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("audio", "kind"),
    [
        # The example: a small FLAC whose rate makes it decode to gigabytes downstream.
        (_shaped(655_350, 1, fmt="FLAC"), "implausible_rate"),
        (_shaped(22_050, 16), "too_many_channels"),
    ],
    ids=["rate_655350", "channels_16"],
)
async def test_implausible_decoded_sizes_are_refused_and_leave_nothing(
    stack: StackSettings, ingest: RunningIngest, audio: bytes, kind: str
) -> None:
    answer = await upload(ingest, audio)
    assert answer.status_code == 415, answer.text
    assert answer.json()["error"] == kind
    assert objects(stack, "audio/") == []


def test_decoded_samples_are_bounded_before_decoding() -> None:
    # 2 s at 96 kHz in 8 channels is fine. A FLAC whose header declares 20 minutes of it (within the
    # duration limit) is refused from the header alone: the samples x channels are what cost.
    limits = AudioLimits(min_duration_s=1.0, max_duration_s=7200.0, silence_peak=1e-4)
    assert inspect_audio(io.BytesIO(_shaped(96_000, 8)), limits).channels == 8
    audio = bytearray(_shaped(96_000, 8, seconds=1.0, fmt="FLAC"))
    # STREAMINFO: 20 bits rate, 3 bits channels, 5 bits depth, then 36 bits of total samples per channel.
    fields = int.from_bytes(audio[18:26], "big")
    audio[18:26] = ((fields & ~((1 << 36) - 1)) | 1200 * 96_000).to_bytes(8, "big")
    with pytest.raises(UnacceptableAudioError) as refused:
        inspect_audio(io.BytesIO(bytes(audio)), limits)
    assert refused.value.kind == "too_many_samples"


def test_silence_is_judged_like_the_embedder_on_the_mono_mix_of_the_embedded_span() -> None:
    limits = AudioLimits(min_duration_s=1.0, max_duration_s=3600.0, silence_peak=1e-4)
    t = np.arange(22050 * 3) / 22050
    wave = 0.3 * np.sin(2 * np.pi * 440.0 * t)
    # Left and right cancel: loud on each channel, nothing in the mono the embedder hears.
    with pytest.raises(UnacceptableAudioError) as cancelled:
        inspect_audio(io.BytesIO(stereo(wave, -wave)), limits)
    assert cancelled.value.kind == "silent"
    # Music that begins only after the span the embedder embeds is silence to both.
    rate = 4000
    late = np.zeros(int((SILENCE_SPAN_S + 5) * rate), dtype=np.float32)
    late[-rate * 2 :] = 0.3
    buffer = io.BytesIO()
    sf.write(buffer, late, rate, format="WAV", subtype="PCM_16")
    with pytest.raises(UnacceptableAudioError) as silent:
        inspect_audio(io.BytesIO(buffer.getvalue()), limits)
    assert silent.value.kind == "silent"


def test_ingest_takes_no_object_the_embedder_would_refuse_for_its_size(stack: StackSettings) -> None:
    with pytest.raises(ValueError, match="max_drop_bytes"):
        Settings(stack=stack, max_drop_bytes=MAX_AUDIO_BYTES + 1)
    with pytest.raises(ValueError, match="max_upload_bytes"):
        Settings(stack=stack, max_upload_bytes=MAX_AUDIO_BYTES + 1)
    assert Settings(stack=stack).max_drop_bytes <= MAX_AUDIO_BYTES


# --- 3. values the database cannot hold ---------------------------------------


async def test_a_value_no_column_holds_is_refused_with_422_and_leaves_nothing(
    stack: StackSettings, ingest: RunningIngest
) -> None:
    answer = await upload(ingest, tone(hz=370.0), year="3000000000")
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "bad_metadata"
    assert objects(stack, "audio/") == []
    assert objects(stack, "uploads/") == []


async def test_a_drop_with_such_a_value_is_rejected_once_not_retried(
    stack: StackSettings, ingest: RunningIngest
) -> None:
    key = f"{stack.drop_prefix}huge-year.wav"
    described = json.dumps({"title": "x", "year": 3_000_000_000})
    s3_client(stack).put_object(
        Bucket=stack.bucket, Key=key, Body=tone(hz=380.0), Metadata={"mess-metadata": described}
    )
    state = await wait_until(lambda: settled_state(ingest, key), "the drop was retried instead of settled")
    assert state["state"] == "rejected" and state["reason"].startswith("bad_metadata:")
    assert objects(stack, "audio/") == []


async def test_a_registration_that_fails_takes_its_audio_object_back(stack: StackSettings) -> None:
    """Postgres takes reads but no writes (a table lock outlives the command timeout): the upload is
    refused as unavailable, and the audio object it copied is deleted again."""
    settings = ingest_settings(stack, pg_command_timeout_s=1.0)
    async with running_ingest(settings) as service:
        blocker = await connect_db(stack)
        try:
            async with blocker.transaction():
                await blocker.execute("LOCK TABLE tracks IN EXCLUSIVE MODE")  # SELECT passes, INSERT waits
                answer = await upload(service, tone(hz=390.0))
        finally:
            await blocker.close()
    assert answer.status_code == 503, answer.text
    assert objects(stack, "audio/") == []


# --- 4. one bad key stalls a whole scan ----------------------------------------


async def test_a_key_holding_nul_is_reported_and_the_rest_of_the_page_is_ingested(stack: StackSettings) -> None:
    s3 = s3_client(stack)
    good = [f"{stack.drop_prefix}a-{n}.wav" for n in range(2)]
    bad = f"{stack.drop_prefix}a-\x00-evil.wav"
    for n, key in enumerate([good[0], bad, good[1]]):
        s3.put_object(Bucket=stack.bucket, Key=key, Body=tone(hz=500.0 + 20 * n))
    sqs = sqs_client(stack)
    sqs.purge_queue(QueueUrl=sqs.get_queue_url(QueueName=stack.sqs_queue)["QueueUrl"])  # the scan's job alone

    try:
        async with running_ingest(ingest_settings(stack, drop_worker_enabled=False)) as service:
            await service.resources.scan.scan_once()
            for key in good:
                assert (await drop_state(service, key))["state"] == "ingested"
            await service.resources.scan.scan_once()  # the bad key again: still no failure of the page
    finally:
        # The stack's clean-up deletes in batches (an XML body), which cannot carry a NUL: remove it alone.
        s3.delete_object(Bucket=stack.bucket, Key=bad)
    letters = [
        TrackFailed.from_bytes(r.value)
        for r in await read_topic(stack.kafka_bootstrap, stack.topics.tracks_failed, at_least=1)
    ]
    assert [letter.error_kind for letter in letters] == ["bad_key"]  # reported once, not at every scan
    assert "\\x00" in letters[0].error


# --- 5. deletion that deletes nothing ------------------------------------------


async def test_removal_erases_the_audio_and_the_waveform(stack: StackSettings, ingest: RunningIngest) -> None:
    answer = await upload(ingest, tone(hz=410.0))
    track_id, sha256 = answer.json()["track_id"], answer.json()["sha256"]
    s3 = s3_client(stack)
    # What the embedder writes for the track (the query service's /waveform serves this object).
    s3.put_object(Bucket=stack.bucket, Key=waveform_key(track_id), Body=b'{"mins": [], "maxs": []}')
    assert any(sha256 in key for key in objects(stack, "audio/"))

    async with ingest.client() as client:
        removed = await client.delete(f"/tracks/{track_id}")
    assert removed.status_code == 200, removed.text
    assert objects(stack, "audio/") == []
    assert objects(stack, waveform_key(track_id)) == []

    # Sent again, the content comes back whole: the revived track has its audio again.
    again = await upload(ingest, tone(hz=410.0))
    assert again.json()["track_id"] == track_id
    assert any(sha256 in key for key in objects(stack, "audio/"))


# --- 6. internals in public answers --------------------------------------------

_INTERNALS = ("s3://", "http://", "0x7f", "drop/", "secret-user")


async def test_public_failure_reasons_carry_no_internals(stack: StackSettings) -> None:
    async with running_ingest(ingest_settings(stack, status_enabled=True)) as service:
        key = f"{stack.drop_prefix}secret-user/private-name.wav"
        s3_client(stack).put_object(Bucket=stack.bucket, Key=key, Body=tone(amplitude=0.0))
        await wait_until(lambda: settled_state(service, key), "the silent drop was never rejected")
        rejected_id = hashlib.sha256(tone(amplitude=0.0)).hexdigest()[:32]

        answer = await upload(service, tone(hz=420.0))
        failed_id = answer.json()["track_id"]
        letter = TrackFailed(
            track_id=failed_id,
            stage="embed",
            error_kind="decode",
            error="GetObject s3://mess-audio/drop/secret-user/x.wav via http://minio:9000 <Body at 0x7f3a2b>",
        )
        await _publish(stack, stack.topics.tracks_failed, letter.to_bytes())

        async def failed() -> dict[str, Any] | None:
            row = await track_row(stack, failed_id)
            return row if row is not None and row["status"] == "failed" else None

        await wait_until(failed, "the downstream failure was never recorded")
    for track_id in (rejected_id, failed_id):
        row = await track_row(stack, track_id)
        assert row is not None and row["failure_reason"], track_id
        leaked = [text for text in _INTERNALS if text in row["failure_reason"]]
        assert not leaked, row["failure_reason"]
    assert (await track_row(stack, rejected_id) or {})["failure_reason"].startswith("silent: ")


async def _publish(stack: StackSettings, topic: str, value: bytes) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


# --- 7. smaller ones ----------------------------------------------------------


async def test_dead_letters_of_notices_have_keys_of_their_own(stack: StackSettings, ingest: RunningIngest) -> None:
    sqs = sqs_client(stack)
    url = sqs.get_queue_url(QueueName=stack.sqs_queue)["QueueUrl"]
    for body in ("{not json", "[1, 2]"):
        sqs.send_message(QueueUrl=url, MessageBody=body)
    records = await read_topic(stack.kafka_bootstrap, stack.topics.tracks_failed, at_least=2)
    keys = [record.key for record in records]
    assert b"None:None:None" not in keys
    assert len(set(keys)) == 2


async def test_snapshot_versions_compare_as_the_indexers_counters(stack: StackSettings, ingest: RunningIngest) -> None:
    membership = ingest.resources.reconciler.membership
    s3 = s3_client(stack)
    s3.put_object(Bucket=stack.bucket, Key=LATEST_KEY, Body=b"000000000010")
    assert await membership.superseded("000000000009")
    # Text the indexer never writes ranks nowhere; as text, each of these outranks every real version.
    for junk in (b"zzz", b"10", b"9"):
        s3.put_object(Bucket=stack.bucket, Key=LATEST_KEY, Body=junk)
        assert not await membership.superseded("000000000005"), junk


def test_a_bad_edit_of_the_keys_file_is_loud(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"old:{digest_key('leaked-key').hex()}\n")
    store = KeyStore(file=keys, check_interval_s=0, name="hostile test keys")
    # The operator revokes the leaked key, but pastes a key instead of its digest.
    keys.write_text("new:not-a-digest\n")
    with caplog.at_level(logging.ERROR):
        assert store.match("leaked-key") is not None  # the keys before stay (no lock-out) ...
    assert store.file_problem is not None  # ... but it is not quiet:
    assert "not applied" in caplog.text
    assert REGISTRY.get_sample_value("mess_api_keys_file_applied", {"store": "hostile test keys"}) == 0
    keys.write_text(f"new:{digest_key('new-key').hex()}\n")
    assert store.match("leaked-key") is None and store.match("new-key") is not None
    assert store.file_problem is None
    assert REGISTRY.get_sample_value("mess_api_keys_file_applied", {"store": "hostile test keys"}) == 1


# --- 8. event metadata bounded at the API --------------------------------------


async def test_metadata_too_large_for_one_event_is_refused_before_anything_is_stored(
    stack: StackSettings, ingest: RunningIngest
) -> None:
    # Every field within its own limit (2,000 characters), all of them together over the bound.
    wide = "\U0001d11e" * 2000  # 4 bytes each in UTF-8
    fields = {name: wide for name in TrackMetadata.model_fields if name not in ("year", "tags")}
    assert sum(len(value.encode()) for value in fields.values()) > MAX_METADATA_BYTES
    answer = await upload(ingest, tone(hz=430.0), **fields)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "bad_metadata"
    assert objects(stack, "audio/") == []
