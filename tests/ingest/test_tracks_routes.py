"""DELETE /tracks/{id}, GET /tracks/{id}/status, /health/* and /metrics on the running service."""

from mess.contracts.events import TrackRemoved
from mess.runtime.endpoints import StackSettings

from .service_harness import RunningIngest, outbox_drained, read_topic, tone


async def test_delete_announces_removal_once(stack: StackSettings, ingest: RunningIngest) -> None:
    async with ingest.client() as client:
        track_id = (await client.post("/tracks", files={"file": ("a.wav", tone())})).json()["track_id"]
        first = await client.delete(f"/tracks/{track_id}")
        again = await client.delete(f"/tracks/{track_id}")
        status = (await client.get(f"/tracks/{track_id}/status")).json()
    assert (first.status_code, first.json()) == (200, {"track_id": track_id, "status": "removed"})
    assert again.status_code == 200
    assert status["status"] == "removed"

    await outbox_drained(stack)
    records = await read_topic(stack.kafka_bootstrap, stack.topics.tracks_removed, at_least=1)
    assert len(records) == 1  # removing twice announces once
    event = TrackRemoved.from_bytes(records[0].value)
    assert (event.track_id, records[0].key) == (track_id, track_id.encode())


async def test_removed_content_uploaded_again_comes_back(stack: StackSettings, ingest: RunningIngest) -> None:
    audio = tone(hz=600.0)
    async with ingest.client() as client:
        track_id = (await client.post("/tracks", files={"file": ("a.wav", audio)})).json()["track_id"]
        await client.delete(f"/tracks/{track_id}")
        back = await client.post("/tracks", files={"file": ("a.wav", audio)})
    assert back.status_code == 200  # known content, so not "created"
    assert back.json()["track_id"] == track_id
    assert back.json()["status"] == "registered"
    await outbox_drained(stack)
    assert len(await read_topic(stack.kafka_bootstrap, stack.topics.tracks_added, at_least=2)) == 2


async def test_unknown_and_malformed_ids(ingest: RunningIngest) -> None:
    async with ingest.client() as client:
        assert (await client.get("/tracks/0123456789abcdef/status")).status_code == 404
        assert (await client.delete("/tracks/0123456789abcdef")).status_code == 404
        assert (await client.get("/tracks/Not%20An%20Id/status")).status_code == 422


async def test_health_and_metrics(ingest: RunningIngest) -> None:
    async with ingest.client() as client:
        await client.post("/tracks", files={"file": ("a.wav", tone())})
        await client.post("/tracks", files={"file": ("a.txt", b"no music here" * 100)})
        live = await client.get("/health/live")
        ready = await client.get("/health/ready")
        metrics = (await client.get("/metrics")).text
    assert live.status_code == 200
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"postgres": True, "s3": True, "broker": True}
    assert 'mess_ingest_uploads_total{outcome="created"}' in metrics
    assert 'mess_ingest_uploads_total{outcome="not_audio"}' in metrics
    assert "mess_ingest_outbox_pending" in metrics
