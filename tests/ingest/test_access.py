"""Who may call the ingest service, against the real stack: keys from a file rotated while it runs, read keys
by setting, the per-key write rate, CORS, early 413s, and what errors and logs never reveal."""

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from mess.dev.stack import free_port
from mess.ingest.config import DEVELOPMENT_API_KEY
from mess.ingest.deps import _resources
from mess.ingest.main import create_app
from mess.runtime.access import key_line, mint_key
from mess.runtime.endpoints import StackSettings

from .service_harness import ingest_settings, running_ingest, table_count, tone

UPLOADER, OTHER, READER = mint_key(), mint_key(), mint_key()


def _client(url: str, key: str | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"X-API-Key": key} if key else {}, timeout=60)


async def test_keys_from_a_file_are_added_and_revoked_while_the_service_runs(
    stack: StackSettings, tmp_path: Path
) -> None:
    keys_file = tmp_path / "api-keys"
    keys_file.write_text(f"# uploaders\n{key_line('uploader', UPLOADER)}\n")
    settings = ingest_settings(stack, api_keys=None, api_keys_file=keys_file, api_keys_check_s=0)
    async with (
        running_ingest(settings) as service,
        _client(service.url, UPLOADER) as uploader,
        _client(service.url, OTHER) as other,
    ):
        assert (await uploader.post("/tracks", files={"file": ("a.wav", tone(hz=300.0))})).status_code == 201
        assert (await other.delete("/tracks/not-a-track")).status_code == 401
        async with _client(service.url, DEVELOPMENT_API_KEY) as development:
            # Naming a keys file retires the development key.
            assert (await development.delete("/tracks/not-a-track")).status_code == 401

        # Rotation: the new key is added, then the old one revoked, with no restart.
        keys_file.write_text(f"{key_line('uploader', UPLOADER)}\n{key_line('other', OTHER)}\n")
        assert (await other.delete("/tracks/not-a-track")).status_code == 404
        keys_file.write_text(f"{key_line('other', OTHER)}\n")
        assert (await uploader.delete("/tracks/not-a-track")).status_code == 401
        assert (await other.post("/tracks", files={"file": ("b.wav", tone(hz=310.0))})).status_code == 201
    assert await table_count(stack, "tracks") == 2


async def test_read_routes_need_a_key_only_when_told_and_probes_never_do(stack: StackSettings) -> None:
    hashes = key_line("reader", READER)
    open_reads = ingest_settings(stack, api_key_hashes=key_line("uploader", UPLOADER), api_keys=None)
    async with running_ingest(open_reads) as service, _client(service.url) as anonymous:
        assert (await anonymous.get("/tracks/not-a-track/status")).status_code == 404

    closed = open_reads.model_copy(update={"require_read_key": True, "read_api_key_hashes": hashes})
    async with (
        running_ingest(closed) as service,
        _client(service.url) as anonymous,
        _client(service.url, READER) as reader,
        _client(service.url, UPLOADER) as uploader,
        _client(service.url, OTHER) as stranger,
    ):
        assert (await anonymous.get("/tracks/not-a-track/status")).status_code == 401
        assert (await anonymous.get("/drops", params={"key": "drop/x.wav"})).status_code == 401
        assert (await stranger.get("/tracks/not-a-track/status")).status_code == 401
        assert (await reader.get("/tracks/not-a-track/status")).status_code == 404
        assert (await reader.get("/drops", params={"key": "drop/x.wav"})).json()["state"] == "unknown"
        assert (await uploader.get("/tracks/not-a-track/status")).status_code == 404  # write keys read too
        assert (await reader.delete("/tracks/not-a-track")).status_code == 401  # read keys never write
        for probe in ("/health/live", "/health/ready", "/metrics"):
            assert (await anonymous.get(probe)).status_code == 200, probe


async def test_writes_beyond_a_keys_rate_get_429_with_retry_after(stack: StackSettings) -> None:
    hashes = f"{key_line('uploader', UPLOADER)},{key_line('other', OTHER)}"
    settings = ingest_settings(stack, api_keys=None, api_key_hashes=hashes, write_rate_per_s=0.05, write_burst=2)
    async with (
        running_ingest(settings) as service,
        _client(service.url, UPLOADER) as uploader,
        _client(service.url, OTHER) as other,
    ):
        answers = [await uploader.delete("/tracks/not-a-track") for _ in range(2)]
        assert [a.status_code for a in answers] == [404, 404]
        limited = await uploader.post("/tracks", files={"file": ("a.wav", tone())})
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["Retry-After"]) <= 20
        assert (await other.delete("/tracks/not-a-track")).status_code == 404  # its own bucket
        assert (await uploader.get("/tracks/not-a-track/status")).status_code == 404  # reads are not limited
    assert await table_count(stack, "tracks") == 0


async def test_cors_answers_only_the_configured_origins(stack: StackSettings) -> None:
    app_origin = "https://app.example.org"
    preflight = {
        "Origin": app_origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key",
    }
    async with running_ingest(ingest_settings(stack)) as service, _client(service.url) as client:
        plain = await client.get("/tracks/not-a-track/status", headers={"Origin": app_origin})
        assert not any(h.lower().startswith("access-control-") for h in plain.headers)
        assert "access-control-allow-origin" not in (await client.options("/tracks", headers=preflight)).headers

    settings = ingest_settings(stack, cors_origins=app_origin)
    async with running_ingest(settings) as service, _client(service.url) as client:
        allowed = await client.options("/tracks", headers=preflight)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == app_origin
        assert "x-api-key" in allowed.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in allowed.headers
        elsewhere = await client.options("/tracks", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in elsewhere.headers
        read = await client.get("/tracks/not-a-track/status", headers={"Origin": app_origin})
        assert read.headers["access-control-allow-origin"] == app_origin


async def _response_head(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head


async def test_a_declared_huge_body_is_refused_before_any_of_it_is_sent(stack: StackSettings) -> None:
    settings = ingest_settings(stack, max_upload_bytes=1024**2)
    async with running_ingest(settings) as service, service.client() as client:
        api_key = client.headers["X-API-Key"]
        reader, writer = await asyncio.open_connection("127.0.0.1", settings.port)
        writer.write(
            b"POST /tracks HTTP/1.1\r\nHost: ingest\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 10737418240\r\n"
            + f"X-API-Key: {api_key}\r\n\r\n".encode()
        )
        await writer.drain()
        async with asyncio.timeout(20):
            status, _ = await _response_head(reader)
        writer.close()
    assert status == 413


async def test_an_endless_chunked_upload_is_refused_while_it_streams(stack: StackSettings) -> None:
    """A body with no length that never ends: only a server that refuses while it reads can answer at all."""
    settings = ingest_settings(stack, max_upload_bytes=1024**2)
    sent = 0
    async with running_ingest(settings) as service, service.client() as client:
        api_key = client.headers["X-API-Key"]
        reader, writer = await asyncio.open_connection("127.0.0.1", settings.port)
        writer.write(
            b"POST /tracks HTTP/1.1\r\nHost: ingest\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n" + f"X-API-Key: {api_key}\r\n\r\n".encode()
        )
        part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.wav"\r\n\r\n'
        writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        chunk = os.urandom(64 * 1024)

        async def send_forever() -> None:
            nonlocal sent
            while True:
                writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                await writer.drain()
                sent += len(chunk)

        sending = asyncio.create_task(send_forever())
        try:
            async with asyncio.timeout(30):
                status, head = await _response_head(reader)
        finally:
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
            writer.close()
    assert status == 413, head
    # Refused after about the limit, not after the client gave up: what is beyond it sat in socket buffers.
    assert sent < 64 * 1024**2
    assert await table_count(stack, "tracks") == 0


async def test_an_exception_faked_in_the_resources_dependency_answers_a_generic_500(
    stack: StackSettings, caplog: pytest.LogCaptureFixture
) -> None:
    internals = "postgresql://mess:hunter2@db.internal:5432/mess failed in /srv/mess/registry.py: SELECT * FROM tracks"

    def broken_resources() -> Any:
        raise RuntimeError(internals)

    app = create_app(ingest_settings(stack))
    app.dependency_overrides[_resources] = broken_resources
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest.test") as client:
            answer = await client.get("/tracks/some-track/status", headers={"X-Request-ID": "req-42"})
            unnamed = await client.get("/tracks/some-track/status")
    assert answer.status_code == 500
    assert answer.json() == {"detail": "internal error", "request_id": "req-42"}
    assert answer.headers["x-request-id"] == "req-42"
    for leak in ("hunter2", "db.internal", "/srv", "SELECT", "RuntimeError", "Traceback"):
        assert leak not in answer.text
    assert len(unnamed.json()["request_id"]) == 32  # one is made up when the client sent none
    # The operator finds the cause in the log, under the request id.
    record = next(r for r in caplog.records if "req-42" in r.getMessage())
    assert record.exc_info is not None and internals in str(record.exc_info[1])


async def test_s3_down_answers_503_without_naming_the_endpoint(stack: StackSettings) -> None:
    port = free_port()
    unreachable = stack.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{port}"})
    settings = ingest_settings(unreachable, drop_worker_enabled=False, relay_enabled=False)
    async with running_ingest(settings) as service, service.client() as client:
        answer = await client.post("/tracks", files={"file": ("a.wav", tone())})
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"] == "storage_unavailable"
    assert str(port) not in answer.text and "127.0.0.1" not in answer.text


async def test_no_key_or_dsn_password_reaches_the_logs(stack: StackSettings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    password = "dsn-pass-" + mint_key()[5:20]
    # The local Postgres trusts loopback, so the password is carried but not needed.
    with_password = stack.model_copy(
        update={"postgres_dsn": stack.postgres_dsn.replace("postgres@", f"postgres:{password}@")}
    )
    assert password in with_password.postgres_dsn
    wrong_key = mint_key()
    settings = ingest_settings(
        with_password,
        api_keys=None,
        api_key_hashes=key_line("uploader", UPLOADER),
        require_read_key=True,
        write_rate_per_s=0.05,
        write_burst=2,
    )
    async with (
        running_ingest(settings) as service,
        _client(service.url, UPLOADER) as uploader,
        _client(service.url, wrong_key) as wrong,
    ):
        assert (await uploader.post("/tracks", files={"file": ("a.wav", tone())})).status_code == 201
        assert (await uploader.get("/tracks/not-a-track/status")).status_code == 404
        assert (await wrong.post("/tracks", files={"file": ("a.wav", tone())})).status_code == 401
        assert (await wrong.get("/tracks/not-a-track/status")).status_code == 401
        await uploader.delete("/tracks/not-a-track")
        assert (await uploader.delete("/tracks/not-a-track")).status_code == 429
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "refused POST /tracks: unknown key" in logged  # the refusals were logged...
    assert "rate limited DELETE /tracks/not-a-track for key uploader" in logged
    for secret in (UPLOADER, wrong_key, password):  # ...without what was sent
        assert secret not in logged


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "api-keys"
    path.write_text(key_line("ci", UPLOADER) + "\n")
    return path


def _start(env: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mess.ingest"],
        env={**env, "MESS_INGEST_PORT": str(port)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return process, port


def test_the_process_in_production_takes_a_keys_file_and_never_prints_a_secret(
    stack_env: dict[str, str], keys_file: Path
) -> None:
    password = "dsn-pass-" + mint_key()[5:20]
    env = {k: v for k, v in {**os.environ, **stack_env}.items() if not k.startswith("MESS_INGEST_API_KEY")}
    env |= {
        "MESS_INGEST_ENVIRONMENT": "production",
        "MESS_INGEST_API_KEYS_FILE": str(keys_file),
        "MESS_INGEST_API_KEYS_CHECK_S": "0",
        "MESS_INGEST_LOG_LEVEL": "DEBUG",
        "MESS_POSTGRES_DSN": env["MESS_POSTGRES_DSN"].replace("postgres@", f"postgres:{password}@"),
    }
    wrong_key = mint_key()
    process, port = _start(env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{url}/health/live", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        for key, expected in ((UPLOADER, 404), (wrong_key, 401), (DEVELOPMENT_API_KEY, 401)):
            answer = httpx.delete(f"{url}/tracks/not-a-track", headers={"X-API-Key": key}, timeout=10)
            assert answer.status_code == expected, (key == UPLOADER, answer.text)
        keys_file.write_text(key_line("ci-2", wrong_key) + "\n")  # rotate: the old key goes, a new one comes
        assert httpx.delete(f"{url}/tracks/x", headers={"X-API-Key": UPLOADER}, timeout=10).status_code == 401
        assert httpx.delete(f"{url}/tracks/x", headers={"X-API-Key": wrong_key}, timeout=10).status_code == 404
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0]
    assert process.returncode == 0, output[-3000:]
    assert "reloaded" in output and "ci-2" in output  # the rotation is logged by label
    for secret in (UPLOADER, wrong_key, password):
        assert secret not in output


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"MESS_INGEST_API_KEYS": "a-plaintext-key-0123456789abcdef"}, "production takes only their digests"),
        ({"MESS_INGEST_API_KEYS_FILE": "/nonexistent/api-keys"}, "cannot read /nonexistent/api-keys"),
        ({"MESS_INGEST_API_KEY_HASHES": "ci:a-plaintext-key-0123456789abcdef"}, "not a SHA-256 digest"),
    ],
)
def test_production_refuses_to_start_without_usable_digests_and_says_why_without_the_value(
    stack_env: dict[str, str], settings: dict[str, str], complaint: str
) -> None:
    env = {k: v for k, v in {**os.environ, **stack_env}.items() if not k.startswith("MESS_INGEST_API_KEY")}
    env |= {"MESS_INGEST_ENVIRONMENT": "production", **settings}
    process, _ = _start(env)
    output = process.communicate(timeout=60)[0]
    assert process.returncode != 0
    assert complaint in output
    assert "a-plaintext-key" not in output
