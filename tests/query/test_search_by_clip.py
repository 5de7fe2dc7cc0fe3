"""Search by clip on the real stack: the embedder as a process (``dsp``), the query service in-process.

Three works are rendered twice each (piano; strings two semitones up and 10 %
faster). Every rendition is embedded through the embedder's internal
endpoint, and all but one are served in a snapshot made with the embedder's
own model identity. A clip of the held-out rendition must find the other
rendition of its work first, recognised as the same work; a clip cut from an
indexed track must find that track first. Then every refusal, and proof that
nothing was stored anywhere.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import httpx
import numpy as np
import pytest
import soundfile as sf
from aiokafka import AIOKafkaConsumer, TopicPartition

from mess.contracts.clips import EMBED_CLIP_PATH, EmbeddedClip, bearer
from mess.contracts.events import ModelIdentity
from mess.corpus import demo_renditions, render_to_file
from mess.runtime.endpoints import StackSettings

from ..embedder.service_process import embedder_process
from .conftest import StartQuery, apply_registry, insert_tracks, track_row
from .snapshot_writer import ShardInput, SnapshotWriter

pytestmark = pytest.mark.slow

TOKEN = "clip-test-token-that-is-long-enough-0123"
SECONDS = 20.0
SAMPLE_RATE = 22_050


def _wav(samples: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    out = io.BytesIO()
    sf.write(out, samples.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def _excerpt(path: Path, start_s: float, seconds: float) -> bytes:
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    return _wav(audio[int(start_s * rate) : int((start_s + seconds) * rate)].mean(axis=1), rate)


def _objects(stack: StackSettings) -> set[str]:
    s3 = boto3.client("s3", **stack.s3_client_kwargs())  # type: ignore[call-overload]
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=stack.bucket)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


async def _track_rows(stack: StackSettings) -> int:
    connection = await asyncpg.connect(stack.postgres_dsn, server_settings={"search_path": stack.postgres_schema})
    try:
        return int(await connection.fetchval("SELECT count(*) FROM tracks"))
    finally:
        await connection.close()


async def _added_events(stack: StackSettings) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(stack.topics.tracks_added, p)
            for p in consumer.partitions_for_topic(stack.topics.tracks_added) or []
        ]
        ends = await consumer.end_offsets(partitions)
        return sum(ends.values())
    finally:
        await consumer.stop()


async def test_a_clip_finds_its_work_and_every_refusal_has_its_code(
    stack: StackSettings,
    stack_env: dict[str, str],
    start_query: StartQuery,
    writer: SnapshotWriter,
    tmp_path: Path,
) -> None:
    renditions = demo_renditions(3, renditions_per_work=2)
    files = {r.name: render_to_file(r, tmp_path / f"{r.name}.flac", max_seconds=SECONDS) for r in renditions}
    ids = {r.name: f"clip-test-{i}" for i, r in enumerate(renditions)}
    held_out = renditions[0]
    sibling = next(r for r in renditions if r.work == held_out.work and r is not held_out)

    env = {**stack_env, "MESS_EMBEDDER_BACKEND": "dsp", "MESS_EMBEDDER_INTERNAL_TOKEN": TOKEN}
    with embedder_process(env, tmp_path / "embedder.log") as embedder:
        url = embedder.url + EMBED_CLIP_PATH
        data = files[sibling.name].read_bytes()
        embedded: dict[str, EmbeddedClip] = {}
        async with httpx.AsyncClient(timeout=60) as client:
            # The internal endpoint refuses a missing or wrong token before it reads the clip.
            assert (await client.post(url, content=data)).status_code == 401
            assert (await client.post(url, content=data, headers=bearer(TOKEN + "x"))).status_code == 401
            for rendition in renditions[1:]:
                response = await client.post(url, content=files[rendition.name].read_bytes(), headers=bearer(TOKEN))
                assert response.status_code == 200, response.text
                embedded[rendition.name] = EmbeddedClip.model_validate_json(response.content)
        model = next(iter(embedded.values())).model
        assert model.name == "dsp"

        await apply_registry(stack)
        await insert_tracks(
            stack, [track_row(ids[r.name], title=r.name, composer=r.work.split("-")[0]) for r in renditions[1:]]
        )
        names = list(embedded)
        shard = ShardInput(
            ids=[ids[n] for n in names],
            vectors=np.array([embedded[n].vector for n in names], dtype=np.float32),
            sequences=[embedded[n].pitch_sequence for n in names],
        )
        manifest = writer.write(1, [shard], dim=model.dim, model=model)
        stored, rows, added = _objects(stack), await _track_rows(stack), await _added_events(stack)

        overrides: dict[str, Any] = {"embedder_url": embedder.url, "embedder_token": TOKEN}
        async with start_query(**overrides) as query:
            await query.wait_for_version(manifest.version)

            async def search(
                clip: bytes, name: str = "clip.wav", kind: str = "audio/wav", **form: str
            ) -> httpx.Response:
                return await query.client.post("/search", files={"clip": (name, clip, kind)}, data=form)

            # A clip of a rendition not in the index finds the other rendition of its work first.
            response = await search(files[held_out.name].read_bytes(), "clip.flac", "audio/flac", k="3")
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["query"]["kind"] == "clip" and body["query"]["model"]["name"] == "dsp"
            first = body["recommendations"][0]
            assert first["track_id"] == ids[sibling.name], body
            assert first["alignment"]["same_work"] is True
            assert response.headers["X-Cache"] == "miss"

            # A 12 s excerpt from the middle of an indexed track finds that track first.
            indexed = renditions[2]
            response = await search(_excerpt(files[indexed.name], 4.0, 12.0), k="3")
            assert response.status_code == 200, response.text
            assert response.json()["recommendations"][0]["track_id"] == ids[indexed.name]

            # Filters apply to clips too: only the other work's tracks, and k of them when k exist.
            other = renditions[2].work.split("-")[0]
            response = await search(files[held_out.name].read_bytes(), composer=other, k="2")
            assert [r["composer"] for r in response.json()["recommendations"]] == [other, other]

            # Refusals: not audio, silent, too short, too long.
            not_audio = await search(b"RIFF" + bytes(range(256)) * 8)
            assert not_audio.status_code == 415, not_audio.text
            assert not_audio.json()["kind"] == "decode"
            silent = await search(_wav(np.zeros(SAMPLE_RATE * 3)))
            assert (silent.status_code, silent.json()["kind"]) == (422, "silent")
            noise = np.random.default_rng(0).uniform(-0.5, 0.5, SAMPLE_RATE // 4)
            short = await search(_wav(noise))
            assert (short.status_code, short.json()["kind"]) == (422, "too_short")

        async with start_query(**overrides, clip_max_seconds=10.0) as query:
            await query.wait_for_version(manifest.version)
            response = await query.client.post(
                "/search", files={"clip": ("c.flac", files[held_out.name].read_bytes(), "audio/flac")}
            )
            assert (response.status_code, response.json()["kind"]) == (422, "too_long")

            # The serving snapshot made by another model: the clip's vector means nothing there.
            other_model = ModelIdentity(name="other-model", revision="1", dim=model.dim, pooling=model.pooling)
            second = writer.write(2, [shard], dim=model.dim, model=other_model)
            await writer.announce(second)
            await query.wait_for_version(second.version)
            clip = _excerpt(files[held_out.name], 0.0, 8.0)
            response = await query.client.post("/search", files={"clip": ("c.wav", clip, "audio/wav")})
            assert response.status_code == 409, response.text
            assert response.json()["serving_model"]["name"] == "other-model"

        # Nothing of any clip was kept: no object but the second snapshot's, no row, no TrackAdded.
        assert _objects(stack) - stored == _objects_of(stack, second.version)
        assert await _track_rows(stack) == rows
        assert await _added_events(stack) == added == 0


def _objects_of(stack: StackSettings, version: str) -> set[str]:
    return {key for key in _objects(stack) if version in key}
