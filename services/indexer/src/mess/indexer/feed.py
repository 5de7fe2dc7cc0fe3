"""The topics the indexer reads, positioned by the snapshot, not by Kafka.

Plain aiokafka rather than a faststream subscriber: the indexer assigns every
partition itself and seeks each to the offset its snapshot recorded (a group
rebalance must never move it), reads in batches, and advances its own
positions record by record so that a snapshot's offsets match exactly the
events applied to it. The ``mess-indexer`` group only receives a copy of the
published offsets, for lag dashboards and ``kafka-consumer-groups``.

Partitions are read at start; partitions added to a topic later are picked up
at the next restart.
"""

import logging
from collections.abc import Iterable, Sequence
from typing import Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition

log = logging.getLogger(__name__)

Offsets = dict[str, dict[str, int]]


class Record(Protocol):
    """The parts of an aiokafka ``ConsumerRecord`` the indexer reads."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


class MissingTopicError(RuntimeError):
    pass


class TrackEventFeed:
    def __init__(self, consumer: AIOKafkaConsumer, topics: list[str]) -> None:
        self.consumer = consumer
        self.topics = topics
        self._positions: dict[TopicPartition, int] = {}

    async def _partitions(self) -> list[TopicPartition]:
        await self.consumer.topics()  # refreshes the metadata partitions_for_topic reads
        partitions: list[TopicPartition] = []
        for topic in self.topics:
            numbers = self.consumer.partitions_for_topic(topic)
            if not numbers:
                raise MissingTopicError(f"topic {topic} does not exist on the broker")
            partitions.extend(TopicPartition(topic, n) for n in sorted(numbers))
        return partitions

    async def seek(self, offsets: Offsets) -> None:
        """Assign every partition and position each at ``offsets`` (a manifest's);
        partitions it does not name start at their beginning."""
        partitions = await self._partitions()
        if set(self.consumer.assignment()) != set(partitions):
            self.consumer.assign(partitions)
        beginnings = await self.consumer.beginning_offsets(partitions)
        ends = await self.consumer.end_offsets(partitions)
        self._positions = {}
        for tp in partitions:
            recorded = offsets.get(tp.topic, {}).get(str(tp.partition))
            position = beginnings[tp] if recorded is None else recorded
            if recorded is not None and not beginnings[tp] <= recorded <= ends[tp]:
                # The topic was recreated or truncated behind the snapshot's back:
                # the recorded offset means nothing there any more.
                log.warning(
                    "%s[%d]: snapshot offset %d is outside the log (%d..%d); reading from the beginning",
                    tp.topic,
                    tp.partition,
                    recorded,
                    beginnings[tp],
                    ends[tp],
                )
                position = beginnings[tp]
            self.consumer.seek(tp, position)
            self._positions[tp] = position

    def partitions_of(self, topics: Iterable[str]) -> list[TopicPartition]:
        """The positioned partitions of ``topics`` (after ``seek``)."""
        wanted = set(topics)
        return [tp for tp in self._positions if tp.topic in wanted]

    async def poll(self, timeout_ms: int, max_records: int, partitions: Sequence[TopicPartition] = ()) -> list[Record]:
        """The next records of every partition, or only of ``partitions``
        (records of the others stay buffered for a later poll)."""
        batches = await self.consumer.getmany(*partitions, timeout_ms=timeout_ms, max_records=max_records)
        records: list[Record] = []
        for tp, batch in batches.items():
            # A record below our position was fetched before a seek; skip it.
            records.extend(r for r in batch if r.offset >= self._positions.get(tp, 0))
        return records

    def position(self, tp: TopicPartition) -> int:
        """The next offset of ``tp`` to apply."""
        return self._positions.get(tp, 0)

    def advance(self, record: Record) -> None:
        """Count ``record`` as applied: the next offset to read follows it."""
        self._positions[TopicPartition(record.topic, record.partition)] = record.offset + 1

    def offsets(self) -> Offsets:
        result: Offsets = {topic: {} for topic in self.topics}
        for tp, position in self._positions.items():
            result[tp.topic][str(tp.partition)] = position
        return result

    async def end_offsets(self) -> dict[TopicPartition, int]:
        return dict(await self.consumer.end_offsets(list(self._positions)))

    async def rewind_lost_logs(self, partitions: Sequence[TopicPartition] = ()) -> list[TopicPartition]:
        """Partitions whose log now ends before our position go back to their beginning.

        Kafka answers a fetch past the end with OFFSET_OUT_OF_RANGE and the
        reset policy handles it, but a broker that lost its storage (Tansu's
        memory store after a restart) and had the topic created again just
        answers "nothing yet" until the new log grows past our old position,
        so every event published meanwhile would be skipped for good. Events
        are idempotent: reading the new log from its start is always safe.
        """
        checked = list(partitions) or list(self._positions)
        if not checked:
            return []
        ends = await self.consumer.end_offsets(checked)
        rewound: list[TopicPartition] = []
        for tp in checked:
            mine = self._positions[tp]
            end = ends.get(tp)
            if end is not None and end < mine:
                log.warning(
                    "%s[%d]: the log ends at %d, before our position %d (lost by the broker?); reading it again",
                    tp.topic,
                    tp.partition,
                    end,
                    mine,
                )
                rewound.append(tp)
        if rewound:
            beginnings = await self.consumer.beginning_offsets(rewound)
            for tp in rewound:
                self.consumer.seek(tp, beginnings[tp])
                self._positions[tp] = beginnings[tp]
        return rewound

    async def skip_gaps(self, limits: dict[TopicPartition, int] | None = None) -> None:
        """After an empty poll, move each position up to the consumer's: offsets
        between them belong to records compaction removed, nothing to apply.
        ``limits`` caps a partition's position (records past it were fetched
        but deliberately left unapplied)."""
        for tp, mine in list(self._positions.items()):
            position = await self.consumer.position(tp)
            if limits is not None and tp in limits:
                position = min(position, limits[tp])
            if position > mine:
                self._positions[tp] = position

    def caught_up_with(self, ends: dict[TopicPartition, int]) -> bool:
        return all(self._positions.get(tp, 0) >= end for tp, end in ends.items())

    def lag(self) -> dict[str, int]:
        """Messages between our position and the last high watermark the broker
        reported, per topic."""
        lag = dict.fromkeys(self.topics, 0)
        for tp, position in self._positions.items():
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                lag[tp.topic] += max(0, highwater - position)
        return lag

    async def commit(self, offsets: Offsets) -> None:
        committed = {
            TopicPartition(topic, int(partition)): offset
            for topic, partitions in offsets.items()
            for partition, offset in partitions.items()
            if TopicPartition(topic, int(partition)) in self._positions
        }
        if committed:
            await self.consumer.commit(committed)
