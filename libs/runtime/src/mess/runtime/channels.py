"""What each service says it publishes and consumes, and the AsyncAPI document made from it.

Every service declares its channels once, in its own ``messaging`` module,
as a ``Channels`` value. From it this module builds a faststream router of
typed publishers and subscribers, and faststream's own AsyncAPI generator
turns a broker holding that router (and the security of the settings it was
built from) into the service's AsyncAPI document, with its servers and
security schemes. ``mess-dev schemas export`` runs each service's module and
joins the four documents into ``libs/contracts/asyncapi.json``, so the
document analytics teams read is generated from what the services declare,
never written by hand.
"""

import json
from dataclasses import dataclass, field
from typing import Any

from faststream.kafka import KafkaRouter
from faststream.specification import AsyncAPI

from mess.contracts.events import Event
from mess.contracts.topics import COMPACTED, TOPIC_EVENTS, Topics
from mess.runtime import kafka
from mess.runtime.endpoints import StackSettings

ASYNCAPI_VERSION = "3.0.0"
DOCUMENT_INFO = {
    "title": "mess events",
    "version": "1",
    "description": (
        "Every message is a JSON object with event_id, occurred_at and schema_version, keyed by the event's key, "
        "with the headers mess-event-type, mess-schema-version and mess-event-id. Fields are only ever added; a "
        "breaking change gets a new .v2 topic. Vectors are float32 little-endian, base64."
    ),
}


@dataclass(frozen=True)
class Consumed:
    topic: str  # unprefixed name, one of mess.contracts.topics
    group: str | None  # None: no group (every replica reads everything, positions itself)
    why: str


@dataclass(frozen=True)
class Published:
    topic: str
    why: str


@dataclass(frozen=True)
class Channels:
    service: str
    publishes: tuple[Published, ...] = ()
    consumes: tuple[Consumed, ...] = field(default=())


def _describe(topic: str, why: str) -> str:
    return why + (" The topic is log-compacted (cleanup.policy=compact)." if topic in COMPACTED else "")


def _typed_handler(model: type[Event]) -> Any:
    # faststream reads the payload schema from the handler's annotation.
    async def handler(event: Event) -> None:
        return None

    handler.__annotations__["event"] = model
    handler.__name__ = f"on_{model.event_type}"
    return handler


def router(channels: Channels, topics: Topics) -> KafkaRouter:
    """The service's channels as a faststream router of typed publishers and subscribers."""
    declared = KafkaRouter()
    for out in channels.publishes:
        model = TOPIC_EVENTS[out.topic]
        declared.publisher(
            topics.prefix + out.topic,
            schema=model,
            title=f"{channels.service}.publishes.{model.event_type}",
            description=_describe(out.topic, out.why),
        )
    for consumed in channels.consumes:
        model = TOPIC_EVENTS[consumed.topic]
        declared.subscriber(
            topics.prefix + consumed.topic,
            group_id=consumed.group,
            title=f"{channels.service}.consumes.{model.event_type}",
            description=_describe(consumed.topic, consumed.why)
            + (f" Consumer group {consumed.group}." if consumed.group else " No consumer group."),
        )(_typed_handler(model))
    return declared


def asyncapi_document(channels: Channels, settings: StackSettings | None = None) -> dict[str, Any]:
    """One service's AsyncAPI document, with the server and security of ``settings``."""
    settings = settings or StackSettings()
    broker = kafka.broker(settings, client_id=f"mess-{channels.service}-spec", description="the mess bus")
    broker.include_router(router(channels, settings.topics))
    spec = AsyncAPI(broker, schema_version=ASYNCAPI_VERSION, **DOCUMENT_INFO)  # type: ignore[arg-type]
    document: dict[str, Any] = json.loads(spec.to_specification().to_json())
    return document


def merge(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """The services' documents as one: servers, channels, operations and components joined."""
    merged: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": DOCUMENT_INFO,
        "defaultContentType": "application/json",
        "servers": {},
        "channels": {},
        "operations": {},
        "components": {},
    }
    for document in documents:
        for part in ("servers", "channels", "operations"):
            merged[part].update(document.get(part, {}))
        for kind, items in document.get("components", {}).items():
            merged["components"].setdefault(kind, {}).update(items)
    return merged


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def main(channels: Channels) -> None:
    """``python -m mess.<service>.messaging``: print the service's document (settings from the environment)."""
    print(render(asyncapi_document(channels)))
