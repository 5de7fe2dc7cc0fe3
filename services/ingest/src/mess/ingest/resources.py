"""Everything the running service holds, built in the lifespan and torn down with it.

Postgres is required at start (migrations run first, and a missing database
is a configuration error worth failing loudly for). S3, SQS and the broker
may be down at start or later: the loops that use them retry with backoff,
readiness reports them, and uploads keep working while only the broker is away.
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
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError

from mess.ingest.db import Database, apply_migrations, open_database
from mess.ingest.outbox import OutboxRelay
from mess.ingest.reconciler import Reconciler
from mess.ingest.registry import TrackRegistry
from mess.ingest.s3drop import DropIngestor, DropNoticeWorker, DropScan
from mess.ingest.status import SnapshotMembership, TrackStatusFollower
from mess.ingest.store import AudioStore
from mess.ingest.uploads import UploadIntake

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_sqs import SQSClient

    from mess.ingest.config import Settings

log = logging.getLogger(__name__)

_PROBE_TIMEOUT_S = 2.0
_RESTART_AFTER_CRASH_S = 5.0


class BrokerProbe:
    """Answers "does the broker answer?" for readiness with one long-lived metadata client."""

    def __init__(self, servers: list[str], timeout_ms: int) -> None:
        self._servers = servers
        self._timeout_ms = timeout_ms
        self._client: Any = None

    async def answers(self) -> bool:
        try:
            if self._client is None:
                client = AIOKafkaClient(bootstrap_servers=self._servers, request_timeout_ms=self._timeout_ms)
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
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

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


async def _supervised(name: str, loop: Callable[[], Awaitable[None]]) -> None:
    """Run a background loop forever; a bug that escapes it is logged and the loop restarted, not silently lost."""
    while True:
        try:
            await loop()
            log.error("%s returned; restarting it", name)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s crashed; restarting it in %.0f s", name, _RESTART_AFTER_CRASH_S)
        await asyncio.sleep(_RESTART_AFTER_CRASH_S)


@asynccontextmanager
async def open_resources(settings: Settings) -> AsyncIterator[IngestResources]:
    stack = settings.stack
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
        exits.push_async_callback(db.pool.close)
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
        ingestor = DropIngestor(settings, store, registry)
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
            follower=TrackStatusFollower(settings, registry, membership),
            reconciler=Reconciler(settings, store, registry, membership),
            broker_probe=BrokerProbe(stack.kafka_servers, settings.kafka_timeout_ms),
        )
        exits.push_async_callback(resources.broker_probe.close)
        loops: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if settings.relay_enabled:
            loops.append(("outbox relay", resources.relay.run))
        if settings.drop_worker_enabled:
            loops.append(("SQS drop worker", resources.notices.run))
            if settings.drop_scan_interval_s > 0:
                loops.append(("drop scan", resources.scan.run))
        if settings.status_enabled:
            loops.append(("status consumer", resources.follower.run))
        if settings.reconciler_enabled:
            loops.append(("reconciler", resources.reconciler.run))
        resources.tasks = [asyncio.create_task(_supervised(name, loop), name=name) for name, loop in loops]
        try:
            yield resources
        finally:
            for task in resources.tasks:
                task.cancel()
            await asyncio.gather(*resources.tasks, return_exceptions=True)
