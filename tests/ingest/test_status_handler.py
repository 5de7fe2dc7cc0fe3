"""The status consumer's handler on faststream's in-memory TestKafkaBroker (the first tier).

The registry and snapshot membership are stand-ins whose names say so; the
same handler against the real broker, Postgres and S3 is tests/ingest/test_status.py.
"""

from typing import Any

import pytest
from faststream.kafka import TestKafkaBroker

from mess.contracts.events import ModelIdentity, TrackEmbedded, TrackFailed
from mess.ingest.config import Settings
from mess.ingest.status import TrackStatusFollower
from mess.runtime.endpoints import StackSettings


class RecordingRegistryFake:
    def __init__(self) -> None:
        self.embedded: list[tuple[str, str]] = []
        self.failed: list[tuple[str, str, str]] = []

    async def mark_embedded(self, track_id: str, sha256: str) -> bool:
        self.embedded.append((track_id, sha256))
        return True

    async def mark_failed(self, track_id: str, stage: str, reason: str) -> bool:
        self.failed.append((track_id, stage, reason))
        return True


class UnusedMembershipFake:
    async def apply(self, version: str, manifest_uri: str) -> int:
        raise AssertionError("no snapshot event is sent in these tests")


@pytest.fixture
def follower() -> TrackStatusFollower:
    settings = Settings(stack=StackSettings(topic_prefix="unit."))
    registry: Any = RecordingRegistryFake()
    membership: Any = UnusedMembershipFake()
    return TrackStatusFollower(settings, registry, membership)


def _embedded() -> TrackEmbedded:
    model = ModelIdentity(name="dsp", revision="test", dim=2, pooling="mean")
    return TrackEmbedded(track_id="some-track", sha256="a" * 64, model=model, vector=[1.0, 0.0])


async def test_an_embedding_moves_the_track_to_embedded(follower: TrackStatusFollower) -> None:
    broker = follower.build_broker()
    follower.broker = broker
    async with TestKafkaBroker(broker) as test_broker:
        event = _embedded()
        await test_broker.publish(event.to_bytes(), topic=follower.topics.tracks_embedded, key=b"some-track")
    assert follower.registry.embedded == [("some-track", "a" * 64)]  # type: ignore[attr-defined]


async def test_an_undecodable_message_is_dead_lettered_with_the_standard_headers(
    follower: TrackStatusFollower,
) -> None:
    broker = follower.build_broker()
    follower.broker = broker
    letters: list[tuple[TrackFailed, dict[str, str]]] = []

    async with TestKafkaBroker(broker) as test_broker:
        original = broker.publish

        # The dead letter goes out through the same broker; catch it on its way.
        async def capture(message: Any, topic: str = "", **kwargs: Any) -> Any:
            if topic == follower.topics.tracks_failed:
                letters.append((TrackFailed.from_bytes(message), kwargs.get("headers") or {}))
                return None
            return await original(message, topic=topic, **kwargs)

        broker.publish = capture  # type: ignore[method-assign]
        await test_broker.publish(b"{not json", topic=follower.topics.tracks_embedded, key=b"some-track")
    ((letter, headers),) = letters
    assert letter.stage == "ingest" and letter.error_kind == "malformed_event"
    assert letter.track_id == "some-track"  # recognised from the key
    assert letter.original_payload == "{not json"
    assert headers["mess-event-type"] == "TrackFailed"
    assert headers["mess-event-id"] == str(letter.event_id)
    assert follower.registry.embedded == []  # type: ignore[attr-defined]


async def test_the_indexers_refusal_of_a_forged_embedding_does_not_fail_the_track(
    follower: TrackStatusFollower,
) -> None:
    broker = follower.build_broker()
    follower.broker = broker
    async with TestKafkaBroker(broker) as test_broker:
        for kind in ("content_mismatch", "unregistered_content"):
            refusal = TrackFailed(track_id="some-track", stage="index", error_kind=kind, error="not registered")
            await test_broker.publish(refusal.to_bytes(), topic=follower.topics.tracks_failed, key=b"some-track")
        real = TrackFailed(track_id="other-track", stage="embed", error_kind="decode", error="bad audio")
        await test_broker.publish(real.to_bytes(), topic=follower.topics.tracks_failed, key=b"other-track")
    assert [failure[0] for failure in follower.registry.failed] == ["other-track"]  # type: ignore[attr-defined]
