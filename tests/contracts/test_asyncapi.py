import json
from pathlib import Path

from mess.contracts import TOPIC_EVENTS
from mess.contracts.asyncapi import asyncapi_document, render_asyncapi

CHECKED_IN = Path(__file__).resolve().parents[2] / "libs" / "contracts" / "asyncapi.json"


def test_checked_in_asyncapi_document_is_current() -> None:
    """Regenerate with `make schemas` after a model change."""
    assert CHECKED_IN.read_text() == render_asyncapi()


def test_every_topic_is_a_channel_whose_payload_resolves() -> None:
    document = json.loads(CHECKED_IN.read_text())
    assert document["asyncapi"].startswith("2.")
    assert set(document["channels"]) == set(TOPIC_EVENTS)
    schemas = document["components"]["schemas"]
    for topic, model in TOPIC_EVENTS.items():
        message = document["channels"][topic]["subscribe"]["message"]
        name = message["payload"]["$ref"].rsplit("/", 1)[-1]
        assert name == model.__name__
        assert {"event_id", "occurred_at", "schema_version"} <= set(schemas[name]["properties"])
    # Every reference inside the document points at a component that exists.
    text = json.dumps(asyncapi_document())
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}:
        assert ref in schemas, ref
