"""POST /tracks against the real stack: events on the broker, idempotency, and every refusal leaving nothing."""

import hashlib
import json
from collections.abc import Callable
from typing import Any

import boto3
import pytest

from mess.contracts.events import TrackAdded
from mess.contracts.storage import audio_key
from mess.runtime.endpoints import StackSettings

from .service_harness import (
    RunningIngest,
    ingest_settings,
    outbox_drained,
    read_topic,
    running_ingest,
    table_count,
    tone,
)


def bucket_keys(stack: StackSettings) -> list[str]:
    kwargs: dict[str, Any] = stack.s3_client_kwargs()
    s3 = boto3.client("s3", **kwargs)
    answer = s3.list_objects_v2(Bucket=stack.bucket)
    uploads = s3.list_multipart_uploads(Bucket=stack.bucket)
    return [o["Key"] for o in answer.get("Contents", [])] + [u["Key"] for u in uploads.get("Uploads", [])]


async def test_upload_announces_the_track_with_its_fields(stack: StackSettings, ingest: RunningIngest) -> None:
    audio = tone(seconds=2.5, hz=330.0, fmt="FLAC")
    sha256 = hashlib.sha256(audio).hexdigest()
    async with ingest.client() as client:
        answer = await client.post(
            "/tracks",
            files={"file": ("prelude_in_c.flac", audio, "audio/flac")},
            data={"composer": "Bach", "year": "1722", "tags": "baroque, keyboard", "instrument": "piano"},
        )
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["track_id"] == sha256[:32]
    assert body["status"] == "registered"
    assert body["created"] is True

    records = await read_topic(stack.kafka_bootstrap, stack.topics.tracks_added, at_least=1)
    assert len(records) == 1
    assert records[0].key == sha256[:32].encode()
    event = TrackAdded.from_bytes(records[0].value)
    assert event.track_id == sha256[:32]
    assert event.sha256 == sha256
    assert event.dataset == "upload"
    assert event.audio_uri == f"s3://{stack.bucket}/{audio_key(sha256, 'flac')}"
    assert event.metadata.composer == "Bach"
    assert event.metadata.title == "prelude_in_c"  # the file name, since no title was sent
    assert event.metadata.year == 1722
    assert event.metadata.tags == ["baroque", "keyboard"]
    assert event.duration_s == pytest.approx(2.5, abs=0.01)
    assert event.sample_rate == 22050
    assert event.channels == 1
    assert event.size_bytes == len(audio)
    assert event.reason == "new"
    # The stored object is the uploaded bytes; the staging copy is gone.
    assert bucket_keys(stack) == [audio_key(sha256, "flac")]


async def test_same_content_twice_is_one_track_and_one_event(stack: StackSettings, ingest: RunningIngest) -> None:
    audio = tone(hz=550.0)
    async with ingest.client() as client:
        first = await client.post("/tracks", files={"file": ("a.wav", audio)})
        second = await client.post("/tracks", files={"file": ("renamed.wav", audio)}, data={"title": "other"})
    assert first.status_code == 201, first.text
    assert second.status_code == 200, second.text
    assert second.json()["track_id"] == first.json()["track_id"]
    assert second.json()["created"] is False
    assert second.json()["duration_s"] == pytest.approx(first.json()["duration_s"])

    await outbox_drained(stack)
    records = await read_topic(stack.kafka_bootstrap, stack.topics.tracks_added, at_least=1)
    assert [r.key for r in records] == [first.json()["track_id"].encode()]
    assert await table_count(stack, "tracks") == 1
    assert len(bucket_keys(stack)) == 1


async def test_upload_needs_a_valid_api_key(stack: StackSettings, ingest: RunningIngest) -> None:
    audio = tone()
    async with ingest.client(api_key=None) as anonymous, ingest.client(api_key="wrong-key") as wrong:
        missing = await anonymous.post("/tracks", files={"file": ("a.wav", audio)})
        bad = await wrong.post("/tracks", files={"file": ("a.wav", audio)})
        delete = await wrong.delete("/tracks/abc")
    assert missing.status_code == 401
    assert bad.status_code == 401
    assert delete.status_code == 401
    assert bucket_keys(stack) == []
    assert await table_count(stack, "tracks") == 0


def _corrupt_flac() -> bytes:
    audio = tone(seconds=3.0, fmt="FLAC")
    return audio[: len(audio) // 2]


def _garbled_ogg() -> bytes:
    audio = bytearray(tone(seconds=3.0, fmt="OGG"))
    middle = len(audio) // 2
    audio[middle : middle + 2000] = bytes(range(256)) * 7 + bytes(208)
    return bytes(audio)


BAD_AUDIO: dict[str, Callable[[], bytes]] = {
    "not_audio": lambda: b"this is a text file, not music\n" * 200,
    "corrupt_flac": _corrupt_flac,
    "corrupt_ogg": _garbled_ogg,
    "silent": lambda: tone(seconds=3.0, amplitude=0.0),
    "too_short": lambda: tone(seconds=0.5),
    "too_long": lambda: tone(seconds=8.0),
    "unsupported_format": lambda: tone(fmt="AIFF", subtype="PCM_16"),
}
EXPECTED_KIND = {"corrupt_flac": "corrupt", "corrupt_ogg": "corrupt"}


@pytest.mark.parametrize("case", sorted(BAD_AUDIO))
async def test_bad_audio_is_refused_with_415_and_leaves_nothing(stack: StackSettings, case: str) -> None:
    settings = ingest_settings(stack, max_duration_s=5.0)
    async with running_ingest(settings) as service, service.client() as client:
        answer = await client.post("/tracks", files={"file": ("upload.bin", BAD_AUDIO[case]())})
    assert answer.status_code == 415, answer.text
    body = answer.json()
    assert body["error"] == EXPECTED_KIND.get(case, case)
    assert body["detail"]  # a sentence for people
    assert bucket_keys(stack) == []
    assert await table_count(stack, "tracks") == 0
    assert await table_count(stack, "outbox") == 0


async def test_oversized_upload_is_refused_with_413_while_streaming(stack: StackSettings) -> None:
    # Parts of 5 MiB, limit 6 MiB: one part is already in S3 (a multipart upload) when the limit is crossed.
    settings = ingest_settings(stack, max_upload_bytes=6 * 1024**2, s3_part_bytes=5 * 1024**2)
    audio = tone(seconds=200.0, rate=22050)  # ~8.8 MB of WAV

    async def chunked_body() -> Any:
        # No Content-Length, so only the streaming check can catch it.
        boundary = "mess-test-boundary"
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        for start in range(0, len(audio), 256 * 1024):
            yield audio[start : start + 256 * 1024]
        yield f"\r\n--{boundary}--\r\n".encode()

    async with running_ingest(settings) as service, service.client() as client:
        answer = await client.post(
            "/tracks",
            content=chunked_body(),
            headers={"Content-Type": "multipart/form-data; boundary=mess-test-boundary"},
        )
        assert answer.status_code == 413, answer.text
        assert answer.json()["error"] == "too_large"
        declared = await client.post("/tracks", files={"file": ("big.wav", audio)})
        assert declared.status_code == 413, declared.text
    assert bucket_keys(stack) == []  # neither objects nor unfinished multipart uploads
    assert await table_count(stack, "tracks") == 0


async def test_request_shape_errors_are_clear(stack: StackSettings, ingest: RunningIngest) -> None:
    async with ingest.client() as client:
        no_file = await client.post("/tracks", data={"title": "x"}, files={"other": ("a.txt", b"x")})
        not_multipart = await client.post("/tracks", content=tone(), headers={"Content-Type": "audio/wav"})
        bad_year = await client.post("/tracks", files={"file": ("a.wav", tone())}, data={"year": "last summer"})
        unknown = await client.post("/tracks", files={"file": ("a.wav", tone())}, data={"titel": "typo"})
    assert (no_file.status_code, no_file.json()["error"]) == (400, "no_file")
    assert (not_multipart.status_code, not_multipart.json()["error"]) == (415, "not_multipart")
    assert (bad_year.status_code, bad_year.json()["error"]) == (422, "bad_metadata")
    assert "year" in bad_year.json()["detail"]
    assert (unknown.status_code, unknown.json()["error"]) == (422, "bad_metadata")
    assert "titel" in unknown.json()["detail"]
    assert bucket_keys(stack) == []
    assert await table_count(stack, "tracks") == 0


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "MP3"])
async def test_each_accepted_format_is_stored_under_its_extension(stack: StackSettings, fmt: str) -> None:
    settings = ingest_settings(stack, relay_enabled=False)
    audio = tone(seconds=1.5, fmt=fmt)
    async with running_ingest(settings) as service, service.client() as client:
        answer = await client.post("/tracks", files={"file": ("x", audio)})
    assert answer.status_code == 201, answer.text
    sha256 = hashlib.sha256(audio).hexdigest()
    assert bucket_keys(stack) == [audio_key(sha256, fmt.lower())]
    # The event waits in the outbox (the relay is off here): registered and queued in one transaction.
    payload = await _outbox_payload(stack)
    assert payload["track_id"] == sha256[:32]


async def _outbox_payload(stack: StackSettings) -> dict[str, Any]:
    from .service_harness import connect_db

    connection = await connect_db(stack)
    try:
        raw = await connection.fetchval("SELECT payload::text FROM outbox ORDER BY id LIMIT 1")
    finally:
        await connection.close()
    result: dict[str, Any] = json.loads(raw)
    return result
