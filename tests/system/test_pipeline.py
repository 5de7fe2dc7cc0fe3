"""The whole pipeline on the `dsp` backend, as a user would drive it.

Half the corpus is uploaded through `POST /tracks`, half dropped into the
bucket; every track must reach `indexed`, renditions of one work must find
each other, and after kill -9 of the embedder and the indexer in the middle
of a second batch every track must still end up indexed exactly once.
"""

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import httpx
import pytest

from mess.contracts import track_id_from_parts
from mess.contracts.storage import LATEST_KEY, SnapshotManifest, manifest_key
from mess.corpus import Rendition, demo_renditions, render_to_file
from mess.dev.faults import drop_user_metadata, rendition_metadata, upload_rendition
from mess.dev.pipeline import Pipeline
from mess.dev.stack import wait_for
from mess.runtime.endpoints import StackSettings

pytestmark = pytest.mark.slow

API_KEY = "system-test-key"
SECONDS = 20.0
FIRST_BATCH_WORKS = 17  # x 3 renditions = 51 tracks
SECOND_BATCH_WORKS = 5


def _render(rendition: Rendition, folder: Path) -> Path:
    path = folder / f"{rendition.name}.flac"
    if not path.exists():
        render_to_file(rendition, path, sample_rate=22050, max_seconds=SECONDS)
    return path


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Rendition, Path]]:
    folder = tmp_path_factory.mktemp("system-corpus")
    renditions = demo_renditions(FIRST_BATCH_WORKS + SECOND_BATCH_WORKS, renditions_per_work=3)
    with ThreadPoolExecutor(max_workers=2) as pool:
        paths = list(pool.map(lambda r: _render(r, folder), renditions))
    return list(zip(renditions, paths, strict=True))


@pytest.fixture
def pipeline(stack: StackSettings, stack_env: dict[str, str], tmp_path: Path) -> Iterator[Pipeline]:
    prefix = stack.topic_prefix
    extra = {
        "MESS_INGEST_API_KEYS": API_KEY,
        "MESS_EMBEDDER_BACKEND": "dsp",
        "MESS_EMBEDDER_GROUP_ID": f"{prefix}mess-embedder",
        "MESS_INDEXER_GROUP_ID": f"{prefix}mess-indexer",
        "MESS_INGEST_STATUS_GROUP_ID": f"{prefix}mess-ingest-status",
        "MESS_INDEXER_SNAPSHOT_INTERVAL_S": "1",
        "MESS_INDEXER_SNAPSHOT_EVERY_CHANGES": "20",
        "MESS_INDEXER_SHARD_COUNT": "4",
        "MESS_QUERY_SNAPSHOT_CACHE_DIR": str(tmp_path / "query-cache"),
        "MESS_QUERY_SNAPSHOT_POLL_S": "2",
        "MESS_INGEST_DROP_SCAN_INTERVAL_S": "5",
        "MESS_INGEST_RECONCILE_INTERVAL_S": "5",
        "MESS_INGEST_RECONCILE_GRACE_S": "60",
    }
    with Pipeline(stack_env, tmp_path / "logs", extra) as running:
        running.start()
        yield running


def _upload(ingest_url: str, rendition: Rendition, path: Path) -> str:
    response = upload_rendition(ingest_url, API_KEY, rendition, path, "system-test")
    assert response.status_code in (200, 201, 202), response.text
    return str(response.json()["track_id"])


def _drop(stack: StackSettings, rendition: Rendition, path: Path) -> str:
    relative = f"system/{path.name}"
    track_id = track_id_from_parts("system", relative)
    metadata = drop_user_metadata("system", track_id, rendition_metadata(rendition, "system-test"))
    s3 = boto3.client("s3", **stack.s3_client_kwargs())  # type: ignore[call-overload]
    s3.upload_file(str(path), stack.bucket, f"{stack.drop_prefix}{relative}", ExtraArgs={"Metadata": metadata})
    return track_id


async def _statuses(stack: StackSettings) -> dict[str, str]:
    connection = await asyncpg.connect(stack.postgres_dsn, server_settings={"search_path": stack.postgres_schema})
    try:
        rows = await connection.fetch("SELECT id, status, failure_reason FROM tracks")
    except asyncpg.UndefinedTableError:
        return {}
    finally:
        await connection.close()
    return {row["id"]: row["status"] for row in rows}


def _wait_indexed(stack: StackSettings, track_ids: set[str], timeout: float) -> None:
    state: dict[str, str] = {}

    def all_indexed() -> bool:
        nonlocal state
        state = asyncio.run(_statuses(stack))
        failed = {t: s for t, s in state.items() if t in track_ids and s == "failed"}
        assert not failed, f"tracks failed: {failed}"
        return all(state.get(t) == "indexed" for t in track_ids)

    try:
        wait_for(all_indexed, "every track indexed", timeout=timeout, interval=1.0)
    except Exception:
        pending = Counter(state.get(t, "unregistered") for t in track_ids)
        raise AssertionError(f"not all tracks indexed: {dict(pending)}") from None


def _latest_manifest(stack: StackSettings) -> SnapshotManifest:
    s3 = boto3.client("s3", **stack.s3_client_kwargs())  # type: ignore[call-overload]
    version = s3.get_object(Bucket=stack.bucket, Key=LATEST_KEY)["Body"].read().decode().strip()
    body = s3.get_object(Bucket=stack.bucket, Key=manifest_key(version))["Body"].read()
    return SnapshotManifest.model_validate_json(body)


def _snapshot_ids(stack: StackSettings) -> list[str]:
    s3 = boto3.client("s3", **stack.s3_client_kwargs())  # type: ignore[call-overload]
    ids: list[str] = []
    for shard in _latest_manifest(stack).shards:
        ids.extend(json.loads(s3.get_object(Bucket=stack.bucket, Key=shard.ids.key)["Body"].read()))
    return ids


def _recommend(query_url: str, track_id: str, k: int = 5) -> dict[str, Any]:
    response = httpx.get(f"{query_url}/recommend/{track_id}", params={"k": k, "strategy": "similar"}, timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_pipeline_indexes_everything_and_heals_after_kill_9(
    pipeline: Pipeline, stack: StackSettings, corpus: list[tuple[Rendition, Path]]
) -> None:
    first = corpus[: FIRST_BATCH_WORKS * 3]
    second = corpus[FIRST_BATCH_WORKS * 3 :]
    ids_by_work: dict[str, list[str]] = {}
    track_ids: set[str] = set()
    for position, (rendition, path) in enumerate(first):
        if position % 2 == 0:
            track_id = _upload(pipeline["ingest"].url, rendition, path)
        else:
            track_id = _drop(stack, rendition, path)
        ids_by_work.setdefault(rendition.work, []).append(track_id)
        track_ids.add(track_id)
    assert len(track_ids) == len(first) >= 50

    _wait_indexed(stack, track_ids, timeout=900)

    # Wait until the query service serves a snapshot holding every track.
    wait_for(
        lambda: httpx.get(f"{pipeline['query'].url}/recommend/{next(iter(track_ids))}", timeout=10).status_code == 200,
        "query serving",
        timeout=120,
    )
    sibling_hits = 0
    chance = 0.0
    for members in ids_by_work.values():
        for track_id in members:
            wait_for(
                lambda t=track_id: httpx.get(f"{pipeline['query'].url}/recommend/{t}", timeout=10).status_code == 200,
                f"{track_id} served",
                timeout=120,
            )
            top = [item["track_id"] for item in _recommend(pipeline["query"].url, track_id)["recommendations"]]
            siblings = set(members) - {track_id}
            sibling_hits += bool(siblings & set(top[:5]))
            chance += 1 - (1 - len(siblings) / (len(track_ids) - 1)) ** 5
    rate = sibling_hits / len(track_ids)
    print(f"renditions with a sibling in their top 5: {rate:.0%} (chance: {chance / len(track_ids):.0%})")
    assert rate >= 0.6, f"only {rate:.0%} of renditions found a sibling in their top 5"

    # Second batch: kill -9 embedder and indexer while it is in flight, then restart them.
    second_ids = {_upload(pipeline["ingest"].url, rendition, path) for rendition, path in second}
    time.sleep(1.0)  # let some of the batch get under way before the crash
    pipeline["embedder"].kill()
    pipeline["indexer"].kill()
    pipeline.restart("embedder")
    pipeline.restart("indexer")
    every = track_ids | second_ids
    _wait_indexed(stack, every, timeout=900)

    snapshot_ids = _snapshot_ids(stack)
    duplicates = [t for t, n in Counter(snapshot_ids).items() if n > 1]
    assert duplicates == []
    assert set(snapshot_ids) == every
