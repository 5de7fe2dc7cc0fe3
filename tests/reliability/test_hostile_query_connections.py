"""Slow and greedy clients against the query service as a process (issue 14, class 5).

The defences live in the shared serving code (``mess.runtime.serving`` and ``mess.runtime.guards``), so
ingest has the same; the query service is the one that starts without any data. Before the fix, partial
headers and a trickled body each held their connection for ever, and one address could open any number
of connections.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mess.dev.stack import free_port

DEADLINE_S = 1.0


@pytest.fixture
def query_port(stack_env: dict[str, str], tmp_path: Path) -> Iterator[int]:
    port = free_port()
    env = {
        **os.environ,
        **stack_env,
        "MESS_QUERY_PORT": str(port),
        "MESS_QUERY_SNAPSHOT_CACHE_DIR": str(tmp_path / "snapshots"),
        "MESS_QUERY_HEADER_TIMEOUT_S": str(DEADLINE_S),
        "MESS_QUERY_BODY_IDLE_S": str(DEADLINE_S),
        "MESS_QUERY_BODY_GRACE_S": str(DEADLINE_S),
        "MESS_QUERY_MIN_BODY_RATE": "1000",
        "MESS_QUERY_CONNECTIONS_PER_CLIENT": "4",
    }
    log_path = tmp_path / "query.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "mess.query"], env=env, stdout=log_file, stderr=log_file)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log_path.read_text(errors="replace")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")
            time.sleep(0.2)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _read_until_closed(connection: socket.socket, within_s: float) -> bytes | None:
    """What the server sent before closing the connection, or None if it was still open after ``within_s``."""
    connection.settimeout(within_s)
    received = b""
    try:
        while chunk := connection.recv(4096):
            received += chunk
    except TimeoutError:
        return None
    return received


def test_partial_headers_are_closed_after_the_header_deadline(query_port: int) -> None:
    with socket.create_connection(("127.0.0.1", query_port)) as connection:
        connection.sendall(b"GET /health/live HTTP/1.1\r\nHost: query\r\nX-Slow: ")
        answer = _read_until_closed(connection, within_s=10 * DEADLINE_S)
    assert answer is not None, "the connection with unfinished headers was still open"
    assert answer.startswith(b"HTTP/1.1 408")


def test_a_trickled_body_is_cut_with_408(query_port: int) -> None:
    with socket.create_connection(("127.0.0.1", query_port)) as connection:
        head = (
            b"POST /recommend/batch HTTP/1.1\r\nHost: query\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n"
        )
        connection.sendall(head + b'{"track_ids": [')
        connection.settimeout(0.2)
        answer = b""
        started = time.monotonic()
        while time.monotonic() - started < 10 * DEADLINE_S:
            try:
                connection.sendall(b" ")  # one byte at a time, far below the minimum rate
                answer += connection.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if answer:
                break
        with contextlib.suppress(OSError):
            answer += _read_until_closed(connection, within_s=5) or b""
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"slow_client" in answer


def test_one_address_cannot_hold_every_connection(query_port: int) -> None:
    held = [socket.create_connection(("127.0.0.1", query_port)) for _ in range(4)]
    try:
        with socket.create_connection(("127.0.0.1", query_port)) as extra:
            # Refused as it opens (nothing sent, so the close is clean and the answer readable).
            answer = _read_until_closed(extra, within_s=5)
        assert answer is not None and answer.startswith(b"HTTP/1.1 429"), answer
    finally:
        for connection in held:
            connection.close()
    # Once they are gone, the address is served again.
    assert httpx.get(f"http://127.0.0.1:{query_port}/health/live", timeout=5).status_code == 200


def _answer(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)  # in one write, so it can arrive whole in one read
        received = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                received += chunk
                if b"\r\n\r\n" in received:
                    break
    return received.split(b"\r\n", 1)[0]


def test_an_oversized_request_head_is_refused_but_a_large_body_is_not_counted_as_head(query_port: int) -> None:
    long_line = b"GET /tracks/" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert _answer(query_port, long_line).startswith(b"HTTP/1.1 414")
    long_header = b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"b" * 40_000 + b"\r\n\r\n"
    assert _answer(query_port, long_header).startswith(b"HTTP/1.1 431")
    body = b"{" + b" " * 200_000 + b"}"
    post = b"POST /recommend/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    post += b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
    status = _answer(query_port, post)
    assert not status.startswith((b"HTTP/1.1 414", b"HTTP/1.1 431")), status
