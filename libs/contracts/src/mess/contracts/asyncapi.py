"""The AsyncAPI document of mess's topics, built from the event models.

Analytics teams and other consumers read it (with the per-topic JSON Schemas)
to know what each topic carries, who publishes it and how it is keyed. It is
generated, checked in next to the schemas, and a test keeps it current.
"""

import json
from typing import Any

from mess.contracts.topics import COMPACTED, TOPIC_EVENTS

# topic -> (what it is for, who publishes, how messages are keyed)
_TOPICS: dict[str, tuple[str, str, str]] = {
    "mess.tracks.added.v1": ("A track was registered (or re-announced) and needs embedding.", "ingest", "track id"),
    "mess.tracks.embedded.v1": (
        "A track's vector and the model that made it; log-compacted: replaying it rebuilds every index.",
        "embedder",
        "track id",
    ),
    "mess.tracks.removed.v1": ("A track was deleted (tombstone).", "ingest", "track id"),
    "mess.tracks.failed.v1": (
        "Dead letters: what failed, where, why, how often, with the original message.",
        "every consumer",
        "track id (or topic:partition:offset when none is known)",
    ),
    "mess.index.snapshots.v1": ("A new index snapshot is in S3 and may be served.", "indexer", "snapshot version"),
    "mess.recommendations.served.v1": (
        "A recommendation was served: request, results, snapshot, latency, cache.",
        "query",
        "reference track id",
    ),
}


def asyncapi_document() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for topic, model in TOPIC_EVENTS.items():
        description, publisher, key = _TOPICS[topic]
        name = model.__name__
        schema = model.model_json_schema(mode="serialization", ref_template="#/components/schemas/{model}")
        for nested_name, nested in schema.pop("$defs", {}).items():
            schemas[nested_name] = nested
        schemas[name] = schema
        bindings: dict[str, Any] = {"kafka": {"key": {"type": "string", "description": key}, "bindingVersion": "0.4.0"}}
        channels[topic] = {
            "description": description + (" Compacted (cleanup.policy=compact)." if topic in COMPACTED else ""),
            "subscribe": {
                "summary": f"published by {publisher}",
                "message": {
                    "name": name,
                    "contentType": "application/json",
                    "payload": {"$ref": f"#/components/schemas/{name}"},
                    "bindings": bindings,
                },
            },
        }
    return {
        "asyncapi": "2.6.0",
        "info": {
            "title": "mess events",
            "version": "1",
            "description": (
                "Every message is a JSON object with event_id, occurred_at and schema_version. Fields are only "
                "ever added; a breaking change gets a new .v2 topic. Vectors are float32 little-endian, base64."
            ),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "components": {"schemas": schemas},
    }


def render_asyncapi() -> str:
    return json.dumps(asyncapi_document(), indent=2, sort_keys=True) + "\n"
