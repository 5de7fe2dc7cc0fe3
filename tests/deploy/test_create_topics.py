"""The topic-provisioning script the deployments run (deploy/k8s/components/kafka-topics/create_topics.py).

It runs as the kafka-topics Job and the compose service, in the indexer's
image; here it runs against a real broker (Tansu, started for this module) the
way the Job does: a script file, configured by MESS_* variables only.
"""

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from aiokafka.admin import NewTopic

from mess.contracts import topics
from mess.dev import stack as local
from mess.runtime import kafka
from mess.runtime.endpoints import StackSettings

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "components" / "kafka-topics" / "create_topics.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("create_topics", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up while the class is built.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_plan_compacts_the_embeddings_and_keeps_every_removal() -> None:
    plan = {t.name: t for t in load_script().plan(StackSettings(topic_partitions=6), 3, 2)}
    assert set(plan) == set(topics.TOPIC_EVENTS)
    embedded = plan[topics.TRACKS_EMBEDDED]
    assert embedded.configs["cleanup.policy"] == "compact" and "retention.ms" not in embedded.configs
    # A rebuild replays the removals from the start: none may age out.
    assert plan[topics.TRACKS_REMOVED].configs["retention.ms"] == "-1"
    for topic in plan.values():
        assert (topic.partitions, topic.replication_factor) == (6, 3)
        assert topic.configs["min.insync.replicas"] == "2"


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    port = local.free_port()
    log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the broker
    process = subprocess.Popen(local.broker_command("127.0.0.1", port), stdout=log, stderr=subprocess.STDOUT)
    try:
        local.wait_for(lambda: local.port_open("127.0.0.1", port), "the broker")
        yield f"127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def run_script(bootstrap: str, prefix: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), "MESS_KAFKA_BOOTSTRAP": bootstrap, "MESS_TOPIC_PREFIX": prefix}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--replication-factor", "1", "--timeout-ms", "10000"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def partitions(bootstrap: str, names: list[str]) -> dict[str, int]:
    admin = kafka.admin(StackSettings(kafka_bootstrap=bootstrap), client_id="test-create-topics")
    await admin.start()
    try:
        return {d["topic"]: len(d["partitions"]) for d in await admin.describe_topics(names)}
    finally:
        await admin.close()


@pytest.mark.integration
def test_creates_every_topic_once_and_is_idempotent(broker: str) -> None:
    first = run_script(broker, "created.")
    assert first.returncode == 0, first.stderr
    names = [f"created.{name}" for name in topics.TOPIC_EVENTS]
    assert asyncio.run(partitions(broker, names)) == dict.fromkeys(names, 8)
    again = run_script(broker, "created.")
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("exists: ") == len(names) and "created " not in again.stderr


@pytest.mark.integration
def test_an_auto_created_embeddings_topic_fails_the_job(broker: str) -> None:
    """A broker that auto-created the embeddings topic gave it one partition and no compaction."""

    async def auto_create() -> None:
        admin = kafka.admin(StackSettings(kafka_bootstrap=broker), client_id="test-create-topics")
        await admin.start()
        try:
            await admin.create_topics([NewTopic(f"auto.{topics.TRACKS_EMBEDDED}", 1, 1)])
        finally:
            await admin.close()

    asyncio.run(auto_create())
    result = run_script(broker, "auto.")
    assert result.returncode == 1
    assert f"auto.{topics.TRACKS_EMBEDDED} has 1 partitions, 8 wanted" in result.stderr
    assert "compact wanted" in result.stderr
