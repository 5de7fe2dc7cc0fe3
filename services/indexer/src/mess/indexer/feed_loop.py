"""The feed loop: each Kafka batch of the three topics applied to the state.

Facts (TrackAdded, TrackRemoved) are the registry's and are applied by their
registry sequence; an embedding is applied only if the track's latest fact is
"added" with the embedding's sha256 (``track_vectors``). Within a batch the
facts go first: the order across topics means nothing, and a TrackAdded
fetched with the embedding it announced then never holds that embedding up.

An embedding the facts do not vouch for (no fact, a removal, other content)
may simply be ahead of its TrackAdded, which the embedder read before making
it: the registry's topic is read up to its end as of after the embedding was
fetched (``catch_up_registry``), then the embedding is judged for good. Still
unknown: dead-lettered as ``unregistered_content``; other content:
``content_mismatch``; removed: stale. So a forged embedding costs one
catch-up and never blocks its partition. The end is "an empty poll of the
added partitions" rather than ``end_offsets``, which Tansu answers wrongly
for multi-record batches (base offset of the last batch + 1).

Undecodable records and vectors the index cannot take (another model, no
direction) are dead-lettered. Every record is counted by outcome and, when it
changed the state, handed to the snapshot schedule.
"""

import logging
import math
import time

from aiokafka import AIOKafkaProducer

from mess.contracts.topics import Topics
from mess.indexer.decoding import Change, Embedding, EmbeddingDeleted, Malformed, Registration, Removal, decode
from mess.indexer.feed import Record, TrackEventFeed
from mess.indexer.metrics import IndexerMetrics
from mess.indexer.schedule import SnapshotSchedule
from mess.indexer.track_vectors import Outcome, TrackVectors
from mess.runtime import kafka
from mess.runtime.deadletter import dead_letter, send_dead_letter

log = logging.getLogger(__name__)

# A catch-up ends after this many consecutive polls of the added partitions
# returned nothing, each waiting this long: longer than a fetch's own wait
# (aiokafka's fetch_max_wait_ms, 500 ms), so at least one fetch sent after
# the catch-up began has come back empty.
CATCH_UP_EMPTY_POLLS = 2
CATCH_UP_POLL_MS = 600


def apply_change(state: TrackVectors, change: Registration | Removal | EmbeddingDeleted | Embedding) -> Outcome:
    """The live indexer's and the rebuild's one rule for every kind of record."""
    if isinstance(change, Registration):
        return state.apply_added(change.track_id, change.sha256, change.registry_sequence)
    if isinstance(change, Removal):
        return state.apply_removed(change.track_id, change.registry_sequence)
    if isinstance(change, EmbeddingDeleted):
        return state.drop_embedding(change.track_id)
    return state.apply_embedded(change.track_id, change.model, change.vector, change.sha256, change.sequence)


def vouched_for(state: TrackVectors, embedding: Embedding) -> bool:
    """Whether the facts known now already admit ``embedding``'s content (or
    need not: a vector of another model is refused whatever they say)."""
    if not state.guard.admits(embedding.model):
        return True
    fact = state.fact(embedding.track_id)
    return fact is not None and fact.sha256 == embedding.sha256


class FeedLoop:
    def __init__(
        self,
        topics: Topics,
        feed: TrackEventFeed,
        producer: AIOKafkaProducer,
        metrics: IndexerMetrics,
        schedule: SnapshotSchedule,
        max_records: int,
    ) -> None:
        self.topics = topics
        self.feed = feed
        self._producer = producer
        self.metrics = metrics
        self.schedule = schedule
        self._max_records = max_records
        self.state: TrackVectors | None = None  # the indexer installs each snapshot it loads
        # When the last completed catch-up of the added topic began: it covers
        # every embedding fetched before that.
        self._caught_up_since = -math.inf

    def _state(self) -> TrackVectors:
        if self.state is None:
            raise RuntimeError("no snapshot is loaded")
        return self.state

    def reset(self) -> None:
        """A snapshot was (re)loaded: the facts an earlier catch-up read are gone."""
        self._caught_up_since = -math.inf

    async def step(self, timeout_ms: int = 200) -> None:
        """Poll one batch and apply it."""
        records = await self.feed.poll(timeout_ms=timeout_ms, max_records=self._max_records)
        await self.apply(records, fetched_at=time.monotonic())

    async def apply(self, records: list[Record], fetched_at: float) -> None:
        decoded = [(record, decode(record, self.topics)) for record in records]
        for record, change in decoded:
            if record.topic != self.topics.tracks_embedded:
                await self._apply(record, change)
        for record, change in decoded:
            if record.topic != self.topics.tracks_embedded:
                continue
            if (
                isinstance(change, Embedding)
                and not vouched_for(self._state(), change)
                and self._caught_up_since < fetched_at
            ):
                await self.catch_up_registry()
                if not vouched_for(self._state(), change) and await self._rewind_registry():
                    await self.catch_up_registry()
            await self._apply(record, change)

    async def catch_up_registry(self) -> None:
        """Read the added topic up to its end as of now (records of the other topics stay buffered)."""
        started = time.monotonic()
        partitions = self.feed.partitions_of([self.topics.tracks_added])
        read = empty = 0
        while empty < CATCH_UP_EMPTY_POLLS:
            records = await self.feed.poll(CATCH_UP_POLL_MS, self._max_records, partitions)
            empty = 0 if records else empty + 1
            for record in records:
                await self._apply(record, decode(record, self.topics))
            read += len(records)
        self._caught_up_since = started
        self.metrics.registry_catch_ups.inc()
        log.debug("read the added topic to its end: %d records in %.1fs", read, time.monotonic() - started)

    async def _rewind_registry(self) -> bool:
        """Before an embedding is refused for good: if the broker lost the added
        topic's log (it now ends before our position), read it again from its start."""
        rewound = await self.feed.rewind_lost_logs(self.feed.partitions_of([self.topics.tracks_added]))
        self.metrics.logs_rewound.inc(len(rewound))
        return bool(rewound)

    async def _apply(self, record: Record, change: Change) -> None:
        outcome: str
        if isinstance(change, Malformed):
            outcome = await self._dead_letter(record, "malformed_event", change.reason)
        else:
            outcome = apply_change(self._state(), change)
            if isinstance(change, Embedding):
                await self._refused(record, change, outcome)
        self.feed.advance(record)
        self.metrics.events.labels(record.topic, outcome).inc()
        if isinstance(outcome, Outcome) and outcome.changed:
            self.schedule.changed()

    async def _refused(self, record: Record, change: Embedding, outcome: str) -> None:
        """Dead-letter an embedding the index refused for good."""
        state = self._state()
        if outcome is Outcome.MODEL_MISMATCH:
            await self._dead_letter(
                record,
                "model_mismatch",
                f"vector from model {change.model.fingerprint()}, but the index holds "
                f"{state.guard.describe_expected()}; rebuild the index for that model to switch",
                change.track_id,
            )
        elif outcome is Outcome.ZERO_VECTOR:
            await self._dead_letter(record, "zero_vector", "the vector has no direction (norm 0)", change.track_id)
        elif outcome is Outcome.CONTENT_MISMATCH:
            fact = state.fact(change.track_id)
            await self._dead_letter(
                record,
                "content_mismatch",
                f"the embedding is of content sha256 {change.sha256}, but the registry holds "
                f"{fact.sha256 if fact else 'nothing'} for track {change.track_id}",
                change.track_id,
            )
        elif outcome is Outcome.UNREGISTERED:
            await self._dead_letter(
                record,
                "unregistered_content",
                f"the registry never announced track {change.track_id} (its topic was read to the end "
                "after this embedding arrived)",
                change.track_id,
            )

    async def _dead_letter(self, record: Record, error_kind: str, error: str, track_id: str | None = None) -> str:
        failed = dead_letter(
            stage="index",
            error_kind=error_kind,
            error=error,
            raw=record.value,
            key=record.key,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            track_id=track_id,
        )
        # Sent before the offset can reach a snapshot, so a crash re-sends it
        # rather than losing it.
        await send_dead_letter(kafka.via_producer(self._producer), self.topics.tracks_failed, failed)
        self.metrics.dead_letters.labels(error_kind).inc()
        log.warning("dead-lettered %s[%d]@%d: %s", record.topic, record.partition, record.offset, error)
        return error_kind
