"""`python -m mess.ingest` starts on its own (as `make up` runs it) and refuses bad configuration."""

import os
import subprocess
import sys
import time

import httpx

from mess.dev.stack import free_port


def test_module_starts_and_answers_health_and_metrics(stack_env: dict[str, str]) -> None:
    port = free_port()
    env = {**os.environ, **stack_env, "MESS_INGEST_PORT": str(port)}
    process = subprocess.Popen(
        [sys.executable, "-m", "mess.ingest"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        ready = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert ready is not None and ready.status_code == 200, ready.text if ready else "never answered"
        assert httpx.get(f"http://127.0.0.1:{port}/health/live").json() == {"status": "live"}
        assert "mess_ingest_outbox_pending" in httpx.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0].decode(errors="replace")
    # A graceful SIGTERM shutdown is a clean exit (mess.runtime.serving), not death by the signal.
    assert process.returncode == 0, output
    assert "Application shutdown complete" in output


def test_production_with_the_development_key_refuses_to_start(stack_env: dict[str, str]) -> None:
    env = {**os.environ, **stack_env, "MESS_INGEST_PORT": str(free_port()), "MESS_INGEST_ENVIRONMENT": "production"}
    env.pop("MESS_INGEST_API_KEYS", None)
    finished = subprocess.run(
        [sys.executable, "-m", "mess.ingest"], env=env, capture_output=True, text=True, timeout=60
    )
    assert finished.returncode != 0
    assert "MESS_INGEST_API_KEYS" in finished.stderr
