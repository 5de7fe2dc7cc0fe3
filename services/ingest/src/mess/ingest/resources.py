"""Everything the running service holds, built in the lifespan and torn down with it.

Postgres is required at start (migrations run first, and a missing database
is a configuration error worth failing loudly for). S3, SQS and the broker
may be down at start or later: the loops that use them retry with backoff,
readiness reports them, and uploads keep working while only the broker is away.

Stopping (SIGTERM, then the lifespan shutdown) goes in this order, every wait
bounded by what is left of ``shutdown_grace_s`` since the signal:

1. at the signal, the SQS worker, drop scan, reconciler and status consumer
   stop taking new work, while uvicorn stops accepting connections and lets
   the uploads in flight finish;
2. the objects, reconcile pass and status event in hand are finished and
   committed (SQS messages deleted, offsets committed); those loops end;
3. the relay publishes every outbox row committed so far and ends (with the
   broker down, the rows stay in the outbox for the next start);
4. the broker probe, SQS and S3 clients and the Postgres pool are closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from aiokafka.errors import KafkaError

from mess.ingest.db import Database, apply_migrations, open_database
from mess.ingest.outbox import OutboxRelay
from mess.ingest.reconciler import Reconciler
from mess.ingest.registry import TrackRegistry
from mess.ingest.s3drop import DropIngestor, DropNoticeWorker, DropScan
from mess.ingest.status import SnapshotMembership, TrackStatusFollower
from mess.ingest.store import AudioStore
from mess.ingest.uploads import UploadIntake
from mess.runtime import kafka
from mess.runtime.endpoints import StackSettings
from mess.runtime.termination import Termination, finish_within

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_sqs import SQSClient

    from mess.ingest.config import Settings

log = logging.getLogger(__name__)

_PROBE_TIMEOUT_S = 2.0
_RESTART_AFTER_CRASH_S = 5.0
# Closing a pool whose connections were all given back is instant; this only bounds a stuck one.
_POOL_CLOSE_S = 5.0


class BrokerProbe:
    """Answers "does the broker answer?" for readiness with one long-lived metadata client."""

    def __init__(self, stack: StackSettings, timeout_ms: int) -> None:
        self._stack = stack
        self._timeout_ms = timeout_ms
        self._client: Any = None

    async def answers(self) -> bool:
        try:
            if self._client is None:
                client = kafka.metadata_client(
                    self._stack, client_id="mess-ingest-probe", request_timeout_ms=self._timeout_ms
                )
                self._client = client
                await asyncio.wait_for(client.bootstrap(), _PROBE_TIMEOUT_S)
            await asyncio.wait_for(self._client.fetch_all_metadata(), _PROBE_TIMEOUT_S)
        except (KafkaError, OSError, TimeoutError):
            await self.close()
            return False
        return True

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except (KafkaError, OSError):
                log.debug("broker probe did not close cleanly", exc_info=True)


@dataclass
class IngestResources:
    settings: Settings
    db: Database
    store: AudioStore
    registry: TrackRegistry
    intake: UploadIntake
    ingestor: DropIngestor
    membership: SnapshotMembership
    relay: OutboxRelay
    notices: DropNoticeWorker
    scan: DropScan
    follower: TrackStatusFollower
    reconciler: Reconciler
    broker_probe: BrokerProbe
    termination: Termination
    # Loops that take new work (SQS worker, drop scan, status consumer, reconciler), and the relay
    # that publishes what they and the uploads committed: stopped in that order.
    intake_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    relay_task: asyncio.Task[None] | None = None

    async def drain(self) -> None:
        """Finish and commit the work in hand, publish it, and end every loop, within the grace period."""
        termination = self.termination
        termination.request()  # a no-op after SIGTERM; starts the clock when the shutdown came another way
        if self.ingestor.in_progress:
            log.info("finishing %d dropped object(s) in progress", self.ingestor.in_progress)
        await finish_within(self.intake_tasks, termination.remaining(), "stopping")
        if self.relay_task is not None:
            self.relay.finish()
            await finish_within([self.relay_task], termination.remaining(), "stopping")

    async def readiness(self) -> dict[str, bool]:
        postgres, s3, broker = await asyncio.gather(
            self.db.answers(_PROBE_TIMEOUT_S), _within(self.store.answers()), self.broker_probe.answers()
        )
        return {"postgres": postgres, "s3": s3, "broker": broker}


async def _within(check: Awaitable[bool]) -> bool:
    try:
        return await asyncio.wait_for(check, _PROBE_TIMEOUT_S)
    except TimeoutError:
        return False


async def _supervised(name: str, loop: Callable[[], Awaitable[None]], stopped: Callable[[], bool]) -> None:
    """Run a background loop until the service stops; a bug that escapes it is logged and the loop
    restarted, not silently lost. A loop returns by itself only when told to stop."""
    while True:
        try:
            await loop()
            if stopped():
                return
            log.error("%s returned; restarting it", name)
        except asyncio.CancelledError:
            raise
        except Exception:
            if stopped():
                log.exception("%s crashed while stopping", name)
                return
            log.exception("%s crashed; restarting it in %.0f s", name, _RESTART_AFTER_CRASH_S)
        await asyncio.sleep(_RESTART_AFTER_CRASH_S)


async def _close_pool(db: Database) -> None:
    try:
        await asyncio.wait_for(db.pool.close(), timeout=_POOL_CLOSE_S)
    except TimeoutError:
        log.warning("Postgres pool did not close within %.0f s; terminating its connections", _POOL_CLOSE_S)
        db.pool.terminate()


@asynccontextmanager
async def open_resources(settings: Settings) -> AsyncIterator[IngestResources]:
    stack = settings.stack
    termination = Termination(settings.shutdown_grace_s)
    stopping = termination.requested
    applied = await apply_migrations(stack)
    if applied:
        log.info("migrations applied: %s", ", ".join(applied))
    async with AsyncExitStack() as exits:
        db = await open_database(
            stack,
            min_size=settings.pg_pool_min,
            max_size=settings.pg_pool_max,
            acquire_timeout_s=settings.pg_acquire_timeout_s,
            command_timeout_s=settings.pg_command_timeout_s,
        )
        exits.push_async_callback(_close_pool, db)
        session = get_session()
        client_kwargs: dict[str, Any] = stack.s3_client_kwargs()
        s3: S3Client = await exits.enter_async_context(
            session.create_client(
                "s3",
                config=AioConfig(
                    connect_timeout=5, read_timeout=60, max_pool_connections=32, retries={"max_attempts": 3}
                ),
                **client_kwargs,
            )
        )
        sqs: SQSClient = await exits.enter_async_context(
            session.create_client(
                "sqs",
                # The read timeout must outlast the long poll.
                config=AioConfig(connect_timeout=5, read_timeout=settings.sqs_wait_s + 15, retries={"max_attempts": 3}),
                **client_kwargs,
            )
        )
        store = AudioStore(s3, stack.bucket, settings.s3_part_bytes)
        registry = TrackRegistry(db, stack.postgres_schema)
        ingestor = DropIngestor(settings, store, registry, stopping)
        membership = SnapshotMembership(store, registry)
        resources = IngestResources(
            settings=settings,
            db=db,
            store=store,
            registry=registry,
            intake=UploadIntake(settings, store, registry),
            ingestor=ingestor,
            membership=membership,
            relay=OutboxRelay(settings),
            notices=DropNoticeWorker(settings, sqs, ingestor, registry),
            scan=DropScan(settings, store, ingestor, registry),
            follower=TrackStatusFollower(settings, registry, membership, stopping),
            reconciler=Reconciler(settings, store, registry, membership, stopping),
            broker_probe=BrokerProbe(stack, settings.kafka_timeout_ms),
            termination=termination,
        )
        exits.push_async_callback(resources.broker_probe.close)
        intake: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if settings.drop_worker_enabled:
            intake.append(("SQS drop worker", resources.notices.run))
            if settings.drop_scan_interval_s > 0:
                intake.append(("drop scan", resources.scan.run))
        if settings.status_enabled:
            intake.append(("status consumer", resources.follower.run))
        if settings.reconciler_enabled:
            intake.append(("reconciler", resources.reconciler.run))
        with termination.watch_signals():
            resources.intake_tasks = [
                asyncio.create_task(_supervised(name, loop, stopping.is_set), name=name) for name, loop in intake
            ]
            if settings.relay_enabled:
                relay = resources.relay
                resources.relay_task = asyncio.create_task(
                    _supervised("outbox relay", relay.run, lambda: relay.finish_requested), name="outbox relay"
                )
            try:
                yield resources
            finally:
                await resources.drain()
