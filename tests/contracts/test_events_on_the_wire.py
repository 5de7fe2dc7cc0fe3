"""Each event through the real broker: produced with its key, consumed back intact."""

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from mess.contracts import TOPIC_EVENTS
from mess.runtime.endpoints import StackSettings

from .samples import sample_events


async def _round_trip(stack: StackSettings) -> None:
    events = {type(e): e for e in sample_events()}
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    await producer.start()
    try:
        for topic, model in TOPIC_EVENTS.items():
            event = events[model]
            await producer.send_and_wait(stack.topic_prefix + topic, event.to_bytes(), key=event.key().encode())
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        *(stack.topic_prefix + t for t in TOPIC_EVENTS),
        bootstrap_servers=stack.kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=f"{stack.topic_prefix}roundtrip",
    )
    await consumer.start()
    received = {}
    try:
        async with asyncio.timeout(30):
            while len(received) < len(TOPIC_EVENTS):
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    for record in records:
                        topic = record.topic.removeprefix(stack.topic_prefix)
                        received[topic] = TOPIC_EVENTS[topic].from_bytes(record.value), record.key
    finally:
        await consumer.stop()

    for topic, model in TOPIC_EVENTS.items():
        event, key = received[topic]
        original = events[model]
        assert key == original.key().encode()
        assert event.event_id == original.event_id
        assert event.to_bytes() == original.to_bytes()


def test_every_event_round_trips_through_the_broker(stack: StackSettings) -> None:
    asyncio.run(_round_trip(stack))


@pytest.mark.parametrize("prefix", ["", "tenant-a."])
def test_topic_names_carry_the_prefix(prefix: str) -> None:
    topics = StackSettings(topic_prefix=prefix).topics
    assert topics.tracks_embedded == prefix + "mess.tracks.embedded.v1"
    assert topics.is_compacted(topics.tracks_embedded)
    assert not topics.is_compacted(topics.tracks_added)
