"""mess.runtime.serving: the exit statuses a supervisor sees, from a real uvicorn in a child process."""

import os
import signal
import subprocess
import sys
import textwrap

import httpx
import pytest

from mess.dev.stack import free_port, wait_for

APP = textwrap.dedent(
    """
    import sys
    from contextlib import asynccontextmanager
    from fastapi import FastAPI
    from mess.runtime.serving import serve

    mode = sys.argv[2]

    @asynccontextmanager
    async def lifespan(app):
        if mode == "bad-start":
            raise RuntimeError("cannot start")
        yield
        if mode == "bad-stop":
            raise RuntimeError("cannot stop cleanly")

    app = FastAPI(lifespan=lifespan)

    @app.get("/health/live")
    async def live():
        return {"status": "live"}

    sys.exit(serve(app, host="127.0.0.1", port=int(sys.argv[1]), graceful_s=5))
    """
)


def _run(mode: str) -> int:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", APP, str(port), mode], stderr=subprocess.PIPE)
    if mode != "bad-start":
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1).status_code == 200, "app")
        os.kill(process.pid, signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize(("mode", "status"), [("clean", 0), ("bad-start", 3), ("bad-stop", 4)])
def test_exit_status_tells_a_clean_stop_from_a_failure(mode: str, status: int) -> None:
    assert _run(mode) == status
