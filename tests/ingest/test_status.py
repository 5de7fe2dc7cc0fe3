"""Track status from TrackEmbedded, TrackFailed and SnapshotPublished, consumed from the real broker."""

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import boto3
import numpy as np
from aiokafka import AIOKafkaProducer

from mess.contracts.events import (
    Event,
    ModelIdentity,
    SnapshotCounts,
    SnapshotPublished,
    TrackAdded,
    TrackEmbedded,
    TrackFailed,
)
from mess.contracts.storage import (
    LATEST_KEY,
    ShardManifest,
    SnapshotManifest,
    StoredFile,
    manifest_key,
    snapshot_dir,
)
from mess.ingest import metrics
from mess.runtime.endpoints import StackSettings

from .service_harness import RunningIngest, ingest_settings, read_topic, running_ingest, tone, wait_until

MODEL = ModelIdentity(name="dsp", revision="test", dim=4, pooling="mean")


async def publish(
    stack: StackSettings, topic: str, *messages: Event | tuple[bytes, bytes], partition: int | None = None
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    await producer.start()
    try:
        for message in messages:
            if isinstance(message, Event):
                await producer.send_and_wait(topic, message.to_bytes(), key=message.key().encode(), partition=partition)
            else:
                key, value = message
                await producer.send_and_wait(topic, value, key=key, partition=partition)
    finally:
        await producer.stop()


async def upload(service: RunningIngest, hz: float) -> tuple[str, str]:
    audio = tone(hz=hz)
    async with service.client() as client:
        answer = await client.post("/tracks", files={"file": ("t.wav", audio)})
    assert answer.status_code == 201, answer.text
    return answer.json()["track_id"], hashlib.sha256(audio).hexdigest()


async def status_of(service: RunningIngest, track_id: str) -> dict[str, Any]:
    async with service.client() as client:
        answer = await client.get(f"/tracks/{track_id}/status")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def put_snapshot(
    stack: StackSettings, version: str, track_ids: list[str], corrupt_ids: bool = False, latest: bool = True
) -> str:
    """A snapshot as the indexer lays it out, with only the files status reads being real (the id list);
    ``latest``: LATEST then names it, as the indexer moves it before announcing."""
    kwargs: dict[str, Any] = stack.s3_client_kwargs()
    s3 = boto3.client("s3", **kwargs)
    ids = json.dumps(track_ids).encode()
    ids_key = snapshot_dir(version) + "shard-0000.ids.json"
    s3.put_object(Bucket=stack.bucket, Key=ids_key, Body=ids + (b" " if corrupt_ids else b""))
    placeholder = StoredFile(key=snapshot_dir(version) + "unused", sha256="0" * 64, size_bytes=0)
    manifest = SnapshotManifest(
        version=version,
        created_at=datetime.now(UTC),
        model=MODEL,
        dim=MODEL.dim,
        shard_count=1,
        vector_count=len(track_ids),
        shards=[
            ShardManifest(
                shard=0,
                count=len(track_ids),
                index_factory="Flat",
                index=placeholder,
                ids=StoredFile(key=ids_key, sha256=hashlib.sha256(ids).hexdigest(), size_bytes=len(ids)),
                vectors=placeholder,
                built_in=version,
            )
        ],
    )
    s3.put_object(Bucket=stack.bucket, Key=manifest_key(version), Body=manifest.model_dump_json().encode())
    if latest:
        s3.put_object(Bucket=stack.bucket, Key=LATEST_KEY, Body=f"{version}\n".encode())
    return f"s3://{stack.bucket}/{manifest_key(version)}"


def embedded(track_id: str, sha256: str) -> TrackEmbedded:
    return TrackEmbedded(track_id=track_id, sha256=sha256, model=MODEL, vector=np.ones(4, dtype=np.float32))


async def test_track_moves_registered_embedded_indexed(stack: StackSettings) -> None:
    async with running_ingest(ingest_settings(stack, status_enabled=True)) as service:
        track_id, sha256 = await upload(service, 220.0)
        assert (await status_of(service, track_id))["status"] == "registered"

        await publish(stack, stack.topics.tracks_embedded, embedded(track_id, sha256))
        await wait_until(lambda: _has_status(service, track_id, "embedded"), "never embedded")

        manifest_uri = put_snapshot(stack, "000000000001", [track_id, "some-other-track"])
        snapshot = SnapshotPublished(
            version="000000000001", manifest_uri=manifest_uri, counts=SnapshotCounts(vectors=2, shards=1), model=MODEL
        )
        await publish(stack, stack.topics.index_snapshots, snapshot)
        status = await wait_until(lambda: _has_status(service, track_id, "indexed"), "never indexed")
        assert status["snapshot_version"] == "000000000001"

        # Late, replayed events do not move an indexed track back. Each is followed, in the same partition,
        # by an event for a marker track: once the marker has moved, the late event was handled before it.
        marker, marker_sha256 = await upload(service, 230.0)
        late_failure = TrackFailed(track_id=track_id, stage="embed", error_kind="decode", error="late")
        marker_failure = TrackFailed(track_id=marker, stage="embed", error_kind="decode", error="marker")
        await publish(stack, stack.topics.tracks_failed, late_failure, marker_failure, partition=0)
        await wait_until(lambda: _has_status(service, marker, "failed"), "marker never failed")
        late = embedded(track_id, sha256)
        await publish(stack, stack.topics.tracks_embedded, late, embedded(marker, marker_sha256), partition=0)
        await wait_until(lambda: _has_status(service, marker, "embedded"), "marker never embedded")
        assert (await status_of(service, track_id))["status"] == "indexed"


async def test_downstream_failure_is_recorded_with_stage_and_reason(stack: StackSettings) -> None:
    async with running_ingest(ingest_settings(stack, status_enabled=True)) as service:
        track_id, sha256 = await upload(service, 240.0)
        failure = TrackFailed(track_id=track_id, stage="embed", error_kind="decode", error="libsndfile gave up")
        await publish(stack, stack.topics.tracks_failed, failure)
        status = await wait_until(lambda: _has_status(service, track_id, "failed"), "never failed")
        assert status["failure_stage"] == "embed"
        # Public: the stage's code and a fixed text; what the failure said stays in the log and the dead letter.
        assert status["failure_reason"] == "decode: the audio could not be decoded for embedding"
        # A retry that succeeded later wins.
        await publish(stack, stack.topics.tracks_embedded, embedded(track_id, sha256))
        await wait_until(lambda: _has_status(service, track_id, "embedded"), "never embedded after the failure")


async def test_poison_messages_are_dead_lettered_and_do_not_block(stack: StackSettings) -> None:
    async with running_ingest(ingest_settings(stack, status_enabled=True)) as service:
        track_id, sha256 = await upload(service, 250.0)
        bad_snapshot = SnapshotPublished(
            version="000000000007",
            manifest_uri=put_snapshot(stack, "000000000007", [track_id], corrupt_ids=True),
            counts=SnapshotCounts(vectors=1, shards=1),
            model=MODEL,
        )
        await publish(stack, stack.topics.tracks_embedded, (track_id.encode(), b'{"track_id": "x", "vector": 3}'))
        await publish(stack, stack.topics.index_snapshots, bad_snapshot)
        # Behind the poison, in the same partitions: still handled.
        await publish(stack, stack.topics.tracks_embedded, embedded(track_id, sha256))
        await wait_until(lambda: _has_status(service, track_id, "embedded"), "blocked behind the poison")

        letters = await read_topic(stack.kafka_bootstrap, stack.topics.tracks_failed, at_least=2)
        kinds = sorted(TrackFailed.from_bytes(r.value).error_kind for r in letters)
        assert kinds == ["bad_snapshot", "malformed_event"]
        malformed = next(TrackFailed.from_bytes(r.value) for r in letters if b"malformed_event" in r.value)
        assert malformed.source_topic == stack.topics.tracks_embedded
        assert malformed.original_payload == '{"track_id": "x", "vector": 3}'
        assert malformed.track_id == track_id  # recognised from the message key
        assert (await status_of(service, track_id))["status"] == "embedded"  # the bad snapshot changed nothing


async def _has_status(service: RunningIngest, track_id: str, wanted: str) -> dict[str, Any] | None:
    status = await status_of(service, track_id)
    return status if status["status"] == wanted else None


async def test_a_snapshot_read_after_retention_removed_it_is_skipped_not_dead_lettered(stack: StackSettings) -> None:
    superseded = metrics.STATUS_EVENTS.labels("snapshot", "superseded")
    before = superseded._value.get()
    async with running_ingest(ingest_settings(stack, status_enabled=True)) as service:
        track_id, sha256 = await upload(service, 260.0)
        put_snapshot(stack, "000000000005", [track_id])
        kwargs: dict[str, Any] = stack.s3_client_kwargs()
        boto3.client("s3", **kwargs).put_object(Bucket=stack.bucket, Key=LATEST_KEY, Body=b"000000000005\n")

        def gone(version: str) -> SnapshotPublished:
            return SnapshotPublished(
                version=version,
                manifest_uri=f"s3://{stack.bucket}/{manifest_key(version)}",
                counts=SnapshotCounts(vectors=1, shards=1),
                model=MODEL,
            )

        # 3 is older than LATEST: retention removed it, nothing to report. 9 is newer and
        # missing: that is a broken snapshot, and a dead letter says so.
        await publish(stack, stack.topics.index_snapshots, gone("000000000003"), gone("000000000009"), partition=0)
        await publish(stack, stack.topics.tracks_embedded, embedded(track_id, sha256))
        await wait_until(lambda: _has_status(service, track_id, "embedded"), "blocked behind the missing snapshots")
        await wait_until(lambda: _changed(superseded, before), "the superseded snapshot skipped")

    letters = await read_topic(stack.kafka_bootstrap, stack.topics.tracks_failed, at_least=1)
    failed = [TrackFailed.from_bytes(r.value) for r in letters]
    assert [(f.error_kind, f.source_offset) for f in failed] == [("bad_snapshot", 1)]
    assert "000000000009" in failed[0].error


async def _changed(counter: Any, before: float) -> bool:
    return bool(counter._value.get() > before)


async def test_a_snapshot_the_indexer_did_not_publish_marks_nothing_and_is_dead_lettered(stack: StackSettings) -> None:
    """Well-formed snapshots with intact files, announced by whoever can write the topic: one ahead of LATEST
    and one with a 128-digit version. Neither marks its tracks indexed; each is dead-lettered once; the real
    snapshot that LATEST names, announced after them, is applied."""
    async with running_ingest(ingest_settings(stack, status_enabled=True)) as service:
        ahead, _ = await upload(service, 240.0)
        long_version, _ = await upload(service, 250.0)
        real, _ = await upload(service, 270.0)
        put_snapshot(stack, "000000000004", [])

        def announced(version: str) -> SnapshotPublished:
            return SnapshotPublished(
                version=version,
                manifest_uri=put_snapshot(
                    stack, version, [ahead if version.startswith("0") else long_version], latest=False
                ),
                counts=SnapshotCounts(vectors=1, shards=1),
                model=MODEL,
            )

        forged = [announced("000000000009"), announced("9" * 128)]
        real_snapshot = SnapshotPublished(
            version="000000000005",
            manifest_uri=put_snapshot(stack, "000000000005", [real]),
            counts=SnapshotCounts(vectors=1, shards=1),
            model=MODEL,
        )
        await publish(stack, stack.topics.index_snapshots, *forged, real_snapshot, partition=0)
        status = await wait_until(lambda: _has_status(service, real, "indexed"), "the real snapshot never applied")
        assert status["snapshot_version"] == "000000000005"
        assert (await status_of(service, ahead))["status"] == "registered"
        assert (await status_of(service, long_version))["status"] == "registered"

    letters = await read_topic(stack.kafka_bootstrap, stack.topics.tracks_failed, at_least=2)
    failed = [TrackFailed.from_bytes(r.value) for r in letters]
    assert [(f.error_kind, f.source_offset) for f in failed] == [("bad_snapshot", 0), ("bad_snapshot", 1)]


async def test_a_track_marked_indexed_that_the_latest_snapshot_lacks_goes_back_to_registered(
    stack: StackSettings,
) -> None:
    """After a lost broker or bucket, or a rebuild for another model, the registry must not keep
    calling tracks indexed that no snapshot holds: they go back to registered, for the reconciler."""
    async with running_ingest(ingest_settings(stack, status_enabled=True)) as service:
        kept, kept_sha256 = await upload(service, 250.0)
        lost, lost_sha256 = await upload(service, 260.0)
        await publish(stack, stack.topics.tracks_embedded, embedded(kept, kept_sha256), embedded(lost, lost_sha256))
        first = put_snapshot(stack, "000000000001", [kept, lost])
        counts = SnapshotCounts(vectors=2, shards=1)
        await publish(
            stack,
            stack.topics.index_snapshots,
            SnapshotPublished(version="000000000001", manifest_uri=first, counts=counts, model=MODEL),
        )
        await wait_until(lambda: _has_status(service, lost, "indexed"), "never indexed")

        second = put_snapshot(stack, "000000000002", [kept])
        await publish(
            stack,
            stack.topics.index_snapshots,
            SnapshotPublished(version="000000000002", manifest_uri=second, counts=counts, model=MODEL),
        )
        status = await wait_until(lambda: _has_status(service, lost, "registered"), "still called indexed")
        assert status["snapshot_version"] is None
        assert (await status_of(service, kept))["status"] == "indexed"


async def test_a_failed_track_can_be_retried_once_with_a_key(stack: StackSettings) -> None:
    async with running_ingest(ingest_settings(stack, status_enabled=True)) as service:
        track_id, _ = await upload(service, 270.0)
        failure = TrackFailed(track_id=track_id, stage="embed", error_kind="decode", error="codec missing")
        await publish(stack, stack.topics.tracks_failed, failure)
        await wait_until(lambda: _has_status(service, track_id, "failed"), "never failed")

        async with service.client(api_key=None) as anonymous:
            assert (await anonymous.post(f"/tracks/{track_id}/retry")).status_code == 401
        async with service.client() as client:
            first = await client.post(f"/tracks/{track_id}/retry")
            again = await client.post(f"/tracks/{track_id}/retry")
            missing = await client.post("/tracks/no-such-track/retry")
        assert first.json() == {"track_id": track_id, "status": "registered", "retried": True}
        assert again.json() == {"track_id": track_id, "status": "registered", "retried": False}
        assert missing.status_code == 404
        status = await status_of(service, track_id)
        assert status["failure_stage"] is None and status["failure_reason"] is None
        records = await read_topic(stack.kafka_bootstrap, stack.topics.tracks_added, at_least=2)
        announced = [TrackAdded.from_bytes(r.value) for r in records if r.value is not None]
        assert [e.reason for e in announced if e.track_id == track_id] == ["new", "retry"]
