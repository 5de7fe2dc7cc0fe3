"""RecommendationServed for analytics, published without slowing a response.

A request only puts a recipe for the event on a bounded in-process queue (never
awaits the broker, and does not even build the event: parsing the response and
validating the model happen in the background task, which then hands the event
to the Kafka producer). With
the broker down or the queue full the event is dropped and counted: analytics
is best effort, answering the listener is not.

On shutdown (after the last request has been answered) the queue is flushed:
every queued event is handed to the producer and the producer's batches are
delivered before it closes, within what is left of the grace period; events
still queued then are dropped and counted (reason ``shutdown``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from mess.contracts.events import RecommendationServed, TrackFailed
from mess.query.config import Settings
from mess.query.metrics import QueryMetrics
from mess.runtime import kafka
from mess.runtime.deadletter import send_dead_letter

log = logging.getLogger(__name__)

EventRecipe = RecommendationServed | Callable[[], RecommendationServed]

_STOP_S = 10.0
# Even with the grace period spent, the producer gets this long to send its last batch.
_MIN_CLOSE_S = 1.0


class AnalyticsPublisher:
    def __init__(self, settings: Settings, metrics: QueryMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._queue: asyncio.Queue[EventRecipe] = asyncio.Queue(maxsize=settings.analytics_queue_size)
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = False

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def accepting(self) -> bool:
        """Whether an event offered now would be queued (else building one is wasted work)."""
        return self._settings.analytics_enabled and self._connected

    def count_unavailable(self) -> None:
        """An event not even built because the broker is unavailable."""
        if self._settings.analytics_enabled:
            self._metrics.analytics_dropped.labels("broker_unavailable").inc()

    def offer(self, event: EventRecipe) -> None:
        """Queue an event (or a function that builds it); never blocks, never raises."""
        if not self._settings.analytics_enabled:
            return
        if not self._connected:
            self._metrics.analytics_dropped.labels("broker_unavailable").inc()
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._metrics.analytics_dropped.labels("queue_full").inc()

    async def publish_dead_letter(self, letter: TrackFailed) -> None:
        """Dead letters are rare and must not be dropped silently: await the broker."""
        producer = self._producer
        if producer is None or not self._connected:
            log.error("dead letter lost, broker unavailable: %s", letter.model_dump_json())
            return
        try:
            await send_dead_letter(kafka.via_producer(producer), self._settings.stack.topics.tracks_failed, letter)
        except KafkaError as exc:
            log.error("dead letter lost (%s): %s", exc, letter.model_dump_json())

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self, within_s: float = _STOP_S) -> None:
        """Flush the queue and the producer's batches to the broker (if it is up), then close; at most ``within_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        task, self._task = self._task, None
        if task is not None and not task.done() and self._connected and self._queue.qsize():
            queued = self._queue.qsize()
            try:
                await asyncio.wait_for(self._queue.join(), timeout=within_s)
                log.info("analytics: %d queued event(s) handed to the producer before closing", queued)
            except TimeoutError:
                log.warning("analytics: queue not flushed within the grace period")
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._drain("shutdown")
        # The producer's stop() sends what is still batched (linger) and waits for the acknowledgements.
        await self._close_producer(max(deadline - loop.time(), _MIN_CLOSE_S))

    async def _close_producer(self, within_s: float) -> None:
        self._connected = False
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await asyncio.wait_for(producer.stop(), timeout=within_s)
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning("analytics producer did not close cleanly: %r", exc)

    async def _connect(self) -> bool:
        producer = kafka.producer(
            self._settings.stack,
            client_id=f"mess-query-{uuid.uuid4().hex[:8]}",
            request_timeout_ms=self._settings.kafka_timeout_ms,
            linger_ms=50,  # batch events: analytics can wait, and one produce request per event is costly
            acks=1,
        )
        try:
            await producer.start()
        except (KafkaError, OSError) as exc:
            with contextlib.suppress(KafkaError, OSError):
                await producer.stop()
            log.warning("analytics broker unavailable (%s); RecommendationServed events are dropped", exc)
            return False
        self._producer = producer
        self._connected = True
        log.info("analytics publishing to %s", self._settings.stack.topics.recommendations_served)
        return True

    def _drain(self, reason: str) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()
            self._metrics.analytics_dropped.labels(reason).inc()

    async def _run(self) -> None:
        topic = self._settings.stack.topics.recommendations_served
        while True:
            if self._producer is None and not await self._connect():
                self._drain("broker_unavailable")
                await asyncio.sleep(self._settings.broker_retry_s)
                continue
            recipe = await self._queue.get()
            try:
                await self._hand_over(self._producer, topic, recipe)
            finally:
                self._queue.task_done()  # what stop() waits for

    async def _hand_over(self, producer: AIOKafkaProducer, topic: str, recipe: EventRecipe) -> None:
        try:
            event = recipe if isinstance(recipe, RecommendationServed) else recipe()
        except (ValueError, KeyError) as exc:  # ValueError includes pydantic's ValidationError
            self._metrics.analytics_dropped.labels("invalid").inc()
            log.error("RecommendationServed could not be built: %s", exc)
            return
        try:
            # send() only appends to a batch; the delivery is awaited by the callback.
            delivery = await producer.send(
                topic,
                event.to_bytes(),
                key=event.key().encode(),
                headers=[(name, value.encode()) for name, value in kafka.event_headers(event).items()],
            )
        except KafkaError as exc:
            self._metrics.analytics_dropped.labels("broker_error").inc()
            log.warning("RecommendationServed dropped: %s", exc)
            return
        delivery.add_done_callback(self._delivered)

    def _delivered(self, delivery: asyncio.Future[object]) -> None:
        if delivery.cancelled() or delivery.exception() is not None:
            self._metrics.analytics_dropped.labels("broker_error").inc()
        else:
            self._metrics.analytics_published.inc()
