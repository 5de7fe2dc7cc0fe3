"""The TrackAdded consumer: one poll batch in, one TrackEmbedded or TrackFailed out per record.

Offset discipline. The subscriber is faststream's *batch* subscriber with
manual acknowledgement: each poll returns up to ``max_tracks_per_poll``
records (waiting up to ``poll_wait_ms`` to fill up), the handler settles
every record (publishes its TrackEmbedded, or its TrackFailed dead letter),
and only then commits, which moves each partition exactly past this batch.
If anything in the batch cannot be published, the batch is *nacked*:
faststream seeks every partition back to the batch's first record, so the
whole batch is delivered again (publishing is idempotent: same vector, same
key). Nothing is committed past a record that has not been settled.

A poll batch is processed while the consumer does not poll; aiokafka keeps
heartbeating from its own task, and ``max_poll_interval_ms`` is set above the
slowest batch, so a long GPU batch does not make the group rebalance.

Shutdown. The consume loop polls only between batches, so stopping the
broker (faststream marks the subscriber stopped, then waits up to its
``graceful_timeout`` for the handler in progress) lets the batch in hand be
settled and committed and fetches nothing more. A batch still running when
that wait runs out is cancelled uncommitted and goes, whole, to the next
consumer of the group.
"""

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.message import StreamMessage
from pydantic import ValidationError

from mess.contracts.events import TRANSIENT_EXHAUSTED, Event, TrackAdded, TrackEmbedded, TrackFailed
from mess.embedder import metrics
from mess.embedder.attempts import CRASH_LOOP, AttemptLedger, RecordKey
from mess.embedder.audio import AudioRejectedError
from mess.embedder.config import Settings
from mess.embedder.embedding import TrackEmbedder
from mess.embedder.storage import AudioStore
from mess.runtime import kafka
from mess.runtime.deadletter import dead_letter
from mess.runtime.retry import Backoff, RetriesExhaustedError

log = logging.getLogger(__name__)

# Of the shutdown grace, what closing the producer and leaving the group may
# need once the in-flight batch is settled.
CLOSE_RESERVE_S = 5.0


def batch_drain_s(settings: Settings) -> float:
    """How long stopping waits for the in-flight poll batch to settle and commit."""
    grace = float(settings.shutdown_grace_s)
    return max(grace / 2, grace - CLOSE_RESERVE_S)


class Record(Protocol):
    """The fields of aiokafka's ConsumerRecord this handler reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


class PublishFailedError(RuntimeError):
    """The broker did not take an event after every retry; the poll batch is redelivered."""


class AddedTrackHandler:
    """Settles each TrackAdded record of a poll batch, then commits the batch."""

    def __init__(
        self,
        settings: Settings,
        publish: Callable[[Event, str], Awaitable[None]],
        store: AudioStore,
        embedder: TrackEmbedder,
        attempts: AttemptLedger | None = None,
    ) -> None:
        self.settings = settings
        self.topics = settings.stack.topics
        self.publish = publish
        self.store = store
        self.embedder = embedder
        self._io_slots = asyncio.Semaphore(settings.track_concurrency)
        self.records_in_flight = 0  # of the poll batch being settled; 0 between batches
        # Notes records in flight, so one that kills the process is dead-lettered, not redelivered for ever.
        self.attempts = attempts or AttemptLedger(settings.attempts_path, settings.max_crashes)

    async def handle_batch(self, message: KafkaMessage) -> None:
        records: tuple[Record, ...] = tuple(message.raw_message)
        self.records_in_flight = len(records)
        try:
            await self._settle_and_commit(message, records)
        finally:
            self.records_in_flight = 0

    async def _settle_and_commit(self, message: KafkaMessage, records: tuple[Record, ...]) -> None:
        started = time.monotonic()
        metrics.POLL_TRACKS.observe(len(records))
        try:
            if self.attempts.any_suspect([_record_key(r) for r in records]):
                # The process died during this batch before: one record at a time,
                # so a further death is counted against the record that caused it.
                for record in records:
                    await self.settle(record)
            else:
                await asyncio.gather(*(self.settle(record) for record in records))
        except asyncio.CancelledError:
            # Only a shutdown that outlived shutdown_grace_s cancels a batch.
            # Nothing of it is committed, so the group redelivers all of it.
            log.warning(
                "a poll batch of %d records was cut off by the shutdown, uncommitted; it will be delivered again",
                len(records),
            )
            raise
        except Exception:
            # Seek back to the first record of this batch on every partition:
            # the batch comes again, and nothing past it is committed.
            log.exception("poll batch of %d records not settled; it will be delivered again", len(records))
            await message.nack()
            raise
        await message.ack()
        took = time.monotonic() - started
        metrics.POLL_SECONDS.observe(took)
        if took * 1000 > self.settings.max_poll_interval_ms / 2:
            # Past max_poll_interval_ms the group would rebalance mid-batch
            # (nothing is lost, but the batch is done twice).
            log.warning(
                "a poll batch of %d tracks took %.0f s, over half of max_poll_interval_ms (%d ms): "
                "lower max_tracks_per_poll or max_audio_seconds, or raise max_poll_interval_ms",
                len(records),
                took,
                self.settings.max_poll_interval_ms,
            )
        consumer = getattr(message, "consumer", None)
        if isinstance(consumer, AIOKafkaConsumer):
            await _update_lag(consumer)

    async def settle(self, record: Record) -> None:
        """Publish this record's TrackEmbedded or TrackFailed; raise only when the broker refuses both."""
        key = _record_key(record)
        crashes = self.attempts.begin(key)
        try:
            if crashes >= self.attempts.max_crashes:
                reason = f"the embedder process died {crashes} times while this record was in flight"
                await self._dead_letter(record, CRASH_LOOP, reason, _track_id_of(record), attempts=crashes)
            else:
                await self._settle(record)
        finally:
            # Reached on success and on any failure Python sees; only a process death skips it.
            self.attempts.end(key)

    async def _settle(self, record: Record) -> None:
        try:
            event = TrackAdded.from_bytes(record.value or b"")
        except (ValidationError, ValueError) as exc:
            await self._dead_letter(record, "malformed_event", f"not a valid TrackAdded: {exc}", None)
            return
        try:
            async with self._io_slots:
                data = await self.store.fetch(event.audio_uri)
            embedded = await self.embedder.embed(event.track_id, data, event.sha256)
            await self.store.put_waveform(embedded.peaks)
        except AudioRejectedError as exc:
            await self._dead_letter(record, exc.kind, exc.reason, event.track_id)
            return
        except RetriesExhaustedError as exc:
            await self._dead_letter(record, TRANSIENT_EXHAUSTED, str(exc), event.track_id, attempts=exc.attempts)
            return
        except Exception as exc:  # a model or code failure is this track's, not the partition's
            log.exception("embedding %s failed unexpectedly", event.track_id)
            await self._dead_letter(record, "model_error", f"{type(exc).__name__}: {exc}", event.track_id)
            return
        out = TrackEmbedded(
            track_id=event.track_id,
            sha256=event.sha256,
            model=self.embedder.identity,
            vector=embedded.vector,
            duration_s=round(embedded.duration_s, 6),
            chunks=embedded.chunks,
            pitch_sequence=embedded.pitch_sequence,
        )
        await self.publish(out, self.topics.tracks_embedded)
        metrics.TRACKS.labels(outcome="embedded").inc()
        metrics.AUDIO_SECONDS.inc(embedded.duration_s)
        metrics.CHUNKS.inc(embedded.chunks)

    async def _dead_letter(
        self, record: Record, kind: str, reason: str, track_id: str | None, attempts: int = 1
    ) -> None:
        failed: TrackFailed = dead_letter(
            stage="embed",
            error_kind=kind,
            error=reason,
            raw=record.value,
            key=record.key,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            attempts=attempts,
            track_id=track_id,
        )
        log.warning("dead letter for %s: %s: %s", failed.track_id or failed.key(), kind, reason)
        await self.publish(failed, self.topics.tracks_failed)
        metrics.TRACKS.labels(outcome="failed").inc()
        metrics.FAILURES.labels(kind=kind).inc()


def _record_key(record: Record) -> RecordKey:
    return RecordKey(record.topic, record.partition, record.offset)


def _track_id_of(record: Record) -> str | None:
    try:
        return TrackAdded.from_bytes(record.value or b"").track_id
    except (ValidationError, ValueError):
        return None


async def _update_lag(consumer: AIOKafkaConsumer) -> None:
    for partition in consumer.assignment():
        highwater = consumer.highwater(partition)
        if highwater is None:
            continue
        with contextlib.suppress(Exception):
            position = await consumer.position(partition)
            metrics.LAG.labels(topic=partition.topic, partition=str(partition.partition)).set(
                max(0, highwater - position)
            )


def _count_retry(operation: str) -> None:
    metrics.RETRIES.labels(operation="publish").inc()


def publisher(broker: KafkaBroker, backoff: Backoff) -> Callable[[Event, str], Awaitable[None]]:
    """Send one event keyed by its ``key()``, waiting for the broker's ack; retry with backoff."""

    async def publish(event: Event, topic: str) -> None:
        try:
            await kafka.publish(kafka.via_broker(broker), topic, event, backoff=backoff, on_retry=_count_retry)
        except Exception as exc:  # any send failure, after the retries: the batch is redelivered
            raise PublishFailedError(f"publishing {event.event_type} to {topic} failed: {exc}") from exc

    return publish


async def _tolerant_parser(
    record_batch: tuple[Record, ...], original: Callable[[Any], Awaitable[StreamMessage[Any]]]
) -> StreamMessage[Any]:
    """faststream decodes every header as UTF-8; a poison message with binary
    headers would then fail the whole batch before the handler could
    dead-letter it. Such headers are dropped (the payload is kept intact)."""
    try:
        return await original(record_batch)
    except UnicodeDecodeError:
        cleaned = []
        for record in record_batch:
            copy_of = copy.copy(record)
            copy_of.headers = [(k, v) for k, v in record.headers if _decodes(v)]
            cleaned.append(copy_of)
        return await original(tuple(cleaned))


def _decodes(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def build_broker(settings: Settings) -> KafkaBroker:
    return kafka.broker(
        settings.stack,
        client_id="mess-embedder",
        # broker.stop() waits this long for the poll batch in hand (see Shutdown above).
        graceful_timeout=batch_drain_s(settings),
        # Topics are provisioned with their partitions and compaction by
        # mess-dev or the deployment; a consumer must never create them.
        allow_auto_create_topics=False,
        logger=logging.getLogger("mess.embedder.kafka"),
    )


def subscribe(broker: KafkaBroker, settings: Settings, handler: AddedTrackHandler) -> None:
    """Attach the batch subscriber for TrackAdded to ``broker``."""
    subscriber = broker.subscriber(
        settings.stack.topics.tracks_added,
        batch=True,
        group_id=settings.consumer_group,
        max_records=settings.max_tracks_per_poll,
        batch_timeout_ms=settings.poll_wait_ms,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset=settings.auto_offset_reset,
        max_poll_interval_ms=settings.max_poll_interval_ms,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        parser=_tolerant_parser,
        title="embedder: TrackAdded -> TrackEmbedded | TrackFailed",
    )
    subscriber(handler.handle_batch)


__all__ = ["AddedTrackHandler", "PublishFailedError", "batch_drain_s", "build_broker", "publisher", "subscribe"]
