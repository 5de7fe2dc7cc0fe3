"""`python -m mess.indexer` as a real process: health and metrics, kill -9 and
restart, loud failure on a conflicting model, and the rebuild command."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from mess.dev.stack import free_port
from mess.runtime.endpoints import StackSettings

from .indexer_harness import MERT, embedded, producer, removed, snapshot_ids, snapshot_store


def _send(stack: StackSettings, events: list[object]) -> None:
    async def go() -> None:
        async with producer(stack) as send:
            for event in events:
                await send(event)  # type: ignore[arg-type]

    asyncio.run(go())


def _wait(check: object, what: str, limit_s: float = 90.0) -> None:
    deadline = time.monotonic() + limit_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@contextmanager
def service(env: dict[str, str], log: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mess.indexer", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def _answers(url: str, status: int = 200) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == status
    except httpx.HTTPError:
        return False


def test_the_service_resumes_after_kill_9_and_fails_loudly_on_a_model_conflict(
    stack: StackSettings, stack_env: dict[str, str], tmp_path: Path
) -> None:
    store = snapshot_store(stack)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        **stack_env,
        "MESS_INDEXER_PORT": str(port),
        "MESS_INDEXER_GROUP_ID": f"{stack.topic_prefix}mess-indexer",
        "MESS_INDEXER_WRITER_ID": "process-test",
        "MESS_INDEXER_SHARD_COUNT": "2",
        "MESS_INDEXER_SNAPSHOT_INTERVAL_S": "0.3",
    }
    log = tmp_path / "indexer.log"
    expected = {f"track-{n:02d}" for n in range(30)}

    def latest_holds(count: int) -> bool:
        latest = store.read_latest()
        return latest is not None and store.read_manifest(latest.version).manifest.vector_count == count

    with service(env, log) as process:
        _wait(lambda: _answers(f"{url}/health/ready"), "readiness")
        assert _answers(f"{url}/health/live")
        assert "mess_indexer_snapshot_version 1.0" in httpx.get(f"{url}/metrics").text
        _send(stack, [embedded(t, n) for n, t in enumerate(sorted(expected))])
        _wait(lambda: latest_holds(30), "30 tracks indexed")
        # More events, then kill -9 while they are being consumed.
        _send(stack, [embedded(f"track-{n:02d}", n) for n in range(30, 40)] + [removed("track-00")])
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    expected |= {f"track-{n:02d}" for n in range(30, 41)}
    expected.discard("track-00")

    with service(env, log) as process:
        _send(stack, [embedded("track-40", 40)])
        _wait(lambda: latest_holds(len(expected)) and _answers(f"{url}/health/ready"), "everything indexed")
        metrics = httpx.get(f"{url}/metrics").text
        assert f"mess_indexer_vectors {float(len(expected))}" in metrics
        assert "mess_indexer_consumer_lag" in metrics and "mess_indexer_snapshot_build_seconds_count" in metrics
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0  # a graceful stop (see test_sigterm.py for what it publishes)
    latest = store.read_latest()
    assert latest is not None
    ids = snapshot_ids(store, latest.version)
    assert [t for t, n in Counter(ids).items() if n > 1] == [] and set(ids) == expected

    # The index holds dsp vectors; demanding another model must stop the service, not serve.
    with service({**env, "MESS_INDEXER_MODEL": MERT.fingerprint()}, log) as process:
        assert process.wait(timeout=90) == 1
    assert "rebuild the index for that model" in log.read_text()

    rebuilt = subprocess.run(
        [sys.executable, "-m", "mess.indexer", "rebuild", "--index-type", "IVF{nlist},Flat", "--shards", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "published snapshot" in rebuilt.stdout
    after = store.read_latest()
    assert after is not None and after.version > latest.version
    manifest = store.read_manifest(after.version).manifest
    assert manifest.shard_count == 3 and manifest.vector_count == len(expected)
    assert sorted(snapshot_ids(store, after.version)) == sorted(expected)
