"""`python -m mess.query` starts, follows LATEST to readiness and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from mess.dev.stack import free_port

from .snapshot_writer import SnapshotWriter


def _wait_ready(base: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    last: httpx.Response | None = None
    while time.monotonic() < deadline:
        assert process.poll() is None, "the service exited"
        try:
            last = httpx.get(f"{base}/health/ready", timeout=2)
            if last.status_code == 200:
                return last
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not ready in {timeout_s}s: {last.text if last else 'no answer'}")


def test_the_service_runs_as_a_process(stack_env: dict[str, str], writer: SnapshotWriter, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        **stack_env,
        "MESS_QUERY_PORT": str(port),
        "MESS_QUERY_SNAPSHOT_CACHE_DIR": str(tmp_path / "snapshots"),
        "MESS_QUERY_SNAPSHOT_POLL_S": "0.5",
    }
    log = (tmp_path / "query.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "mess.query"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/health/live", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        not_ready = httpx.get(f"{base}/health/ready", timeout=5)
        assert not_ready.status_code == 503  # no snapshot published yet

        writer.write_empty(1)
        ready = _wait_ready(base, process)
        assert ready.json()["snapshot_version"] == "000000000001"
        assert httpx.get(f"{base}/docs", timeout=5).status_code == 200
        assert "mess_query_snapshot_swaps_total 1.0" in httpx.get(f"{base}/metrics", timeout=5).text
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
            log.close()
    output = (tmp_path / "query.log").read_text()
    # A graceful SIGTERM shutdown is a clean exit (mess.runtime.serving), not death by the signal.
    assert code == 0, output
    assert "Application shutdown complete" in output
