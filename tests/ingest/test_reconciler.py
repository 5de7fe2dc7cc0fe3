"""The reconciler against real Postgres, S3 and broker: the latest snapshot first, then bounded re-announcements."""

from typing import Any

import boto3

from mess.contracts.events import TRANSIENT_EXHAUSTED, TrackAdded
from mess.contracts.storage import LATEST_KEY
from mess.runtime.endpoints import StackSettings

from .service_harness import connect_db, ingest_settings, outbox_drained, read_topic, running_ingest, tone
from .test_status import put_snapshot


async def test_stale_tracks_are_reannounced_at_a_bounded_rate(stack: StackSettings) -> None:
    settings = ingest_settings(stack, reconcile_grace_s=600, reconcile_batch=2)
    async with running_ingest(settings) as service, service.client() as client:
        ids = []
        for hz in (310.0, 320.0, 330.0, 340.0, 350.0):
            ids.append((await client.post("/tracks", files={"file": ("t.wav", tone(hz=hz))})).json()["track_id"])
        indexed, fresh, *stale = ids
        connection = await connect_db(stack)
        try:
            # Everything but `fresh` was announced long ago.
            await connection.execute("UPDATE tracks SET announced_at = now() - interval '1 hour' WHERE id <> $1", fresh)
        finally:
            await connection.close()
        # The indexer published a snapshot holding `indexed`, but its event never reached ingest.
        put_snapshot(stack, "000000000003", [indexed])
        kwargs: dict[str, Any] = stack.s3_client_kwargs()
        boto3.client("s3", **kwargs).put_object(Bucket=stack.bucket, Key=LATEST_KEY, Body=b"000000000003\n")

        reconciler = service.resources.reconciler
        first = await reconciler.reconcile_once()
        assert (first.latest_version, first.newly_indexed) == ("000000000003", 1)
        status = (await client.get(f"/tracks/{indexed}/status")).json()
        assert (status["status"], status["snapshot_version"]) == ("indexed", "000000000003")
        second = await reconciler.reconcile_once()
        third = await reconciler.reconcile_once()
        # At most reconcile_batch per pass; each stale track once; the fresh and the indexed ones never.
        assert len(first.reannounced) == 2
        assert len(second.reannounced) == 1
        assert sorted(first.reannounced + second.reannounced) == sorted(stale)
        assert third.reannounced == []  # just re-announced: not again before the grace period passes anew
        await outbox_drained(stack)

    records = await read_topic(stack.kafka_bootstrap, stack.topics.tracks_added, at_least=8)
    events = [TrackAdded.from_bytes(r.value) for r in records]
    assert sorted(e.track_id for e in events if e.reason == "reconcile") == sorted(stale)


async def test_a_track_failed_by_an_outage_is_tried_again_but_a_bad_one_is_not(stack: StackSettings) -> None:
    settings = ingest_settings(stack, reconcile_grace_s=600)
    async with running_ingest(settings) as service, service.client() as client:
        outage, undecodable = [
            (await client.post("/tracks", files={"file": ("t.wav", tone(hz=hz))})).json()["track_id"]
            for hz in (410.0, 420.0)
        ]
        registry = service.resources.registry
        assert await registry.mark_failed(outage, "embed", f"{TRANSIENT_EXHAUSTED}: s3 get_object failed 5 times")
        assert await registry.mark_failed(undecodable, "embed", "decode: not audio")
        connection = await connect_db(stack)
        try:
            await connection.execute("UPDATE tracks SET announced_at = now() - interval '1 hour'")
        finally:
            await connection.close()
        report = await service.resources.reconciler.reconcile_once()
        assert report.reannounced == [outage]
        assert (await service.resources.reconciler.reconcile_once()).reannounced == []  # not before the grace again
        await outbox_drained(stack)
