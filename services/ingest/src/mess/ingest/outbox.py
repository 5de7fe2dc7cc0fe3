"""The outbox relay: publishes committed outbox rows to the broker, in order, at least once.

One relay per schema is active at a time (a Postgres advisory lock held on
the relay's own connection elects it), because two relays taking turns would
interleave rows and break the order. Rows are read in ``id`` (commit) order,
sent in that order, and marked published only up to the first one the broker
did not acknowledge; the rest are sent again next round, so an event may be
published twice but never skipped or reordered ahead of an earlier one.
While the broker is down nothing is marked and the relay retries with
backoff, so uploads keep succeeding and their events go out when it returns.
The relay wakes on the NOTIFY the registry sends at commit, with a poll as
the backstop. When the service stops, ``finish`` makes it publish what is
pending once more and return, so an upload committed during the shutdown
leaves with it rather than waiting for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTimestampError,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from mess.contracts.topics import REGISTRY_SEQUENCE_HEADER, TOPIC_EVENTS
from mess.ingest import metrics
from mess.ingest.registry import outbox_channel
from mess.runtime import kafka
from mess.runtime.deadletter import dead_letter, send_dead_letter

if TYPE_CHECKING:
    from mess.ingest.config import Settings

log = logging.getLogger(__name__)

_CLEANUP_EVERY_S = 600.0
_MEASURE_PENDING_EVERY_S = 5.0
_PRODUCER_STOP_TIMEOUT_S = 5.0

#: ``TrackFailed.error_kind`` of an outbox row the broker can never accept.
UNPUBLISHABLE_KIND = "unpublishable"
# Errors that are about the row itself, so no retry can cure them. Narrower than
# mess.runtime.kafka.PERMANENT_SEND_ERRORS on purpose: an authorization or
# version error is about the relay's connection, and dead-lettering every row
# through such a misconfiguration would throw the whole outbox away.
_UNPUBLISHABLE: tuple[type[KafkaError], ...] = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    CorruptRecordException,
    InvalidTimestampError,
)


class OutboxRelay:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stack = settings.stack
        self._wake = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self._last_cleanup = 0.0
        self._last_measured = 0.0
        self._finishing = False
        self._finish_asked = asyncio.Event()
        self.is_leader = False

    @property
    def finish_requested(self) -> bool:
        return self._finishing

    def finish(self) -> None:
        """Publish what is pending now, then return from ``run`` (the service is stopping).

        Called once nothing else will write outbox rows in this process, so one
        pass that starts after this call and finds the outbox drained has
        published everything this process committed. A broker failure during
        that pass ends it too: the rows stay in the outbox for the next relay.
        """
        self._finishing = True
        self._finish_asked.set()
        self._wake.set()

    async def run(self) -> None:
        """Relay until ``finish``; every failure (Postgres or broker) is retried with backoff until then."""
        delay = 0.2
        while True:
            try:
                await self._relay_while_leader()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                metrics.RELAY_FAILURES.labels("postgres").inc()
                if self._finishing:
                    log.warning("outbox relay lost Postgres while finishing (%s); pending rows wait for the next", exc)
                    return
                log.warning("outbox relay lost Postgres (%s); retrying in %.1f s", exc, delay)
            if self._finishing:
                return
            await self._pause(delay)
            delay = min(delay * 2, self.settings.relay_retry_max_s)

    async def _pause(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        """Sleep, but wake at once when ``finish`` is called (or ``wake`` is set)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for((wake or self._finish_asked).wait(), timeout=seconds)

    async def _relay_while_leader(self) -> None:
        connection = await asyncpg.connect(
            self.stack.postgres_dsn, timeout=10, server_settings={"search_path": self.stack.postgres_schema}
        )
        lock_key = f"mess.ingest.outbox:{self.stack.postgres_schema}"
        try:
            while not await connection.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", lock_key):
                if self._finishing:
                    return  # the leading replica publishes what this one committed
                await self._pause(self.settings.relay_poll_s)  # another replica relays; take over when it dies
            self.is_leader = True
            await connection.add_listener(outbox_channel(self.stack.postgres_schema), self._on_notify)
            log.info("outbox relay active for schema %s", self.stack.postgres_schema)
            broker_delay = 0.2
            while True:
                self._wake.clear()
                # Only a pass that began after finish() was asked for has seen every row committed before it.
                final_pass = self._finishing
                try:
                    sent = await self.publish_pending(connection)
                except (KafkaError, OSError, TimeoutError) as exc:
                    metrics.RELAY_FAILURES.labels("broker").inc()
                    await self._drop_producer()
                    if final_pass:
                        log.warning(
                            "broker unavailable to the outbox relay while stopping (%r); "
                            "pending events stay in the outbox for the next relay",
                            exc,
                        )
                        return
                    log.warning("broker unavailable to the outbox relay (%r); retrying in %.1f s", exc, broker_delay)
                    await self._pause(broker_delay)
                    broker_delay = min(broker_delay * 2, self.settings.relay_retry_max_s)
                    continue
                broker_delay = 0.2
                if sent >= self.settings.relay_batch:
                    continue  # more are waiting
                if final_pass:
                    log.info("outbox relay stopped with the outbox drained")
                    return
                await self._cleanup(connection)
                await self._pause(self.settings.relay_poll_s, wake=self._wake)  # NOTIFY or finish()
        finally:
            self.is_leader = False
            await self._drop_producer()
            # Closing the connection releases the advisory lock, so another replica can lead.
            await connection.close()

    def _on_notify(self, *_: Any) -> None:
        self._wake.set()

    async def publish_pending(self, connection: asyncpg.Connection[asyncpg.Record]) -> int:
        """Publish one batch of pending rows in order; returns how many were published and marked."""
        await self._measure_pending(connection)
        rows = await connection.fetch(
            "SELECT id, topic, key, payload::text AS payload FROM outbox "
            "WHERE published_at IS NULL ORDER BY id LIMIT $1",
            self.settings.relay_batch,
        )
        if not rows:
            metrics.OUTBOX_PENDING.set(0)
            return 0
        producer = await self._ready_producer()
        deliveries: list[tuple[asyncpg.Record, asyncio.Future[Any]]] = []
        unpublishable: list[tuple[asyncpg.Record, str]] = []
        send_error: BaseException | None = None
        for row in rows:
            if row["topic"] not in TOPIC_EVENTS:
                unpublishable.append((row, f"{row['topic'][:200]!r} is not a topic of mess"))
                continue
            try:
                # send() only queues (in order, per partition); the futures resolve when the broker acknowledges.
                delivery = await producer.send(
                    self.stack.topic_prefix + row["topic"],
                    value=row["payload"].encode("utf-8"),
                    key=row["key"].encode("utf-8"),
                    # The row's id orders one track's announcements across the added and removed topics
                    # (the registry writes them one transaction after another, so a later fact of a track
                    # has a larger id); the indexer orders by it, never by a producer's clock.
                    headers=[(REGISTRY_SEQUENCE_HEADER, str(row["id"]).encode("ascii"))],
                )
            except _UNPUBLISHABLE as exc:
                # Refused before it was queued (over max_request_size): only this row; the next ones go on.
                unpublishable.append((row, _reason(exc)))
                continue
            except (KafkaError, OSError, TimeoutError) as exc:
                send_error = exc
                break
            deliveries.append((row, delivery))
        outcomes = await asyncio.gather(*(delivery for _, delivery in deliveries), return_exceptions=True)
        acknowledged: list[int] = []
        for (row, _), outcome in zip(deliveries, outcomes, strict=True):
            if isinstance(outcome, _UNPUBLISHABLE):
                unpublishable.append((row, _reason(outcome)))
                continue
            if isinstance(outcome, BaseException):
                # Transient: neither this row nor any after it is marked, so all are sent again, in order.
                send_error = send_error or outcome
                break
            acknowledged.append(row["id"])
            metrics.OUTBOX_PUBLISHED.labels(row["topic"]).inc()
        if acknowledged:
            await connection.execute(
                "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])", acknowledged
            )
        last_sent = acknowledged[-1] if send_error is not None and acknowledged else None
        handled = len(acknowledged)
        for row, reason in sorted(unpublishable, key=lambda item: int(item[0]["id"])):
            if send_error is not None and (last_sent is None or row["id"] > last_sent):
                break  # after the transient failure: retried with the rest next round
            await self._dead_letter(connection, producer, row, reason)
            handled += 1
        if send_error is not None:
            raise send_error
        return handled

    async def _dead_letter(
        self,
        connection: asyncpg.Connection[asyncpg.Record],
        producer: AIOKafkaProducer,
        row: asyncpg.Record,
        reason: str,
    ) -> None:
        """A row no broker will ever take goes to the dead letter topic with its reason and is marked, so
        it is never sent again and the rows behind it are not held up. Rows stay in order otherwise: no
        other row is passed over, and a dead letter the broker does not take raises like any send."""
        letter = dead_letter(
            stage="ingest",
            error_kind=UNPUBLISHABLE_KIND,
            error=f"outbox row {row['id']} cannot be published: {reason}",
            raw=row["payload"].encode("utf-8"),
            key=row["key"].encode("utf-8"),
            topic=self.stack.topic_prefix + row["topic"],
        )
        await send_dead_letter(kafka.via_producer(producer), self.stack.topics.tracks_failed, letter)
        await connection.execute(
            # published_at: the relay is done with the row (the pending index, the count and the
            # retention cleanup all go by it); dead_letter_reason says it left as a dead letter.
            "UPDATE outbox SET published_at = now(), dead_letter_reason = $2 WHERE id = $1",
            row["id"],
            reason[:4000],
        )
        metrics.RELAY_FAILURES.labels("unpublishable").inc()
        log.error("outbox row %s (%s, key %s) dead-lettered: %s", row["id"], row["topic"], row["key"][:200], reason)

    async def _measure_pending(self, connection: asyncpg.Connection[asyncpg.Record]) -> None:
        # count(*) walks the whole backlog, which after a long outage is large: measure now and then, not per batch.
        now = time.monotonic()
        if now - self._last_measured < _MEASURE_PENDING_EVERY_S:
            return
        self._last_measured = now
        pending = await connection.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        metrics.OUTBOX_PENDING.set(int(pending))

    async def _ready_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = kafka.producer(
                self.stack,
                request_timeout_ms=self.settings.kafka_timeout_ms,
                client_id="mess-ingest-relay",
            )
            try:
                await producer.start()
            except BaseException:
                await _stop_quietly(producer)
                raise
            self._producer = producer
        return self._producer

    async def _drop_producer(self) -> None:
        # A fresh producer after a failure: simpler than trusting a client that saw its broker vanish.
        producer, self._producer = self._producer, None
        if producer is not None:
            await _stop_quietly(producer)

    async def _cleanup(self, connection: asyncpg.Connection[asyncpg.Record]) -> None:
        now = time.monotonic()
        if now - self._last_cleanup < _CLEANUP_EVERY_S:
            return
        self._last_cleanup = now
        deleted = await connection.execute(
            "DELETE FROM outbox WHERE published_at < now() - make_interval(secs => $1)",
            self.settings.outbox_retention_h * 3600.0,
        )
        log.debug("outbox cleanup: %s", deleted)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), timeout=_PRODUCER_STOP_TIMEOUT_S)
    except (KafkaError, OSError, TimeoutError):
        log.debug("producer did not stop cleanly", exc_info=True)
