"""S3 auto-ingest against moto's S3 and SQS (the bucket's real ObjectCreated notification) and the real broker."""

import hashlib
import json
from typing import Any

import boto3
import pytest

from mess.contracts.events import TrackAdded, TrackFailed, TrackMetadata
from mess.runtime.endpoints import StackSettings

from .service_harness import (
    RunningIngest,
    ingest_settings,
    outbox_drained,
    read_topic,
    running_ingest,
    table_count,
    tone,
    wait_until,
)


def s3_client(stack: StackSettings) -> Any:
    kwargs: dict[str, Any] = stack.s3_client_kwargs()
    return boto3.client("s3", **kwargs)


def sqs_client(stack: StackSettings) -> Any:
    kwargs: dict[str, Any] = stack.s3_client_kwargs()
    return boto3.client("sqs", **kwargs)


def queue_url(stack: StackSettings) -> str:
    url: str = sqs_client(stack).get_queue_url(QueueName=stack.sqs_queue)["QueueUrl"]
    return url


async def queue_empty(stack: StackSettings) -> bool:
    attributes = sqs_client(stack).get_queue_attributes(
        QueueUrl=queue_url(stack),
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return bool(
        attributes["ApproximateNumberOfMessages"] == "0" and attributes["ApproximateNumberOfMessagesNotVisible"] == "0"
    )


async def drop_state(service: RunningIngest, key: str) -> dict[str, Any]:
    async with service.client() as client:
        answer = await client.get("/drops", params={"key": key})
    assert answer.status_code == 200, answer.text
    state: dict[str, Any] = answer.json()
    return state


async def settled(service: RunningIngest, *keys: str) -> bool:
    return all([(await drop_state(service, key))["state"] != "unknown" for key in keys])


async def test_dropped_file_becomes_a_track_with_metadata_from_its_key(
    stack: StackSettings, ingest: RunningIngest
) -> None:
    audio = tone(hz=261.6)
    sha256 = hashlib.sha256(audio).hexdigest()
    # A space and a '+' in the key: S3 notices carry keys URL-encoded.
    key = f"{stack.drop_prefix}baroque era/bach+sons/Prelude_in_C.wav"
    s3_client(stack).put_object(Bucket=stack.bucket, Key=key, Body=audio)

    records = await read_topic(stack.kafka_bootstrap, stack.topics.tracks_added, at_least=1)
    event = TrackAdded.from_bytes(records[0].value)
    assert event.track_id == sha256[:32]
    assert event.dataset == "s3"
    assert event.metadata.title == "Prelude in C"
    assert event.metadata.tags == ["baroque era", "bach+sons"]
    assert event.sha256 == sha256
    assert event.audio_uri.startswith(f"s3://{stack.bucket}/audio/")
    assert (await drop_state(ingest, key)) == {"key": key, "state": "ingested", "track_id": sha256[:32], "reason": None}
    await wait_until(lambda: queue_empty(stack), "the notice was never deleted")
    # The dropped object stays where it was put: the drop prefix is the user's, not ours.
    assert s3_client(stack).head_object(Bucket=stack.bucket, Key=key)["ContentLength"] == len(audio)


async def test_importer_metadata_names_the_dataset_id_and_metadata(stack: StackSettings, ingest: RunningIngest) -> None:
    audio = tone(hz=392.0, fmt="FLAC")
    metadata = TrackMetadata(title="Prélude", composer="Bach", work="BWV 846", tags=["smd"], year=2009)
    key = f"{stack.drop_prefix}smd/Bach_BWV846-01_001_20090916-SMD.flac"
    s3_client(stack).put_object(
        Bucket=stack.bucket,
        Key=key,
        Body=audio,
        Metadata={
            "mess-dataset": "smd",
            "mess-track-id": "smd-bach-bwv846-01-001-0123456789ab",
            "mess-metadata": json.dumps(metadata.model_dump(mode="json"), ensure_ascii=True),
        },
    )
    records = await read_topic(stack.kafka_bootstrap, stack.topics.tracks_added, at_least=1)
    event = TrackAdded.from_bytes(records[0].value)
    assert event.track_id == "smd-bach-bwv846-01-001-0123456789ab"
    assert event.dataset == "smd"
    assert event.metadata == metadata


async def test_same_object_twice_gives_one_track(stack: StackSettings, ingest: RunningIngest) -> None:
    audio = tone(hz=440.0)
    s3 = s3_client(stack)
    first, again = f"{stack.drop_prefix}a.wav", f"{stack.drop_prefix}copies/a-copy.wav"
    s3.put_object(Bucket=stack.bucket, Key=first, Body=audio)
    s3.put_object(Bucket=stack.bucket, Key=first, Body=audio)  # a second notice for the same object
    s3.put_object(Bucket=stack.bucket, Key=again, Body=audio)  # the same bytes under another name
    await wait_until(lambda: settled(ingest, first, again), "the objects were never ingested")
    await wait_until(lambda: queue_empty(stack), "the notices were never deleted")
    await outbox_drained(stack)

    records = await read_topic(stack.kafka_bootstrap, stack.topics.tracks_added, at_least=1)
    assert len(records) == 1
    assert await table_count(stack, "tracks") == 1
    assert (await drop_state(ingest, again))["track_id"] == hashlib.sha256(audio).hexdigest()[:32]


async def test_invalid_object_is_failed_with_its_reason_and_not_retried(
    stack: StackSettings, ingest: RunningIngest
) -> None:
    silent = tone(seconds=3.0, amplitude=0.0)
    track_id = hashlib.sha256(silent).hexdigest()[:32]
    key = f"{stack.drop_prefix}silence.wav"
    s3_client(stack).put_object(Bucket=stack.bucket, Key=key, Body=silent)

    state = await wait_until(lambda: _rejected(ingest, key), "the silent object was never rejected")
    assert state["reason"].startswith("silent:")
    async with ingest.client() as client:
        status = (await client.get(f"/tracks/{track_id}/status")).json()
    assert status["status"] == "failed"
    assert status["failure_stage"] == "ingest"
    assert status["failure_reason"].startswith("silent:")

    letters = await read_topic(stack.kafka_bootstrap, stack.topics.tracks_failed, at_least=1)
    letter = TrackFailed.from_bytes(letters[0].value)
    assert (letter.track_id, letter.stage, letter.error_kind) == (track_id, "ingest", "silent")
    await wait_until(lambda: queue_empty(stack), "the notice of the bad object was never deleted")
    await outbox_drained(stack)
    assert await read_topic(stack.kafka_bootstrap, stack.topics.tracks_added) == []
    # A scan sees the same version of the object and leaves it alone: rejected once, not retried forever.
    assert await ingest.resources.scan.scan_once() == 0


async def _rejected(service: RunningIngest, key: str) -> dict[str, Any] | None:
    state = await drop_state(service, key)
    return state if state["state"] == "rejected" else None


async def test_test_event_is_ignored_and_a_malformed_notice_is_dead_lettered(
    stack: StackSettings, ingest: RunningIngest
) -> None:
    sqs = sqs_client(stack)
    url = queue_url(stack)
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"}))
    sqs.send_message(QueueUrl=url, MessageBody="{not json")
    await wait_until(lambda: queue_empty(stack), "the notices were never deleted")

    letters = await read_topic(stack.kafka_bootstrap, stack.topics.tracks_failed, at_least=1)
    assert len(letters) == 1
    letter = TrackFailed.from_bytes(letters[0].value)
    assert letter.error_kind == "malformed_notice"
    assert letter.original_payload == "{not json"
    assert await table_count(stack, "tracks") == 0


async def test_reconcile_scan_ingests_objects_whose_notice_was_lost(stack: StackSettings) -> None:
    s3 = s3_client(stack)
    keys = [f"{stack.drop_prefix}lost/{n}.wav" for n in range(3)]
    for n, key in enumerate(keys):
        s3.put_object(Bucket=stack.bucket, Key=key, Body=tone(hz=300.0 + 50 * n))
    sqs_client(stack).purge_queue(QueueUrl=queue_url(stack))  # the notices are gone
    await wait_until(lambda: queue_empty(stack), "purge")

    settings = ingest_settings(stack, drop_scan_interval_s=0.5)
    async with running_ingest(settings) as service:
        await wait_until(lambda: settled(service, *keys), "the scan never found the objects")
        records = await read_topic(stack.kafka_bootstrap, stack.topics.tracks_added, at_least=3)
        assert sorted(TrackAdded.from_bytes(r.value).metadata.title or "" for r in records) == ["0", "1", "2"]
        assert await service.resources.scan.scan_once() == 0  # nothing left to do


@pytest.mark.parametrize(
    ("metadata", "kind"),
    [({"mess-track-id": "Not A Valid Id!"}, "bad_metadata"), ({"mess-metadata": "{broken"}, "bad_metadata")],
)
async def test_object_with_broken_importer_metadata_is_rejected(
    stack: StackSettings, ingest: RunningIngest, metadata: dict[str, str], kind: str
) -> None:
    key = f"{stack.drop_prefix}broken.wav"
    s3_client(stack).put_object(Bucket=stack.bucket, Key=key, Body=tone(), Metadata=metadata)
    state = await wait_until(lambda: _rejected(ingest, key), "never rejected")
    assert state["reason"].startswith(f"{kind}:")
    assert await table_count(stack, "tracks") == 0
