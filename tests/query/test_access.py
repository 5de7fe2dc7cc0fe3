"""Who may call the query service, against the real stack: read keys by setting, CORS, short-lived presigned
URLs, and what errors and logs never reveal."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import httpx
import pytest
from pydantic import ValidationError

from mess.contracts.storage import audio_key
from mess.query.config import MAX_AUDIO_URL_EXPIRY_S, Settings
from mess.query.deps import _resources
from mess.query.main import create_app
from mess.runtime.access import key_line, mint_key
from mess.runtime.endpoints import StackSettings

from .conftest import StartQuery, apply_registry, insert_tracks, track_row

READER, STRANGER = mint_key(), mint_key()
# A WAV header (what /audio recognises audio by), then a pattern.
AUDIO = b"RIFF\x00\x00\x00\x00WAVE" + bytes(range(256)) * 16


@pytest.fixture
async def registry(stack: StackSettings) -> str:
    """The tracks table with one track whose audio is in S3; its id."""
    await apply_registry(stack)
    sha = hashlib.sha256(AUDIO).hexdigest()
    s3_kwargs: dict[str, Any] = stack.s3_client_kwargs()
    boto3.client("s3", **s3_kwargs).put_object(Bucket=stack.bucket, Key=audio_key(sha, "wav"), Body=AUDIO)
    row = track_row("air-on-g", title="Air", sha256=sha, audio_uri=f"s3://{stack.bucket}/{audio_key(sha, 'wav')}")
    await insert_tracks(stack, [row])
    return "air-on-g"


async def test_reads_need_a_key_only_when_told_and_probes_never_do(start_query: StartQuery, registry: str) -> None:
    async with start_query() as query:
        assert (await query.client.get("/tracks")).status_code == 200

    async with start_query(require_read_key=True, read_api_key_hashes=key_line("web", READER)) as query:
        client = query.client
        for path in ("/tracks", f"/tracks/{registry}", f"/audio/{registry}", f"/recommend/{registry}"):
            assert (await client.get(path)).status_code == 401, path
            assert (await client.get(path, headers={"X-API-Key": STRANGER})).status_code == 401, path
        batch = await client.post("/recommend/batch", json={"track_ids": [registry], "k": 3})
        assert batch.status_code == 401
        listing = await client.get("/tracks", headers={"X-API-Key": READER})
        assert listing.status_code == 200
        assert [t["track_id"] for t in listing.json()["tracks"]] == [registry]
        audio = await client.get(f"/audio/{registry}", headers={"X-API-Key": READER})
        assert audio.content == AUDIO
        for probe in ("/health/live", "/health/ready", "/metrics", "/openapi.json"):
            # /health/ready is 503 here (no snapshot yet), but never 401.
            assert (await client.get(probe)).status_code in (200, 503), probe


async def test_read_keys_come_from_a_file_reread_while_serving(
    start_query: StartQuery, registry: str, tmp_path: Path
) -> None:
    keys = tmp_path / "read-keys"
    keys.write_text(key_line("web", READER) + "\n")
    async with start_query(require_read_key=True, read_api_keys_file=keys, api_keys_check_s=0) as query:
        assert (await query.client.get("/tracks", headers={"X-API-Key": READER})).status_code == 200
        keys.write_text(key_line("web-2", STRANGER) + "\n")
        assert (await query.client.get("/tracks", headers={"X-API-Key": READER})).status_code == 401
        assert (await query.client.get("/tracks", headers={"X-API-Key": STRANGER})).status_code == 200


def test_read_keys_required_but_none_named_is_refused(stack: StackSettings) -> None:
    with pytest.raises(ValidationError, match="REQUIRE_READ_KEY"):
        Settings(stack=stack, require_read_key=True)


async def test_cors_answers_only_the_configured_origins(start_query: StartQuery, registry: str) -> None:
    origin = "https://player.example.org"
    preflight = {"Origin": origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "range"}
    async with start_query() as query:
        plain = await query.client.get("/tracks", headers={"Origin": origin})
        assert plain.status_code == 200
        assert not any(name.lower().startswith("access-control-") for name in plain.headers)
        assert "access-control-allow-origin" not in (await query.client.options("/tracks", headers=preflight)).headers

    async with start_query(cors_origins=origin) as query:
        allowed = await query.client.get("/tracks", headers={"Origin": origin})
        assert allowed.headers["access-control-allow-origin"] == origin
        assert "access-control-allow-credentials" not in allowed.headers
        assert "x-snapshot-version" in allowed.headers["access-control-expose-headers"].lower()
        checked = await query.client.options(f"/audio/{registry}", headers=preflight)
        assert checked.status_code == 200 and checked.headers["access-control-allow-origin"] == origin
        other = await query.client.get("/tracks", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize("expiry_s", [None, MAX_AUDIO_URL_EXPIRY_S])
async def test_presigned_audio_urls_expire_within_the_bound(
    start_query: StartQuery, registry: str, expiry_s: int | None
) -> None:
    overrides: dict[str, Any] = {"audio_redirect": True}
    if expiry_s is not None:
        overrides["audio_url_expiry_s"] = expiry_s
    async with start_query(**overrides) as query:
        redirect = await query.client.get(f"/audio/{registry}")
    assert redirect.status_code == 307
    query_string = parse_qs(urlsplit(redirect.headers["location"]).query)
    expires = int(query_string["X-Amz-Expires"][0])
    assert expires == (expiry_s or 60)
    assert 1 <= expires <= MAX_AUDIO_URL_EXPIRY_S <= 900
    assert redirect.headers["cache-control"] == "no-store"


def test_a_longer_presigned_url_lifetime_is_refused(stack: StackSettings) -> None:
    with pytest.raises(ValidationError, match="audio_url_expiry_s"):
        Settings(stack=stack, audio_url_expiry_s=MAX_AUDIO_URL_EXPIRY_S + 1)


async def test_an_exception_faked_in_the_resources_dependency_answers_a_generic_500(
    query_settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    internals = "redis://:hunter2@cache.internal:6379 failed in /srv/mess/query/catalog.py: SELECT id FROM tracks"

    def broken_resources() -> Any:
        raise RuntimeError(internals)

    app = create_app(query_settings())
    app.dependency_overrides[_resources] = broken_resources
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://query.test") as client:
            answer = await client.get("/tracks", headers={"X-Request-ID": "req-7"})
            batch = await client.post("/recommend/batch", json={"track_ids": ["a"], "k": 1})
    assert answer.status_code == 500
    assert answer.json() == {"detail": "internal error", "request_id": "req-7"}
    assert batch.status_code == 500 and set(batch.json()) == {"detail", "request_id"}
    for leak in ("hunter2", "cache.internal", "/srv", "SELECT", "RuntimeError", "Traceback"):
        assert leak not in answer.text and leak not in batch.text
    record = next(r for r in caplog.records if "req-7" in r.getMessage())
    assert record.exc_info is not None and internals in str(record.exc_info[1])


async def test_no_read_key_reaches_the_logs(
    start_query: StartQuery, registry: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with start_query(require_read_key=True, read_api_key_hashes=key_line("web", READER)) as query:
        assert (await query.client.get("/tracks", headers={"X-API-Key": READER})).status_code == 200
        assert (await query.client.get(f"/audio/{registry}", headers={"X-API-Key": READER})).status_code == 200
        assert (await query.client.get("/tracks", headers={"X-API-Key": STRANGER})).status_code == 401
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "refused GET /tracks: unknown key" in logged
    assert READER not in logged and STRANGER not in logged
