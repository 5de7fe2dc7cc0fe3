"""The whole pipeline over a bus that requires SASL_SSL, and the bus refusing everyone else.

The broker is the local Tansu behind mess-dev's TLS + SASL/SCRAM front (Tansu
0.6.0 cannot serve either mode itself: see ``mess.dev.secure_front``). Every
service connects as its own principal with SCRAM-SHA-512 over TLS, verifying
the bus's certificate against the stack's CA, exactly as it would against MSK
or Apache Kafka given the same settings.
"""

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from aiokafka.errors import KafkaConnectionError, KafkaError
from pydantic import SecretStr

from mess.corpus import demo_renditions, render_to_file
from mess.dev import stack as local
from mess.dev.faults import upload_rendition
from mess.dev.pipeline import Pipeline
from mess.dev.secure_front import SecuredBus, front_command, prepare_secured_bus
from mess.runtime import kafka
from mess.runtime.endpoints import StackSettings

pytestmark = [pytest.mark.slow, pytest.mark.integration]

API_KEY = "secured-bus-test-key"


@pytest.fixture(scope="module")
def secured_bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBus]:
    folder = tmp_path_factory.mktemp("secured-bus")
    inner, outer = local.free_port(), local.free_port()
    bus, cert, key, users = prepare_secured_bus(folder, f"127.0.0.1:{outer}")
    broker_pid, _ = local.spawn("broker", local.broker_command("127.0.0.1", inner, advertised=bus.bootstrap), folder)
    front_pid, _ = local.spawn("front", front_command(bus.bootstrap, f"127.0.0.1:{inner}", cert, key, users), folder)
    try:
        local.wait_for(lambda: local.port_open("127.0.0.1", outer), "secure front")
        yield bus
    finally:
        local.stop_process(front_pid)
        local.stop_process(broker_pid)


@pytest.fixture
def secured_stack(backing: StackSettings, secured_bus: SecuredBus) -> Iterator[StackSettings]:
    base = backing.model_copy(update=secured_bus.settings_for("mess-dev"))
    with local.private_stack(base, "sec", 2) as settings:
        yield settings


async def _connects(settings: StackSettings) -> bool:
    producer = kafka.producer(settings, client_id="probe", request_timeout_ms=3000)
    try:
        await producer.start()
        await producer.send_and_wait(settings.topics.tracks_failed, b"{}", key=b"probe")
    except (KafkaConnectionError, KafkaError, OSError):
        return False
    finally:
        await kafka.stop_quietly(producer)
    return True


def test_the_secured_bus_refuses_clients_without_tls_or_the_right_credentials(
    secured_stack: StackSettings, secured_bus: SecuredBus
) -> None:
    assert asyncio.run(_connects(secured_stack)), "the principal's own settings must connect"
    plaintext = StackSettings(kafka_bootstrap=secured_bus.bootstrap, topic_prefix=secured_stack.topic_prefix)
    assert not asyncio.run(_connects(plaintext))
    no_tls = secured_stack.model_copy(update={"kafka_security_protocol": "SASL_PLAINTEXT"})
    assert not asyncio.run(_connects(no_tls))
    wrong = secured_stack.model_copy(
        update={"kafka_sasl_password_file": None, "kafka_sasl_password": SecretStr("not-the-password")}
    )
    assert not asyncio.run(_connects(wrong))


async def _statuses(stack: StackSettings) -> dict[str, str]:
    connection = await asyncpg.connect(stack.postgres_dsn, server_settings={"search_path": stack.postgres_schema})
    try:
        rows = await connection.fetch("SELECT id, status FROM tracks")
    except asyncpg.UndefinedTableError:
        return {}
    finally:
        await connection.close()
    return {row["id"]: row["status"] for row in rows}


def test_upload_to_recommendation_over_sasl_ssl(
    secured_stack: StackSettings, secured_bus: SecuredBus, tmp_path: Path
) -> None:
    prefix = secured_stack.topic_prefix
    extra = {
        "MESS_INGEST_API_KEYS": API_KEY,
        "MESS_EMBEDDER_BACKEND": "dsp",
        "MESS_EMBEDDER_GROUP_ID": f"{prefix}mess-embedder",
        "MESS_INDEXER_GROUP_ID": f"{prefix}mess-indexer",
        "MESS_INGEST_STATUS_GROUP_ID": f"{prefix}mess-ingest-status",
        "MESS_INDEXER_SNAPSHOT_INTERVAL_S": "1",
        "MESS_QUERY_SNAPSHOT_CACHE_DIR": str(tmp_path / "query-cache"),
        "MESS_QUERY_SNAPSHOT_POLL_S": "2",
    }
    per_service = {name: secured_bus.env_for(f"mess-{name}") for name in local.SERVICES}
    renditions = demo_renditions(2, renditions_per_work=2)
    with Pipeline(local.stack_env(secured_stack), tmp_path / "logs", extra, per_service) as pipeline:
        pipeline.start()
        track_ids = []
        for rendition in renditions:
            path = tmp_path / f"{rendition.name}.flac"
            render_to_file(rendition, path, sample_rate=22050, max_seconds=12.0)
            response = upload_rendition(pipeline["ingest"].url, API_KEY, rendition, path, "secured")
            assert response.status_code in (200, 201, 202), response.text
            track_ids.append(response.json()["track_id"])

        def indexed() -> bool:
            statuses = asyncio.run(_statuses(secured_stack))
            assert not [t for t in track_ids if statuses.get(t) == "failed"], statuses
            return all(statuses.get(t) == "indexed" for t in track_ids)

        local.wait_for(indexed, "every track indexed over SASL_SSL", timeout=300, interval=1.0)
        deadline = time.monotonic() + 120
        answer = httpx.get(f"{pipeline['query'].url}/recommend/{track_ids[0]}", params={"k": 3}, timeout=10)
        while answer.status_code != 200 and time.monotonic() < deadline:
            time.sleep(1)
            answer = httpx.get(f"{pipeline['query'].url}/recommend/{track_ids[0]}", params={"k": 3}, timeout=10)
        assert answer.status_code == 200, answer.text
        recommended = {item["track_id"] for item in answer.json()["recommendations"]}
        assert recommended <= set(track_ids) - {track_ids[0]}
        assert recommended, "the other tracks were indexed, so some must be recommended"
