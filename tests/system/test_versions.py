"""Versions of a work, end to end on the `dsp` backend: rendered audio in, versions first out.

Three works, each rendered twice (piano; strings two semitones higher and 10 %
faster), go through the real pipeline as processes: ingest, the embedder
(vector and pitch sequence), the indexer (sequences in the snapshot shards)
and the query service (sequences memory-mapped, the re-rank). Every track's
other rendition must come first, recognised as the same work, and the
other works must not be.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from mess.contracts.storage import LATEST_KEY, SnapshotManifest, manifest_key
from mess.corpus import Rendition, demo_renditions, render_to_file
from mess.dev.faults import upload_rendition
from mess.dev.pipeline import Pipeline
from mess.dev.stack import wait_for
from mess.runtime.endpoints import StackSettings

pytestmark = pytest.mark.slow

API_KEY = "versions-test-key"
SECONDS = 30.0
WORKS = 3


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
        "MESS_INDEXER_SHARD_COUNT": "2",
        "MESS_QUERY_SNAPSHOT_CACHE_DIR": str(tmp_path / "query-cache"),
        "MESS_QUERY_SNAPSHOT_POLL_S": "2",
        "MESS_QUERY_CACHE_ENABLED": "false",
    }
    with Pipeline(stack_env, tmp_path / "logs", extra) as running:
        running.start()
        yield running


def _upload(ingest_url: str, rendition: Rendition, path: Path) -> str:
    response = upload_rendition(ingest_url, API_KEY, rendition, path, "versions-test")
    assert response.status_code in (200, 201, 202), response.text
    return str(response.json()["track_id"])


def _recommend(query_url: str, track_id: str, strategy: str, k: int) -> httpx.Response:
    return httpx.get(f"{query_url}/recommend/{track_id}", params={"k": k, "strategy": strategy}, timeout=30)


def _latest_manifest(stack: StackSettings) -> SnapshotManifest:
    s3 = boto3.client("s3", **stack.s3_client_kwargs())  # type: ignore[call-overload]
    version = s3.get_object(Bucket=stack.bucket, Key=LATEST_KEY)["Body"].read().decode().strip()
    body = s3.get_object(Bucket=stack.bucket, Key=manifest_key(version))["Body"].read()
    return SnapshotManifest.model_validate_json(body)


def test_other_renditions_of_a_work_rank_first_and_are_recognised(
    pipeline: Pipeline, stack: StackSettings, tmp_path: Path
) -> None:
    renditions = demo_renditions(WORKS, renditions_per_work=2)
    work_of: dict[str, str] = {}
    for rendition in renditions:
        path = render_to_file(rendition, tmp_path / f"{rendition.name}.flac", max_seconds=SECONDS)
        work_of[_upload(pipeline["ingest"].url, rendition, path)] = rendition.work
    assert len(work_of) == 2 * WORKS
    query_url = pipeline["query"].url

    def everything_served() -> bool:
        # Served once the snapshot holds every track: each then has all the others to choose from.
        for track_id in work_of:
            response = _recommend(query_url, track_id, "similar", k=len(work_of) - 1)
            if response.status_code != 200 or len(response.json()["recommendations"]) < len(work_of) - 1:
                return False
        return True

    wait_for(everything_served, "every track served", timeout=600, interval=1.0)
    manifest = _latest_manifest(stack)
    assert all(shard.sequences is not None for shard in manifest.shards if shard.count)

    for track_id, work in work_of.items():
        sibling = next(t for t, w in work_of.items() if w == work and t != track_id)
        body: dict[str, Any] = _recommend(query_url, track_id, "similar", k=5).json()
        picks = body["recommendations"]
        assert picks[0]["track_id"] == sibling, body
        assert picks[0]["alignment"]["same_work"] is True
        # piano -> strings is two semitones up; strings -> piano two down
        assert abs(picks[0]["alignment"]["key_shift_semitones"]) == 2
        assert -1.0 <= picks[0]["similarity_score"] <= 1.0
        for other in picks[1:]:
            assert other["alignment"] is not None and other["alignment"]["same_work"] is False, other

        versions = _recommend(query_url, track_id, "versions", k=5).json()["recommendations"]
        assert [v["track_id"] for v in versions] == [sibling]
