"""Shared by the ingest benchmarks: a private slice of the running local stack and an ingest process on it.

Like the test harness, a benchmark gets its own topic prefix, bucket, queue
and Postgres schema on the already running stack (``make stack``), runs
``python -m mess.ingest`` against them as a separate process (as
production would), and removes everything when it is done.
"""

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

from mess.dev import stack as local
from mess.runtime.endpoints import StackSettings

API_KEY = "bench-key-0123456789abcdef"
RESULTS = Path(__file__).resolve().parent / "results"


@contextmanager
def private_stack() -> Iterator[StackSettings]:
    with local.private_stack(StackSettings(), "bench", partitions=4) as settings:
        yield settings


@contextmanager
def ingest_process(settings: StackSettings, **extra_env: str) -> Iterator[str]:
    """``python -m mess.ingest`` on a free port; yields its base URL once it is ready."""
    port = local.free_port()
    env = {
        **os.environ,
        **local.stack_env(settings),
        "MESS_INGEST_PORT": str(port),
        "MESS_INGEST_API_KEYS": API_KEY,
        # Throughput is what is measured here, not the per-key write limit.
        "MESS_INGEST_WRITE_RATE_PER_S": "0",
        "MESS_INGEST_LOG_LEVEL": "WARNING",
        "MESS_INGEST_RECONCILER_ENABLED": "false",
        **extra_env,
    }
    log = tempfile.NamedTemporaryFile(prefix="mess-bench-ingest-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen([sys.executable, "-m", "mess.ingest"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"ingest exited during start-up; see {log.name}")
            try:
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"ingest never became ready; see {log.name}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        Path(log.name).unlink(missing_ok=True)


def tone_wav(seconds: float, hz: float, rate: int = 22050) -> bytes:
    """A distinct WAV file per ``hz`` (a chord, so the content is not trivially compressible)."""
    import io

    import soundfile as sf

    t = np.arange(int(seconds * rate), dtype=np.float32) / rate
    signal = 0.2 * (np.sin(2 * np.pi * hz * t) + np.sin(2 * np.pi * hz * 1.25 * t) + np.sin(2 * np.pi * hz * 1.5 * t))
    buffer = io.BytesIO()
    sf.write(buffer, signal.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")
