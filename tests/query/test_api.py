"""Every route and error case against the real Postgres, Redis, broker and S3 endpoint."""

from __future__ import annotations

import hashlib
import io
from collections.abc import AsyncIterator
from typing import Any

import boto3
import httpx
import pytest
from PIL import Image

from mess.contracts.storage import WaveformPeaks, audio_key, waveform_key
from mess.runtime.endpoints import StackSettings

from .conftest import Catalogue, RunningQuery, StartQuery, apply_registry, insert_tracks, track_row
from .snapshot_writer import SnapshotWriter

# 10,240 bytes standing in for a file: a WAV header (what /audio recognises audio by), then a pattern.
AUDIO = (b"RIFF\x00\x00\x00\x00WAVE" + bytes(range(256)) * 40)[:10240]


@pytest.fixture
async def served(
    stack: StackSettings, start_query: StartQuery, writer: SnapshotWriter, catalogue: Catalogue
) -> AsyncIterator[RunningQuery]:
    """Snapshot 1 serving the catalogue, plus tracks in other registry states and one audio file."""
    await apply_registry(stack)
    s3_kwargs: dict[str, Any] = stack.s3_client_kwargs()
    s3 = boto3.client("s3", **s3_kwargs)
    sha = hashlib.sha256(AUDIO).hexdigest()
    s3.put_object(Bucket=stack.bucket, Key=audio_key(sha, "wav"), Body=AUDIO, ContentType="audio/wav")
    rows = [dict(r) for r in catalogue.rows]
    rows[0].update(sha256=sha, audio_uri=f"s3://{stack.bucket}/{audio_key(sha, 'wav')}", tags=["organ", "fugue"])
    rows += [
        track_row("pending-track", status="registered", title="Just uploaded", composer="Satie"),
        track_row("broken-track", status="failed", failure_stage="embed", failure_reason="silent audio"),
        track_row("gone-track", status="removed", title="Removed"),
    ]
    await insert_tracks(stack, rows)
    peaks = WaveformPeaks(
        track_id=catalogue.ids[0],
        duration_s=2.0,
        sample_rate=24000,
        samples_per_peak=24,
        mins=[-0.5, -1.0, -0.25, 0.0] * 500,
        maxs=[0.5, 1.0, 0.25, 0.1] * 500,
    )
    s3.put_object(Bucket=stack.bucket, Key=waveform_key(catalogue.ids[0]), Body=peaks.model_dump_json().encode())
    manifest = writer.write(1, catalogue.shards(2), dim=16)
    async with start_query() as query:
        await query.wait_for_version(manifest.version)
        yield query


# --- tracks ------------------------------------------------------------------


async def test_list_tracks_filters_and_pages_through_everything(served: RunningQuery, catalogue: Catalogue) -> None:
    client = served.client
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params = {"limit": "25", **({"cursor": cursor} if cursor else {})}
        body = (await client.get("/tracks", params=params)).json()
        assert body["count"] == len(body["tracks"])
        seen += [t["track_id"] for t in body["tracks"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen)
    assert set(seen) == {*catalogue.ids, "pending-track", "broken-track"}  # removed tracks are not listed

    chopin = (await client.get("/tracks", params={"composer": "chopin"})).json()
    assert chopin["count"] == 15
    assert {t["composer"] for t in chopin["tracks"]} == {"Chopin"}
    assert all(t["status"] == "indexed" and t["snapshot_version"] == "000000000001" for t in chopin["tracks"])

    era = (await client.get("/tracks", params={"era": "BAROQUE", "text": "no. 1"})).json()
    assert {t["track_id"] for t in era["tracks"]} == {"bach-00-000", *(f"bach-00-{i:03d}" for i in range(9, 15))}

    tagged = (await client.get("/tracks", params={"text": "organ"})).json()
    assert [t["track_id"] for t in tagged["tracks"]] == [catalogue.ids[0]]
    none = (await client.get("/tracks", params={"dataset": "maestro"})).json()
    assert none == {"tracks": [], "count": 0, "next_cursor": None}


async def test_list_tracks_rejects_bad_parameters(served: RunningQuery) -> None:
    assert (await served.client.get("/tracks", params={"limit": "0"})).status_code == 422
    assert (await served.client.get("/tracks", params={"limit": "201"})).status_code == 422
    bad_cursor = await served.client.get("/tracks", params={"cursor": "%%%"})
    assert bad_cursor.status_code == 422
    assert bad_cursor.json()["detail"][0]["loc"] == ["query", "cursor"]


async def test_get_track_says_where_it_stands(served: RunningQuery, catalogue: Catalogue) -> None:
    client = served.client
    indexed = (await client.get(f"/tracks/{catalogue.ids[0]}")).json()
    assert indexed["status"] == "indexed"
    assert indexed["snapshot_version"] == "000000000001"
    assert indexed["composer"] == "Bach"
    assert indexed["tags"] == ["organ", "fugue"]
    assert indexed["audio_url"] == f"/audio/{catalogue.ids[0]}"

    pending = (await client.get("/tracks/pending-track")).json()
    assert pending["status"] == "registered"
    assert pending["snapshot_version"] is None
    failed = (await client.get("/tracks/broken-track")).json()
    assert (failed["status"], failed["failure_stage"], failed["failure_reason"]) == ("failed", "embed", "silent audio")

    missing = await client.get("/tracks/no-such-track")
    assert missing.status_code == 404
    assert "no-such-track" in missing.json()["detail"]
    assert (await client.get("/tracks/NOT_AN_ID")).status_code == 422


# --- recommendations -----------------------------------------------------------


async def test_similar_is_the_exact_top_k_across_shards(served: RunningQuery, catalogue: Catalogue) -> None:
    reference = catalogue.ids[20]
    response = await served.client.get(f"/recommend/{reference}", params={"k": 7, "strategy": "similar"})
    assert response.status_code == 200
    body = response.json()
    assert body["reference_track"]["track_id"] == reference
    assert body["reference_track"]["composer"] == "Mozart"
    assert body["strategy"] == "similar"
    assert body["algorithm"] == "similarity"
    assert body["snapshot_version"] == "000000000001"
    assert body["cached"] is False
    assert body["computation_time_ms"] > 0
    picks = body["recommendations"]
    assert [p["track_id"] for p in picks] == catalogue.expected_neighbours(reference, 7)
    assert reference not in [p["track_id"] for p in picks]
    scores = [p["similarity_score"] for p in picks]
    assert scores == sorted(scores, reverse=True)
    assert all(p["explanation"].startswith(f"#{p['rank']} most similar") for p in picks)
    assert all(p["title"] and p["composer"] for p in picks)


@pytest.mark.parametrize(
    ("strategy", "params", "words"),
    [
        ("balanced", {"weights": "similarity:0.5,composer:0.5"}, "blended score"),
        ("diverse", {"lambda": "0.3"}, "MMR pick"),
        ("complementary", {}, "group"),
        ("exploration", {"seed": "7", "floor": "0.2"}, "random pick (seed 7)"),
    ],
)
async def test_every_strategy_answers_and_explains(
    served: RunningQuery, catalogue: Catalogue, strategy: str, params: dict[str, str], words: str
) -> None:
    response = await served.client.get(
        f"/recommend/{catalogue.ids[3]}", params={"k": 5, "strategy": strategy, **params}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["strategy"] == strategy
    assert len(body["recommendations"]) == 5
    assert all(words in p["explanation"] for p in body["recommendations"])
    assert catalogue.ids[3] not in [p["track_id"] for p in body["recommendations"]]


async def test_exploration_with_a_seed_is_reproducible_and_without_one_is_not_cached(
    served: RunningQuery, catalogue: Catalogue
) -> None:
    url = f"/recommend/{catalogue.ids[3]}"
    seeded: dict[str, str | int | float] = {"k": 5, "strategy": "exploration", "seed": 11, "floor": 0.0}
    first = (await served.client.get(url, params=seeded)).json()
    second = (await served.client.get(url, params=seeded)).json()
    assert [p["track_id"] for p in first["recommendations"]] == [p["track_id"] for p in second["recommendations"]]
    assert (first["cached"], second["cached"]) == (False, True)
    unseeded = (await served.client.get(url, params={"k": 5, "strategy": "exploration", "floor": 0.0})).json()
    again = (await served.client.get(url, params={"k": 5, "strategy": "exploration", "floor": 0.0})).json()
    assert (unseeded["cached"], again["cached"]) == (False, False)
    assert isinstance(unseeded["params"]["seed"], int)  # reported so the draw can be repeated


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ({"k": "0"}, "k"),
        ({"k": "101"}, "k"),
        ({"strategy": "popular"}, "strategy"),
        ({"strategy": "diverse", "lambda": "1.5"}, "lambda"),
        ({"strategy": "diverse", "pool": "5000"}, "pool"),
        ({"strategy": "diverse", "k": "20", "pool": "10"}, "pool"),
        ({"strategy": "exploration", "floor": "-2"}, "floor"),
        ({"strategy": "exploration", "seed": "-1"}, "seed"),
        ({"strategy": "balanced", "weights": "tempo:1"}, "weights"),
        ({"strategy": "balanced", "weights": "composer:2"}, "weights"),
        ({"strategy": "similar", "lambda": "0.5"}, "lambda"),
    ],
)
async def test_bad_parameters_get_a_clear_422(
    served: RunningQuery, catalogue: Catalogue, query: dict[str, str], name: str
) -> None:
    response = await served.client.get(f"/recommend/{catalogue.ids[0]}", params=query)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert any(name in error["loc"] for error in detail), detail
    assert all(error["msg"] for error in detail)


async def test_unknown_track_is_404_and_unindexed_track_is_409_with_its_status(served: RunningQuery) -> None:
    unknown = await served.client.get("/recommend/no-such-track")
    assert unknown.status_code == 404
    assert (await served.client.get("/recommend/gone-track")).status_code == 404
    pending = await served.client.get("/recommend/pending-track")
    assert pending.status_code == 409
    assert pending.json()["status"] == "registered"
    assert "not in the serving snapshot" in pending.json()["detail"]
    failed = await served.client.get("/recommend/broken-track")
    assert (failed.status_code, failed.json()["status"]) == (409, "failed")


async def test_cache_hit_after_miss_and_miss_after_a_swap(
    served: RunningQuery, catalogue: Catalogue, writer: SnapshotWriter
) -> None:
    url = f"/recommend/{catalogue.ids[5]}"
    first = await served.client.get(url, params={"k": 4})
    second = await served.client.get(url, params={"k": 4})
    assert (first.json()["cached"], second.json()["cached"]) == (False, True)
    assert second.headers["x-cache"] == "hit"
    assert first.json()["recommendations"] == second.json()["recommendations"]
    assert served.metric("mess_query_recommendations_computed_total", {"strategy": "similar"}) == 1

    manifest = writer.write(2, catalogue.shards(3), dim=16)
    await writer.announce(manifest)
    await served.wait_for_version(manifest.version)
    after = (await served.client.get(url, params={"k": 4})).json()
    assert after["cached"] is False
    assert after["snapshot_version"] == manifest.version
    assert served.metric("mess_query_recommendations_computed_total", {"strategy": "similar"}) == 2


async def test_batch_answers_each_track_with_its_own_status(served: RunningQuery, catalogue: Catalogue) -> None:
    body = {"track_ids": [catalogue.ids[1], "no-such-track", "pending-track"], "k": 3, "strategy": "diverse"}
    response = await served.client.post("/recommend/batch", json=body)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status_code"] for r in results] == [200, 404, 409]
    assert len(results[0]["result"]["recommendations"]) == 3
    assert results[0]["result"]["algorithm"] == "diverse"
    assert results[2]["error"]["status"] == "registered"
    bad = await served.client.post("/recommend/batch", json={**body, "params": {"lambda": 3}})
    assert bad.status_code == 422
    assert (await served.client.post("/recommend/batch", json={"track_ids": []})).status_code == 422


# --- audio and waveforms -------------------------------------------------------------


async def test_audio_streams_whole_and_by_range(served: RunningQuery, catalogue: Catalogue) -> None:
    url = f"/audio/{catalogue.ids[0]}"
    whole = await served.client.get(url)
    assert whole.status_code == 200
    assert whole.content == AUDIO
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-type"] == "audio/wav"

    part = await served.client.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.content == AUDIO[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(AUDIO)}"
    tail = await served.client.get(url, headers={"Range": "bytes=-10"})
    assert (tail.status_code, tail.content) == (206, AUDIO[-10:])
    open_ended = await served.client.get(url, headers={"Range": "bytes=10000-"})
    assert open_ended.content == AUDIO[10000:]

    outside = await served.client.get(url, headers={"Range": f"bytes={len(AUDIO)}-"})
    assert outside.status_code == 416
    assert outside.headers["content-range"] == f"bytes */{len(AUDIO)}"
    assert (await served.client.get("/audio/no-such-track")).status_code == 404
    missing_object = await served.client.get(f"/audio/{catalogue.ids[1]}")  # registered, bytes never uploaded
    assert missing_object.status_code == 404
    assert "missing" in missing_object.json()["detail"]


async def test_audio_redirects_to_a_presigned_url_by_setting(
    stack: StackSettings, served: RunningQuery, start_query: StartQuery, catalogue: Catalogue
) -> None:
    async with start_query(audio_redirect=True, audio_url_expiry_s=30) as query:
        await query.wait_for_version("000000000001")
        response = await query.client.get(f"/audio/{catalogue.ids[0]}")
    assert response.status_code == 307
    location = response.headers["location"]
    assert "X-Amz-Expires=30" in location and "X-Amz-Signature=" in location
    async with httpx.AsyncClient(timeout=10) as s3_client:  # the presigned URL points at the real S3 endpoint
        fetched = await s3_client.get(location)
    assert fetched.content == AUDIO


async def test_waveform_as_json_and_png(served: RunningQuery, catalogue: Catalogue) -> None:
    peaks = await served.client.get(f"/waveform/{catalogue.ids[0]}")
    assert peaks.status_code == 200
    body = peaks.json()
    assert len(body["mins"]) == len(body["maxs"]) == 2000
    assert body["duration_s"] == 2.0

    png = await served.client.get(f"/waveform/{catalogue.ids[0]}", params={"format": "png", "width": 400})
    assert png.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(png.content))
    assert image.size == (400, 200)
    # The loudest peaks (1.0) reach the top row; the picture is not blank.
    column = [image.getpixel((x, 0)) for x in range(400)]
    assert any(pixel != (255, 255, 255) for pixel in column)

    not_yet = await served.client.get(f"/waveform/{catalogue.ids[1]}")
    assert not_yet.status_code == 404
    assert "no waveform" in not_yet.json()["detail"]
    assert (await served.client.get("/waveform/no-such-track")).status_code == 404
    assert (await served.client.get(f"/waveform/{catalogue.ids[0]}", params={"format": "gif"})).status_code == 422


# --- operations ------------------------------------------------------------------


async def test_health_metrics_and_docs(served: RunningQuery) -> None:
    assert (await served.client.get("/health/live")).json() == {"status": "live"}
    ready = await served.client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert ready.json()["checks"] == {"snapshot": True, "postgres": True, "redis": True, "analytics_broker": True}
    metrics = (await served.client.get("/metrics")).text
    assert "mess_query_snapshot_vectors 60.0" in metrics
    assert 'mess_query_request_seconds_count{route="/health/ready",status="200"}' in metrics
    docs = await served.client.get("/docs")
    assert docs.status_code == 200
    schema = (await served.client.get("/openapi.json")).json()
    assert {"/tracks", "/tracks/{track_id}", "/recommend/{track_id}", "/recommend/batch", "/audio/{track_id}"} <= set(
        schema["paths"]
    )
