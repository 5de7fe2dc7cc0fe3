"""Keeping each track's status current from what the other services announce.

One consumer (group ``mess-ingest-status``, prefixed like the topics) reads
three topics and moves tracks through the registry:

* TrackEmbedded: ``registered -> embedded`` (a vector of other content than
  the track now holds is stale and ignored);
* TrackFailed from the embed or index stage: ``-> failed`` with stage and reason;
* SnapshotPublished: the snapshot's id files are read from S3 and every
  track in them becomes ``indexed`` with the snapshot version. Only a
  snapshot whose manifest lies where the indexer puts exactly that version,
  and which LATEST names, is read; one LATEST has moved past is superseded
  (skipped), anything else is dead-lettered (``mess.contracts.storage``'s
  checks, the ones the query service applies).

Every update is idempotent, so at-least-once delivery and replays are
harmless. A message that cannot be parsed, or a snapshot whose files are
missing or do not match their sha256, is dead-lettered and committed at
once; an update that fails for a transient reason (Postgres, S3) is retried
with backoff, then dead-lettered too (the reconciler heals what that skips).
Only when even the dead letter cannot be published is the message left
uncommitted, to be read again.

When the service stops, the consumer stops fetching at once, lets the event
in hand finish and commits it (faststream's graceful stop); an event that is
still waiting out a transient failure then is left uncommitted instead of
being dead-lettered, so whoever owns the partition next reads it again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaError
from botocore.exceptions import ClientError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from pydantic import ValidationError

from mess.contracts.events import SnapshotPublished, TrackEmbedded, TrackFailed
from mess.contracts.ids import is_track_id
from mess.contracts.storage import (
    LATEST_KEY,
    LatestAgreement,
    SnapshotCheckError,
    agreement_with_latest,
    check_manifest,
    check_snapshot_location,
    split_s3_uri,
)
from mess.ingest import metrics
from mess.ingest.outages import BACKEND_ERRORS
from mess.ingest.store import is_missing
from mess.runtime import kafka
from mess.runtime.deadletter import dead_letter, send_dead_letter
from mess.runtime.termination import wait_or_stop

if TYPE_CHECKING:
    from mess.ingest.config import Settings
    from mess.ingest.registry import TrackRegistry
    from mess.ingest.store import AudioStore

log = logging.getLogger(__name__)

_MARK_CHUNK = 10_000
# Dead letters that describe an event the indexer refused, not a track that failed.
_NOT_ABOUT_THE_TRACK = frozenset({("index", "content_mismatch"), ("index", "unregistered_content")})
_STOP_AFTER_FAILED_START_S = 10.0


class SnapshotUnreadableError(Exception):
    """A snapshot's manifest or id files are missing or corrupt: retrying will not help."""


class SnapshotGoneError(SnapshotUnreadableError):
    """The manifest is not in the bucket (any more)."""


class SnapshotSupersededError(SnapshotUnreadableError):
    """LATEST has moved past the snapshot: a late event, nothing to read and nothing wrong.

    A SnapshotUnreadableError only so that callers that merely skip an
    unreadable snapshot (the reconciler) skip this one too."""


class SnapshotMembership:
    """Marks the tracks of a published snapshot as indexed."""

    def __init__(self, store: AudioStore, registry: TrackRegistry) -> None:
        self.store = store
        self.registry = registry

    async def apply(self, version: str, manifest_uri: str) -> int:
        """Read the manifest and its id files; returns how many tracks became indexed now.

        Raises SnapshotUnreadableError for a snapshot the indexer did not publish (wrong place, wrong
        version format, ahead of LATEST) or whose files are broken, SnapshotSupersededError for one
        LATEST has moved past.
        """
        try:
            check_snapshot_location(version, manifest_uri, self.store.bucket)
        except SnapshotCheckError as exc:
            raise SnapshotUnreadableError(str(exc)) from exc
        latest = await self._read_latest()
        agreement = agreement_with_latest(version, latest)
        if agreement is LatestAgreement.SUPERSEDED:
            # Its tracks are in the snapshot LATEST names, whose event (and the reconciler) marks them.
            raise SnapshotSupersededError(f"LATEST is {latest}, past {version}")
        if agreement is LatestAgreement.REFUSED:
            named = (latest or "nothing")[:140]
            raise SnapshotUnreadableError(f"snapshot {version} is not what LATEST names ({named!r})")
        try:
            manifest = check_manifest(await self._read(manifest_uri, "manifest"), version)
        except SnapshotCheckError as exc:
            raise SnapshotUnreadableError(f"{manifest_uri}: {exc}") from exc
        changed = 0
        in_snapshot: list[str] = []
        for shard in manifest.shards:
            raw = await self._read(f"s3://{self.store.bucket}/{shard.ids.key}", f"shard {shard.shard} ids")
            if hashlib.sha256(raw).hexdigest() != shard.ids.sha256:
                raise SnapshotUnreadableError(f"{shard.ids.key} does not match the sha256 in the manifest of {version}")
            try:
                track_ids = json.loads(raw)
            except ValueError as exc:
                raise SnapshotUnreadableError(f"{shard.ids.key} is not a JSON array: {exc}") from exc
            if not isinstance(track_ids, list) or not all(isinstance(t, str) for t in track_ids):
                raise SnapshotUnreadableError(f"{shard.ids.key} is not a JSON array of track ids")
            for start in range(0, len(track_ids), _MARK_CHUNK):
                changed += await self.registry.mark_indexed(track_ids[start : start + _MARK_CHUNK], version)
            in_snapshot.extend(track_ids)
        log.info("snapshot %s: %d track(s) newly indexed", version, changed)
        # The snapshot LATEST names holds every track the index has. One the registry calls indexed that
        # is not in it was lost (a broker or bucket that lost its data, a rebuild for another model):
        # it goes back to registered, and the reconciler announces it again.
        lost = await self.registry.unmark_missing(in_snapshot, version)
        if lost:
            metrics.INDEXED_BUT_MISSING.inc(lost)
            log.warning("snapshot %s: %d track(s) marked indexed are not in it; announcing them again", version, lost)
        return changed

    async def superseded(self, version: str) -> bool:
        """Whether ``LATEST`` has moved past ``version`` (whose files retention may then have removed)."""
        # Compared as the indexer's counters (agreement_with_latest), never as text.
        return agreement_with_latest(version, await self._read_latest()) is LatestAgreement.SUPERSEDED

    async def _read_latest(self) -> str | None:
        try:
            raw = await self.store.read_bytes(LATEST_KEY)
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise
        return raw.decode("utf-8", errors="replace").strip() or None

    async def _read(self, uri: str, what: str) -> bytes:
        bucket, key = split_s3_uri(uri)
        if bucket != self.store.bucket:
            # Snapshots live in our bucket; reading wherever an event points would let any producer make
            # this service fetch (and time out on) objects it has no business with.
            raise SnapshotUnreadableError(f"the {what} {uri} is not in the bucket {self.store.bucket}")
        try:
            answer = await self.store.s3.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if is_missing(exc):
                raise SnapshotGoneError(f"the {what} {uri} does not exist") from exc
            raise
        async with answer["Body"] as body:
            return await body.read()


class TrackStatusFollower:
    """The status consumer: a faststream broker built (and rebuilt after a broker outage) in ``run``."""

    def __init__(
        self,
        settings: Settings,
        registry: TrackRegistry,
        membership: SnapshotMembership,
        stopping: asyncio.Event | None = None,
    ) -> None:
        self.settings = settings
        self.topics = settings.stack.topics
        self.registry = registry
        self.membership = membership
        self.stopping = stopping or asyncio.Event()
        self.broker: KafkaBroker | None = None
        self.started = asyncio.Event()

    def build_broker(self) -> KafkaBroker:
        broker = kafka.broker(
            self.settings.stack,
            # Not kafka_timeout_ms: a JoinGroup answer may wait out the group's rebalance, so this must exceed it.
            client_id="mess-ingest-status",
            log_level=logging.DEBUG,  # faststream logs every message at its level; keep that out of INFO
            # stop() waits this long for the event in hand to be handled and committed.
            graceful_timeout=float(self.settings.shutdown_grace_s),
        )
        broker.subscriber(
            self.topics.tracks_embedded,
            self.topics.tracks_failed,
            self.topics.index_snapshots,
            group_id=self.settings.status_consumer_group,
            auto_offset_reset="earliest",
            # Commit after handling; an exception (the dead letter itself could not be sent) rewinds to it.
            ack_policy=AckPolicy.NACK_ON_ERROR,
            title="ingest-status",
        )(self.handle)
        return broker

    async def run(self) -> None:
        """Consume until the service stops; returns once the event in hand is handled and committed."""
        delay = 0.5
        while not self.stopping.is_set():
            broker = self.build_broker()
            # Set before start: handlers may run (and dead-letter through it) as soon as consumers start.
            self.broker = broker
            try:
                await broker.start()
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning("status consumer cannot reach the broker (%s); retrying in %.1f s", exc, delay)
                self.broker = None
                await _stop_quietly(broker, _STOP_AFTER_FAILED_START_S)
                if await wait_or_stop(self.stopping, delay):
                    break
                delay = min(delay * 2, 30.0)
                continue
            self.started.set()
            try:
                # aiokafka reconnects by itself once started; this task only owns the broker's lifetime.
                await self.stopping.wait()
            finally:
                self.started.clear()
                # Graceful: fetching stops, the handler in progress finishes (it may still dead-letter
                # through this broker) and its offset is committed, then the consumer leaves the group.
                await _stop_quietly(broker, float(self.settings.shutdown_grace_s))
                self.broker = None
        log.info("status consumer stopped")

    async def handle(self, message: KafkaMessage) -> None:
        record = message.raw_message
        assert not isinstance(record, tuple)  # subscribed one message at a time
        topic, raw, key = record.topic, message.body, record.key
        try:
            kind, work = self._parse(topic, raw)
        except (ValidationError, ValueError) as exc:
            metrics.STATUS_EVENTS.labels("unknown", "malformed").inc()
            await self._dead_letter("malformed_event", f"unreadable message on {topic}: {exc}", record, raw, key)
            return
        last_error: BaseException | None = None
        for attempt in range(1, self.settings.status_attempts + 1):
            try:
                outcome = await work()
            except SnapshotUnreadableError as exc:
                metrics.STATUS_EVENTS.labels(kind, "bad_snapshot").inc()
                await self._dead_letter("bad_snapshot", str(exc), record, raw, key)
                return
            except BACKEND_ERRORS as exc:
                last_error = exc
                log.warning("status update from %s failed (attempt %d): %s", topic, attempt, exc)
                if await wait_or_stop(self.stopping, min(0.5 * 2**attempt, 10.0)):
                    # Stopping: rather than dead-letter an update that might succeed, leave it
                    # uncommitted (the exception makes faststream skip the commit) to be read again.
                    raise
                continue
            metrics.STATUS_EVENTS.labels(kind, outcome).inc()
            return
        metrics.STATUS_EVENTS.labels(kind, "gave_up").inc()
        await self._dead_letter(
            "status_update_failed",
            f"gave up after {self.settings.status_attempts} attempts: {last_error!r}",
            record,
            raw,
            key,
            attempts=self.settings.status_attempts,
        )

    def _parse(self, topic: str, raw: bytes) -> tuple[str, Any]:
        """(event kind, the update to run) for one message; raises on a message that is not its topic's event."""
        if topic == self.topics.tracks_embedded:
            embedded = TrackEmbedded.from_bytes(raw)

            async def embed() -> str:
                changed = await self.registry.mark_embedded(embedded.track_id, embedded.sha256)
                return "applied" if changed else "unchanged"

            return "embedded", embed
        if topic == self.topics.tracks_failed:
            failed = TrackFailed.from_bytes(raw)
            if failed.track_id is not None and not is_track_id(failed.track_id):
                # Our dead letters carry a valid id or none (mess.runtime.deadletter makes sure); anything
                # else did not come from a stage of the pipeline.
                raise ValueError(f"TrackFailed names {failed.track_id[:200]!r}, which is not a track id")

            async def fail() -> str:
                # The indexer refusing an embedding that does not match the registry says something
                # about that event (forged, or for content since replaced), not about the track: the
                # track keeps its status, so a forged event cannot flip it to failed either.
                if failed.track_id is None or (failed.stage, failed.error_kind) in _NOT_ABOUT_THE_TRACK:
                    return "ignored"
                changed = await self.registry.mark_failed(
                    failed.track_id, failed.stage, f"{failed.error_kind}: {failed.error}"
                )
                return "applied" if changed else "unchanged"

            return "failed", fail
        if topic == self.topics.index_snapshots:
            snapshot = SnapshotPublished.from_bytes(raw)

            async def index() -> str:
                try:
                    changed = await self.membership.apply(snapshot.version, snapshot.manifest_uri)
                except SnapshotSupersededError:
                    return "superseded"
                except SnapshotGoneError:
                    # Read late (a lagging or restarted consumer): the indexer has published newer
                    # snapshots since and its retention removed this one. The newer ones hold the
                    # same tracks and their events follow, so there is nothing to dead-letter.
                    if await self.membership.superseded(snapshot.version):
                        return "superseded"
                    raise
                return "applied" if changed else "unchanged"

            return "snapshot", index
        raise ValueError(f"no status rule for topic {topic}")

    async def _dead_letter(
        self, kind: str, error: str, record: Any, raw: bytes, key: bytes | None, attempts: int = 1
    ) -> None:
        letter = dead_letter(
            stage="ingest",
            error_kind=kind,
            error=error,
            raw=raw,
            key=key,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            attempts=attempts,
        )
        broker = self.broker
        if broker is None:
            raise RuntimeError("the status consumer has no broker to dead-letter with")
        # Raises when the broker is down: the message is then rewound, not lost.
        await send_dead_letter(kafka.via_broker(broker), self.topics.tracks_failed, letter)
        log.warning("dead-lettered %s:%s@%s: %s", record.topic, record.partition, record.offset, error)


async def _stop_quietly(broker: KafkaBroker, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(broker.stop(), timeout=timeout_s)
    except (KafkaError, OSError, TimeoutError, RuntimeError):
        log.debug("status broker did not stop cleanly", exc_info=True)
