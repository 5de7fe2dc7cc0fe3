"""The AsyncAPI document is generated from what the services declare, and is current."""

import json
from pathlib import Path
from typing import Any

import pytest

from mess.contracts import TOPIC_EVENTS
from mess.dev.asyncapi import render_asyncapi, service_document

CHECKED_IN = Path(__file__).resolve().parents[2] / "libs" / "contracts" / "asyncapi.json"


@pytest.fixture(scope="module")
def generated() -> str:
    return render_asyncapi()


def test_checked_in_asyncapi_document_is_current(generated: str) -> None:
    """Regenerate with `make schemas` after a model or channel change."""
    assert CHECKED_IN.read_text() == generated


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(value) for value in node))
    return set()


def _resolves(document: dict[str, Any], ref: str) -> bool:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        part = part.replace("%20", " ").replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_every_topic_is_published_and_consumed_with_its_event_as_payload(generated: str) -> None:
    document = json.loads(generated)
    assert document["asyncapi"].startswith("3.")
    addresses: dict[str, set[str]] = {}
    for name, channel in document["channels"].items():
        addresses.setdefault(channel["address"], set()).add(name)
    # Analytics reads recommendations.served; every other topic has a consumer inside mess.
    assert set(addresses) == set(TOPIC_EVENTS)
    schemas = document["components"]["schemas"]
    for topic, model in TOPIC_EVENTS.items():
        assert any(".publishes." in name for name in addresses[topic]), f"nobody publishes {topic}"
        assert {"event_id", "occurred_at", "schema_version"} <= set(schemas[model.__name__]["properties"])
    for ref in _refs(document):
        assert _resolves(document, ref), ref


def test_servers_and_security_schemes_follow_the_settings(tmp_path: Path) -> None:
    (tmp_path / "password").write_text("x")
    document = service_document(
        "embedder",
        {
            "MESS_KAFKA_BOOTSTRAP": "b-1.mess.kafka.us-east-1.amazonaws.com:9096",
            "MESS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "MESS_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "MESS_KAFKA_SASL_USERNAME": "mess-embedder",
            "MESS_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "password"),
        },
    )
    (server,) = document["servers"].values()
    assert server["host"] == "b-1.mess.kafka.us-east-1.amazonaws.com:9096"
    assert server["protocol"] == "kafka-secure"
    assert document["components"]["securitySchemes"] == {"scram512": {"type": "scramSha512"}}
    plain = service_document("embedder")
    assert "securitySchemes" not in plain["components"]
