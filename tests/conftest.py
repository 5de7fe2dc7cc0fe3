"""The test harness: real endpoints for every test, and names of its own.

The backing services come from the ``MESS_*`` environment when they answer
there (``make stack`` or CI started them); otherwise the harness starts a
Tansu broker, moto and, if needed, Redis as local processes on free ports for
the session. Postgres is started (or installed) if absent. Each test that asks
for ``stack`` gets a unique topic prefix, bucket, queue, Postgres schema and
Redis prefix, so tests never see each other's data. Such tests are marked
``integration`` automatically; all others are ``unit``.
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mess.dev import stack as local
from mess.runtime.endpoints import StackSettings, host_port

INTEGRATION_FIXTURES = {"stack", "backing"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("integration"):
            continue  # a test that brings its own real endpoints says so itself
        uses_stack = INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ()))
        item.add_marker(pytest.mark.integration if uses_stack else pytest.mark.unit)


@pytest.fixture(scope="session")
def backing() -> Iterator[StackSettings]:
    settings = StackSettings()
    log_dir = Path(tempfile.mkdtemp(prefix="mess-harness-"))
    started: list[int] = []
    updates: dict[str, str] = {}

    host, port = host_port(settings.kafka_servers[0], 9092)
    if not local.port_open(host, port):
        port = local.free_port()
        pid, _ = local.spawn("broker", local.broker_command("127.0.0.1", port), log_dir)
        started.append(pid)
        updates["kafka_bootstrap"] = f"127.0.0.1:{port}"
    if settings.s3_endpoint_url:
        host, port = host_port(settings.s3_endpoint_url, 5000)
        if not local.port_open(host, port):
            port = local.free_port()
            pid, _ = local.spawn("s3", local.moto_command("127.0.0.1", port), log_dir)
            started.append(pid)
            updates["s3_endpoint_url"] = f"http://127.0.0.1:{port}"
    host, port = host_port(settings.redis_url, 6379)
    if not local.port_open(host, port):
        port = local.free_port()
        pid, _ = local.spawn("redis", local.redis_command("127.0.0.1", port), log_dir)
        started.append(pid)
        updates["redis_url"] = f"redis://127.0.0.1:{port}/0"
    host, port = host_port(settings.postgres_dsn, 5432)
    if not local.port_open(host, port):
        local.start_postgres()

    settings = settings.model_copy(update=updates)
    local.wait_for(lambda: local.broker_answers(settings), "Kafka broker")
    local.wait_for(lambda: local.port_open(*host_port(settings.redis_url, 6379)), "Redis")
    if settings.s3_endpoint_url:
        local.wait_for(lambda: local.port_open(*host_port(settings.s3_endpoint_url or "", 5000)), "S3 endpoint")
    local.wait_for(lambda: local.database_ready(settings.postgres_dsn), "Postgres")
    try:
        yield settings
    finally:
        for pid in started:
            local.stop_process(pid)
        shutil.rmtree(log_dir, ignore_errors=True)


@pytest.fixture
def stack(backing: StackSettings) -> Iterator[StackSettings]:
    """Endpoints with names no other test uses; topics, bucket and queue exist."""
    with local.private_stack(backing, "t", int(os.environ.get("MESS_TEST_PARTITIONS", "2"))) as settings:
        yield settings


@pytest.fixture
def stack_env(stack: StackSettings) -> dict[str, str]:
    """Environment for a service process pointed at this test's endpoints."""
    return local.stack_env(stack)
