"""Hostile requests against the query service, in-process on this test's slice of the real stack
(Postgres, S3, Redis, the broker), one test per class of issue 14 that the query service answers for.

Each failed on the code before the fix: expensive strategies ran unbounded on the search threads,
/audio served whatever type the stored object claimed, non-finite JSON and huge Range headers were
500s, float spellings made cache entries, Redis entries were believed, readiness echoed refusal texts,
PNG waveforms were drawn on the event loop, and slash redirects echoed the Host header.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
from typing import Any

import boto3
import numpy as np
import pytest
import soundfile as sf
from redis.asyncio import Redis

from mess.contracts.storage import WaveformPeaks, audio_key, waveform_key
from mess.query import media as media_module
from mess.query.recommendation_cache import cache_key
from mess.runtime.endpoints import StackSettings
from tests.query.conftest import (
    Catalogue,
    StartQuery,
    apply_registry,
    eventually,
    insert_tracks,
    track_row,
)
from tests.query.snapshot_writer import SnapshotWriter, Tampering


def _wav(seconds: float = 1.0, rate: int = 8000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


HTML = b"<!doctype html><html><body><script>alert(document.cookie)</script></body></html>"


def _put(stack: StackSettings, body: bytes, content_type: str, extension: str = "wav") -> str:
    kwargs: dict[str, Any] = stack.s3_client_kwargs()
    key = audio_key(hashlib.sha256(body).hexdigest(), extension)
    boto3.client("s3", **kwargs).put_object(Bucket=stack.bucket, Key=key, Body=body, ContentType=content_type)
    return f"s3://{stack.bucket}/{key}"


@pytest.fixture
async def tracks(stack: StackSettings, writer: SnapshotWriter, catalogue: Catalogue) -> str:
    """The catalogue indexed in snapshot 1, plus tracks whose stored objects are hostile; yields its version."""
    await apply_registry(stack)
    wav = _wav()
    rows = [dict(r) for r in catalogue.rows]
    rows[0]["audio_uri"] = _put(stack, wav, "text/html")  # real audio, a lying ContentType
    rows[1]["audio_uri"] = _put(stack, HTML, "text/html")  # HTML dropped as .wav
    rows[2]["audio_uri"] = _put(stack, b"", "audio/wav")  # an empty object
    rows += [
        # refused at embedding: its source object must never be served, however audio-like
        track_row(
            "rejected-drop", status="failed", failure_stage="embed", audio_uri=_put(stack, _wav(2.0), "audio/wav")
        ),
    ]
    await insert_tracks(stack, rows)
    kwargs: dict[str, Any] = stack.s3_client_kwargs()
    peaks = WaveformPeaks(
        track_id=catalogue.ids[0],
        duration_s=60.0,
        sample_rate=24000,
        samples_per_peak=720,
        mins=[-0.5, -1.0, -0.25, 0.0] * 500,
        maxs=[0.5, 1.0, 0.25, 0.1] * 500,
    )
    body = peaks.model_dump_json().encode()
    boto3.client("s3", **kwargs).put_object(Bucket=stack.bucket, Key=waveform_key(catalogue.ids[0]), Body=body)
    return writer.write(1, catalogue.shards(2), dim=16).version


# --- class 3: request cost ------------------------------------------------------------------------


async def test_every_strategy_has_a_cost_bound_and_expensive_ones_cannot_take_the_search_threads(
    tracks: str, start_query: StartQuery, catalogue: Catalogue
) -> None:
    reference = catalogue.ids[0]
    async with start_query(max_strategy_work=1e6, max_batch_work=5e5, strategy_queue=1, strategy_wait_s=0.1) as query:
        await query.wait_for_version(tracks)
        # One request asking for more work than the budget is refused with a reason, before it runs.
        costly = await query.client.get(f"/recommend/{reference}?strategy=complementary&k=50&pool=60")
        assert costly.status_code == 422, costly.text
        assert "lower pool or k" in costly.text
        assert query.metric("mess_query_recommendations_computed_total", {"strategy": "complementary"}) == 0
        # While every slot for expensive strategies is taken, another expensive request is refused at
        # once, and plain searches are still answered: they never queue behind expensive work.
        slots = query.resources.recommender._strategy_slots
        async with slots:
            busy = await query.client.get(f"/recommend/{reference}?strategy=diverse&k=5&pool=20")
            plain = await query.client.get(f"/recommend/{reference}?strategy=similar&k=5")
        assert (busy.status_code, busy.headers.get("retry-after")) == (503, "1"), busy.text
        assert plain.status_code == 200
        assert (await query.client.get(f"/recommend/{reference}?strategy=diverse&k=5&pool=20")).status_code == 200
        # A batch has a total budget: each item is affordable, all of them together are not.
        batch = {"track_ids": catalogue.ids[:40], "k": 5, "strategy": "diverse", "params": {"pool": 40}}
        refused = await query.client.post("/recommend/batch", json=batch)
        assert refused.status_code == 422 and "this batch would cost" in refused.text, refused.text[:500]


async def test_reads_have_an_optional_per_client_rate_limit(tracks: str, start_query: StartQuery) -> None:
    async with start_query(read_rate_per_s=0.01, read_burst=3) as query:
        await query.wait_for_version(tracks)
        answers = [(await query.client.get("/tracks?limit=1")).status_code for _ in range(5)]
        assert answers == [200, 200, 200, 429, 429]
        refused = await query.client.get("/tracks?limit=1")
        assert int(refused.headers["retry-after"]) >= 1
        assert (await query.client.get("/health/live")).status_code == 200  # probes are never limited


# --- class 4: content served as the attacker typed it ---------------------------------------------


async def test_audio_is_served_only_as_audio_and_only_for_tracks_that_were_not_refused(
    tracks: str, start_query: StartQuery, catalogue: Catalogue
) -> None:
    async with start_query() as query:
        await query.wait_for_version(tracks)
        good = await query.client.get(f"/audio/{catalogue.ids[0]}")
        assert good.status_code == 200
        # The type is what the bytes are, not the text/html the object was stored with.
        assert good.headers["content-type"] == "audio/wav"
        assert good.headers["x-content-type-options"] == "nosniff"
        assert good.headers["content-disposition"] == f'inline; filename="{catalogue.ids[0]}.wav"'
        assert "default-src 'none'" in good.headers["content-security-policy"]
        html = await query.client.get(f"/audio/{catalogue.ids[1]}")
        assert html.status_code == 404, html.headers
        assert b"<script>" not in html.content
        assert (await query.client.get("/audio/rejected-drop")).status_code == 404
        async with start_query(audio_redirect=True) as redirecting:
            await redirecting.wait_for_version(tracks)
            moved = await redirecting.client.get(f"/audio/{catalogue.ids[0]}")
            assert moved.status_code == 307
            assert "response-content-type=audio%2Fwav" in moved.headers["location"]
            assert (await redirecting.client.get(f"/audio/{catalogue.ids[1]}")).status_code == 404


# --- class 9 and 13: 5xx on bad input, and the smaller ones --------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"track_ids": ["a"], "k": NaN}',
        b'{"track_ids": ["a"], "k": Infinity}',
        b'{"track_ids": ["a"], "k": 1e400}',
        b'{"track_ids": ["a"], "strategy": "diverse", "params": {"lambda": NaN}}',
        b'{"track_ids": ["a"], "strategy": "diverse", "params": {"lambda": 1e400}}',
        b'{"track_ids": ["a"], "strategy": "exploration", "params": {"seed": -Infinity}}',
        b'{"track_ids": ["a"], "strategy": "balanced", "params": {"weights": {"era": NaN}}}',
        b'{"track_ids": ["a"], "strategy": "balanced", "params": {"pool": 1e400}}',
    ],
)
async def test_non_finite_numbers_in_a_batch_body_get_422_with_a_reason(
    tracks: str, start_query: StartQuery, body: bytes
) -> None:
    async with start_query() as query:
        await query.wait_for_version(tracks)
        answer = await query.client.post("/recommend/batch", content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"]


async def test_hostile_headers_and_empty_objects_get_4xx_not_5xx_or_nonsense(
    tracks: str, start_query: StartQuery, catalogue: Catalogue
) -> None:
    async with start_query() as query:
        await query.wait_for_version(tracks)
        digits = await query.client.get(f"/audio/{catalogue.ids[0]}", headers={"range": "bytes=" + "9" * 5000 + "-"})
        assert digits.status_code == 416, digits.text
        assert digits.json()["detail"]
        boundary = "b" * 300
        multipart = await query.client.post(
            "/recommend/batch",
            content=f"--{boundary}--\r\n".encode(),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        assert multipart.status_code == 400 and "boundary" in multipart.text
        # A suffix range of an empty object selects nothing: 416, never "206 bytes 0--1/0".
        empty = await query.client.get(f"/audio/{catalogue.ids[2]}", headers={"range": "bytes=-5"})
        assert empty.status_code in (404, 416), (empty.status_code, empty.headers)
        assert "0--1" not in empty.headers.get("content-range", "")
        # No redirect is built from the client's Host header.
        slash = await query.client.get("/tracks/", headers={"host": "attacker.example"})
        assert "attacker.example" not in slash.headers.get("location", "")
        assert slash.status_code == 404


# --- class 6: cache keys and the cache's trust boundary ------------------------------------------


async def test_float_spellings_share_one_cache_entry_and_forged_entries_are_not_served(
    tracks: str, start_query: StartQuery, stack: StackSettings, catalogue: Catalogue
) -> None:
    reference = catalogue.ids[0]
    redis = Redis.from_url(stack.redis_url)
    try:
        async with start_query(cache_hmac_key="a-test-key-that-is-long-enough") as query:
            await query.wait_for_version(tracks)
            spellings = ["similarity:0.6", "similarity:0.600000000", "similarity:6e-1", "similarity:0.6000000001"]
            caches = []
            for weights in spellings:
                answer = await query.client.get(f"/recommend/{reference}?strategy=balanced&k=3&weights={weights}")
                assert answer.status_code == 200
                caches.append(answer.headers["x-cache"])
            assert caches == ["miss", "hit", "hit", "hit"]
            keys = [key async for key in redis.scan_iter(match=f"{stack.redis_prefix}rec:*")]
            assert len(keys) == 1

            # Someone who can write Redis plants an answer for the plain request; it is not believed.
            key = cache_key(stack.redis_prefix, tracks, reference, 3, "similar", {})
            forged = b'{"recommendations":[{"track_id":"planted"}],"strategy":"similar"}'
            await redis.set(key, forged)
            answer = await query.client.get(f"/recommend/{reference}?strategy=similar&k=3")
            assert answer.status_code == 200 and answer.headers["x-cache"] == "miss"
            assert "planted" not in answer.text
            assert query.metric("mess_query_cache_rejected_total") == 1
            # ... and the analytics task is still running after meeting it.
            task = query.resources.analytics._task
            assert task is not None and not task.done()
    finally:
        await redis.aclose()


# --- class 11: internals in public answers --------------------------------------------------------


async def test_readiness_gives_stable_codes_never_refusal_texts(
    tracks: str, start_query: StartQuery, writer: SnapshotWriter, catalogue: Catalogue, stack: StackSettings
) -> None:
    async with start_query() as query:
        await query.wait_for_version(tracks)
        broken = writer.write(2, catalogue.shards(3), dim=16, tampering=Tampering(rotate_vectors_of_shard=0))
        await writer.announce(broken)
        await eventually(lambda: bool(query.resources.follower.refused), "the refusal")
        ready = await query.client.get("/health/ready")
        assert ready.json()["refused_snapshots"] == [{"version": broken.version, "reason": "snapshot_refused"}]
        assert "s3://" not in ready.text and stack.bucket not in ready.text


# --- class 12: event-loop blocking ------------------------------------------------------------------


async def test_png_waveforms_are_drawn_off_the_event_loop_bounded_and_cached(
    tracks: str, start_query: StartQuery, catalogue: Catalogue, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn_on: list[str] = []
    draw = media_module.render_waveform_png

    def recording(peaks: WaveformPeaks, width: int, height: int) -> bytes:
        drawn_on.append(threading.current_thread().name)
        return draw(peaks, width, height)

    monkeypatch.setattr(media_module, "render_waveform_png", recording)
    async with start_query(waveform_render_concurrency=2) as query:
        await query.wait_for_version(tracks)
        url = f"/waveform/{catalogue.ids[0]}?format=png&width=4000&height=1000"
        answers = await asyncio.gather(*(query.client.get(url) for _ in range(3)))
        assert all(a.status_code == 200 and a.content.startswith(b"\x89PNG") for a in answers)
        assert drawn_on and threading.main_thread().name not in drawn_on
        before = len(drawn_on)
        again = await query.client.get(url)
        assert again.content == answers[0].content
        assert len(drawn_on) == before  # served from the render cache
        assert again.headers["x-content-type-options"] == "nosniff"
