"""`mess-dev up` then `mess-dev down` (what `make up` / `make down` run) leaves nothing behind."""

import os
import subprocess
import sys
from pathlib import Path

from mess.dev.stack import SERVICES, StackState, free_port, port_open, process_alive
from mess.runtime.endpoints import StackSettings


def test_up_then_down_leaves_no_process_or_port(backing: StackSettings, tmp_path: Path) -> None:
    broker_port, s3_port = free_port(), free_port()
    service_ports = {var: free_port() for _, var, _ in SERVICES.values()}
    env = {
        **os.environ,
        "MESS_STATE_DIR": str(tmp_path),
        "MESS_KAFKA_BOOTSTRAP": f"127.0.0.1:{broker_port}",
        "MESS_S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
        "MESS_POSTGRES_DSN": backing.postgres_dsn,
        "MESS_REDIS_URL": backing.redis_url,
        **{var: str(port) for var, port in service_ports.items()},
    }
    cli = [sys.executable, "-m", "mess.dev.cli"]
    up = subprocess.run([*cli, "up"], env=env, capture_output=True, text=True, timeout=300)
    state = StackState.load(tmp_path / "stack.json")
    try:
        assert up.returncode == 0, up.stderr
        names = {p.name for p in state.started}
        assert {"broker", "s3", *SERVICES} <= names
        # Postgres and Redis were already running: reused, and so never stopped by down.
        assert {"postgres", "redis"} <= set(state.reused)
        for process in state.started:
            assert process_alive(process.pid), process.name
            assert process.port is not None and port_open("127.0.0.1", process.port), process.name
    finally:
        down = subprocess.run([*cli, "down"], env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    for process in state.started:
        assert not process_alive(process.pid), f"{process.name} (pid {process.pid}) survived down"
        assert process.port is not None and not port_open("127.0.0.1", process.port), f"{process.name} port"
    assert not (tmp_path / "stack.json").exists()
    # What was reused is still there.
    assert port_open("127.0.0.1", int(backing.postgres_dsn.rsplit(":", 1)[1].split("/")[0]))


def test_a_fresh_broker_and_bucket_forget_the_previous_runs_registry(backing: StackSettings, tmp_path: Path) -> None:
    """`make run`, `make down`, `make run`: the in-memory broker and S3 start empty, so the registry
    rows and cached answers of the first run must go too, or the registry claims tracks nobody holds."""
    import asyncio

    import asyncpg
    import redis

    schema = f"stale_{free_port()}"
    prefix = f"stale{free_port()}:"

    async def seed() -> None:
        connection = await asyncpg.connect(backing.postgres_dsn)
        try:
            await connection.execute(f'CREATE SCHEMA "{schema}"')
            await connection.execute(f'CREATE TABLE "{schema}".tracks (id text)')
            await connection.execute(f"INSERT INTO \"{schema}\".tracks VALUES ('left-over')")
        finally:
            await connection.close()

    async def schema_exists() -> bool:
        connection = await asyncpg.connect(backing.postgres_dsn)
        try:
            return bool(await connection.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema))
        finally:
            await connection.close()

    asyncio.run(seed())
    cache = redis.Redis.from_url(backing.redis_url)
    cache.set(f"{prefix}recommend:left-over", b"stale answer")
    env = {
        **os.environ,
        "MESS_STATE_DIR": str(tmp_path),
        "MESS_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "MESS_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "MESS_POSTGRES_DSN": backing.postgres_dsn,
        "MESS_POSTGRES_SCHEMA": schema,
        "MESS_REDIS_URL": backing.redis_url,
        "MESS_REDIS_PREFIX": prefix,
    }
    cli = [sys.executable, "-m", "mess.dev.cli"]
    try:
        up = subprocess.run([*cli, "up", "--no-services"], env=env, capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, up.stderr
        assert not asyncio.run(schema_exists())
        assert cache.get(f"{prefix}recommend:left-over") is None
    finally:
        subprocess.run([*cli, "down"], env=env, capture_output=True, text=True, timeout=120)
