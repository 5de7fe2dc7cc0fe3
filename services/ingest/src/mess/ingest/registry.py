"""The track registry: the only code that writes ``tracks`` and ``outbox``.

Every way audio comes in (upload, S3 drop, reconcile scan) ends in
``TrackRegistry.register``: the track row and the outbox row holding its
TrackAdded are written in one transaction, so an event exists exactly when
the track does. Registration is idempotent by content: the same bytes give
the same track and no second event. The status consumer and the reconciler
move tracks through ``registered -> embedded -> indexed`` (or ``failed``)
here too, so every rule about statuses lives in one file.

Who may write what (the trust model of the README):

* Every value is checked against its column before the transaction
  (``check``): a value Postgres cannot hold is ``UnstorableTrackError``, a
  permanent error of the input, never an outage.
* Rewriting a row needs the authority that wrote it. An upload (an API key)
  may bring back content it could have written; a drop (anyone who can write
  the bucket's drop prefix) may replace or revive only rows that drops of its
  own dataset wrote. Anything else is ``ClaimRefusedError``.
* A stored ``failure_reason`` is a public code and a fixed text
  (``mess.ingest.reasons``); what the failure said goes to the log.
* Removal marks the row and queues TrackRemoved; the objects of a removed
  track (its audio and waveform) are erased after the commit (``erasing``),
  and again by the reconciler for any erasure that failed or raced an embed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import asyncpg
from pydantic import BaseModel

from mess.contracts.events import TRANSIENT_EXHAUSTED, Event, TrackAdded, TrackFailed, TrackMetadata, TrackRemoved
from mess.contracts.topics import TRACKS_ADDED, TRACKS_FAILED, TRACKS_REMOVED
from mess.ingest import metrics
from mess.ingest.audio import AudioFacts
from mess.ingest.metadata import row_problem
from mess.ingest.outages import INPUT_ERRORS
from mess.ingest.reasons import public_reason

if TYPE_CHECKING:
    from mess.ingest.db import Connection, Database
    from mess.ingest.store import AudioStore

log = logging.getLogger(__name__)

TrackStatusName = Literal["registered", "embedded", "indexed", "failed", "removed"]
# One column per TrackMetadata field; tags are an array column handled on their own.
_METADATA_COLUMNS = tuple(name for name in TrackMetadata.model_fields if name != "tags")
# Stages whose failures other services report; ingest records its own directly.
_DOWNSTREAM_STAGES = ("embed", "index")


def outbox_channel(schema: str) -> str:
    """The NOTIFY channel that wakes the relay of this schema (channels are database-wide)."""
    return f"mess_outbox_{schema}"


class UnstorableTrackError(Exception):
    """A value of the track cannot be held by its column: refused, never retried."""

    kind = "unstorable"


class ClaimRefusedError(Exception):
    """The write would rewrite a track that another authority wrote."""

    kind = "claim_refused"


@dataclass(frozen=True)
class StoredAudio:
    """Audio that passed validation and sits at its content-addressed key."""

    sha256: str
    audio_uri: str
    size_bytes: int
    facts: AudioFacts


@dataclass(frozen=True)
class TrackCandidate:
    track_id: str
    dataset: str
    metadata: TrackMetadata
    audio: StoredAudio
    source_key: str | None = None


@dataclass(frozen=True)
class RejectedContent:
    """A dropped object that failed validation but whose content (and so its track id) is known."""

    track_id: str
    sha256: str
    source_uri: str
    dataset: str
    metadata: TrackMetadata
    size_bytes: int


@dataclass(frozen=True)
class DropSource:
    """The dropped object a track came from, remembered so it is never fetched twice."""

    key: str
    etag: str | None


@dataclass(frozen=True)
class Registration:
    track_id: str
    status: TrackStatusName
    announced: bool  # this call queued a TrackAdded
    existing: bool  # the content was registered before this call
    duration_s: float | None = None


class TrackStatus(BaseModel):
    track_id: str
    status: TrackStatusName
    dataset: str
    sha256: str
    audio_uri: str
    snapshot_version: str | None
    failure_stage: str | None
    failure_reason: str | None
    created_at: datetime
    updated_at: datetime


class DropObjectState(BaseModel):
    key: str
    state: Literal["ingested", "rejected", "unknown"]
    track_id: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Removal:
    track_id: str
    already_removed: bool


@dataclass(frozen=True)
class RemovedObjects:
    """What erasing a removed track deletes: its audio (unless live content shares it) and its waveform."""

    track_id: str
    audio_uri: str | None


def may_rewrite(existing: asyncpg.Record | dict[str, Any], candidate: TrackCandidate) -> bool:
    """Whether ``candidate`` has the authority that wrote ``existing``.

    An upload carries an API key: it may bring back any content (the only rows it can reach are those of
    its own content, its id being the content hash). A drop carries only the right to write the drop
    prefix: it may rewrite rows that drops of the same dataset wrote, never an upload's nor another
    dataset's."""
    if candidate.source_key is None:
        return True
    return existing["source_key"] is not None and existing["dataset"] == candidate.dataset


def added_event(row: asyncpg.Record | dict[str, Any], reason: str) -> TrackAdded:
    """The TrackAdded that announces a track row."""
    metadata = TrackMetadata(**{column: row[column] for column in _METADATA_COLUMNS}, tags=list(row["tags"] or []))
    return TrackAdded(
        track_id=row["id"],
        sha256=row["sha256"],
        audio_uri=row["audio_uri"],
        dataset=row["dataset"],
        metadata=metadata,
        duration_s=row["duration_s"],
        sample_rate=row["sample_rate"],
        channels=row["channels"],
        size_bytes=row["size_bytes"],
        reason=reason,
    )


def _row_values(candidate: TrackCandidate) -> dict[str, Any]:
    facts = candidate.audio.facts
    metadata = candidate.metadata
    return {
        "id": candidate.track_id,
        "sha256": candidate.audio.sha256,
        "audio_uri": candidate.audio.audio_uri,
        "dataset": candidate.dataset,
        "source_key": candidate.source_key,
        **{column: getattr(metadata, column) for column in _METADATA_COLUMNS},
        "tags": list(metadata.tags),
        "duration_s": facts.duration_s,
        "sample_rate": facts.sample_rate,
        "channels": facts.channels,
        "size_bytes": candidate.audio.size_bytes,
    }


class TrackRegistry:
    def __init__(self, db: Database, schema: str) -> None:
        self.db = db
        self.channel = outbox_channel(schema)

    # --- writing tracks ---------------------------------------------------

    @staticmethod
    def check(candidate: TrackCandidate) -> None:
        """Raise ``UnstorableTrackError`` when a column cannot hold a value of ``candidate``; call it before
        any side effect (storing the audio), so a refusal leaves nothing behind."""
        problem = row_problem(_row_values(candidate))
        if problem is not None:
            raise UnstorableTrackError(problem)

    async def register(self, candidate: TrackCandidate, drop: DropSource | None = None) -> Registration:
        """Register audio as a track and queue its TrackAdded, in one transaction; idempotent by sha256.

        Raises ``UnstorableTrackError`` or ``ClaimRefusedError`` (permanent: nothing was written)."""
        self.check(candidate)
        try:
            return await self._register(candidate, drop)
        except INPUT_ERRORS as exc:
            # The check above should have caught it; whatever slipped through is still the input's fault.
            log.warning("track %s cannot be stored: %r", candidate.track_id, exc)
            raise UnstorableTrackError(f"a value of the track cannot be stored ({type(exc).__name__})") from exc

    async def _register(self, candidate: TrackCandidate, drop: DropSource | None) -> Registration:
        values = _row_values(candidate)
        columns = list(values)
        placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
        async with self.db.transaction() as connection:
            row = await connection.fetchrow(
                f"INSERT INTO tracks ({', '.join(columns)}) VALUES ({placeholders}) "  # noqa: S608 - fixed column names
                "ON CONFLICT DO NOTHING RETURNING *",
                *values.values(),
            )
            if row is not None:
                registration = Registration(row["id"], "registered", announced=True, existing=False)
                await self._enqueue(connection, TRACKS_ADDED, added_event(row, "new"))
            else:
                registration = await self._register_known(connection, candidate, values)
            if drop is not None:
                await self._remember_drop(connection, drop, registration.track_id)
        return registration

    async def _register_known(
        self, connection: Connection, candidate: TrackCandidate, values: dict[str, Any]
    ) -> Registration:
        same_content = await connection.fetchrow(
            "SELECT * FROM tracks WHERE sha256 = $1 FOR UPDATE", candidate.audio.sha256
        )
        if same_content is not None:
            revivable = same_content["status"] == "removed" or (
                same_content["status"] == "failed" and same_content["failure_stage"] == "ingest"
            )
            if not revivable:
                return Registration(same_content["id"], same_content["status"], announced=False, existing=True)
            if not may_rewrite(same_content, candidate):
                raise ClaimRefusedError(
                    f"this content belongs to track {same_content['id']}, which {_writer(same_content)} wrote; "
                    "only that writer may bring it back"
                )
            # Removed (or once rejected) content sent again comes back under its old id.
            row = await self._overwrite(connection, same_content["id"], values)
            await self._enqueue(connection, TRACKS_ADDED, added_event(row, "new"))
            return Registration(row["id"], "registered", announced=True, existing=True)
        # The id is taken by other content: a dataset file changed at the same path. The new audio replaces it.
        same_id = await connection.fetchrow(
            "SELECT id, dataset, source_key FROM tracks WHERE id = $1 FOR UPDATE", candidate.track_id
        )
        if same_id is None:
            raise RuntimeError(f"track {candidate.track_id} conflicted on insert but no row holds its id or content")
        if not may_rewrite(same_id, candidate):
            raise ClaimRefusedError(
                f"track {candidate.track_id} exists and {_writer(same_id)} wrote it; a drop of dataset "
                f"{candidate.dataset!r} may not replace it"
            )
        row = await self._overwrite(connection, candidate.track_id, values)
        await self._enqueue(connection, TRACKS_ADDED, added_event(row, "replaced"))
        log.info("track %s now holds new audio %s", candidate.track_id, candidate.audio.sha256)
        return Registration(row["id"], "registered", announced=True, existing=True)

    async def _overwrite(self, connection: Connection, track_id: str, values: dict[str, Any]) -> asyncpg.Record:
        updates = {k: v for k, v in values.items() if k != "id"}
        assignments = ", ".join(f"{column} = ${i}" for i, column in enumerate(updates, start=2))
        row = await connection.fetchrow(
            f"UPDATE tracks SET {assignments}, status = 'registered', snapshot_version = NULL, "  # noqa: S608
            "failure_stage = NULL, failure_reason = NULL, objects_erased_at = NULL, announced_at = now(), "
            "updated_at = now() "
            "WHERE id = $1 RETURNING *",
            track_id,
            *updates.values(),
        )
        assert row is not None  # the caller holds the row lock
        return row

    async def record_rejected_drop(
        self,
        drop: DropSource,
        dead_letter: TrackFailed,
        content: RejectedContent | None = None,
        *,
        reason: str,
        letter_key: str,
    ) -> None:
        """A dropped object that is not acceptable audio: remembered (so it is not retried until it changes),
        shown as a failed track when its content and id are known, and dead-lettered, in one transaction.

        ``reason`` is what ``/drops`` tells whoever dropped the object (about that object only); the track
        row gets the public code and text instead."""
        async with self.db.transaction() as connection:
            await connection.execute(
                "INSERT INTO rejected_objects (source_key, etag, reason) VALUES ($1, $2, $3) "
                "ON CONFLICT (source_key) DO UPDATE SET etag = EXCLUDED.etag, reason = EXCLUDED.reason, "
                "created_at = now()",
                drop.key,
                drop.etag,
                reason.replace("\x00", "")[:4000],
            )
            # An object that once failed and was then fixed in place is no longer ingested.
            await connection.execute("DELETE FROM ingested_objects WHERE source_key = $1", drop.key)
            if content is not None:
                metadata = content.metadata
                # Only a new row: an existing track with this content or id keeps what it has.
                await connection.execute(
                    "INSERT INTO tracks (id, sha256, audio_uri, dataset, source_key, "  # noqa: S608 - fixed column names
                    f"{', '.join(_METADATA_COLUMNS)}, tags, size_bytes, status, failure_stage, failure_reason) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, "
                    "'failed', 'ingest', $19) ON CONFLICT DO NOTHING",
                    content.track_id,
                    content.sha256,
                    content.source_uri,
                    content.dataset,
                    drop.key,
                    *(getattr(metadata, column) for column in _METADATA_COLUMNS),
                    list(metadata.tags),
                    content.size_bytes,
                    public_reason(dead_letter.error_kind, "ingest"),
                )
            await self._enqueue(connection, TRACKS_FAILED, dead_letter, letter_key)

    async def record_dead_letter(self, dead_letter: TrackFailed, key: str | None = None) -> None:
        """Queue a dead letter through the outbox, so it survives a broker outage like any event.

        ``key``: the Kafka key when the letter names no track and no source message (an SQS notice, a
        dropped object): without one, every such letter would share the key ``None:None:None``."""
        async with self.db.transaction() as connection:
            await self._enqueue(connection, TRACKS_FAILED, dead_letter, key)

    async def remove(self, track_id: str, reason: str | None = None) -> Removal | None:
        """Mark a track removed and queue TrackRemoved; None when no such track exists."""
        async with self.db.transaction() as connection:
            status = await connection.fetchval("SELECT status FROM tracks WHERE id = $1 FOR UPDATE", track_id)
            if status is None:
                return None
            if status == "removed":
                return Removal(track_id, already_removed=True)
            await connection.execute(
                "UPDATE tracks SET status = 'removed', objects_erased_at = NULL, updated_at = now() WHERE id = $1",
                track_id,
            )
            await self._enqueue(connection, TRACKS_REMOVED, TrackRemoved(track_id=track_id, reason=reason))
        return Removal(track_id, already_removed=False)

    async def retry(self, track_id: str) -> tuple[TrackStatusName, bool] | None:
        """A failed track back to registered and announced again (the stage that failed runs anew);
        any other status is left as it is. (status now, whether it was retried); None: no such track."""
        async with self.db.transaction() as connection:
            row = await connection.fetchrow("SELECT * FROM tracks WHERE id = $1 FOR UPDATE", track_id)
            if row is None:
                return None
            if row["status"] != "failed":
                status: TrackStatusName = row["status"]
                return status, False
            await connection.execute(
                "UPDATE tracks SET status = 'registered', failure_stage = NULL, failure_reason = NULL, "
                "announced_at = now(), updated_at = now() WHERE id = $1",
                track_id,
            )
            await self._enqueue(connection, TRACKS_ADDED, added_event(row, "retry"))
        return "registered", True

    @asynccontextmanager
    async def erasing(self, track_id: str) -> AsyncIterator[RemovedObjects | None]:
        """Erase the objects of a removed track: yields what to delete (None: the track is not removed, or
        it does not exist), and records the erasure when the block ends without an error.

        The row stays locked meanwhile, so content sent again (which revives the row) waits for the
        erasure instead of racing it. The audio is shared by content: it is kept when another live row
        holds the same object (a dataset copy of the same file never has its own row, but be safe)."""
        async with self.db.transaction() as connection:
            row = await connection.fetchrow(
                "SELECT id, audio_uri FROM tracks WHERE id = $1 AND status = 'removed' FOR UPDATE", track_id
            )
            if row is None:
                yield None
                return
            shared = await connection.fetchval(
                "SELECT count(*) FROM tracks WHERE audio_uri = $1 AND id <> $2 AND status <> 'removed'",
                row["audio_uri"],
                track_id,
            )
            yield RemovedObjects(track_id, None if shared else row["audio_uri"])
            await connection.execute("UPDATE tracks SET objects_erased_at = now() WHERE id = $1", track_id)

    async def removed_to_erase(self, grace_s: float, limit: int) -> list[str]:
        """Removed tracks whose objects are not erased yet, or were erased within ``grace_s`` of the removal
        (an embed in flight at the time may have written the waveform after it): erased once more."""
        async with self.db.connection() as connection:
            rows = await connection.fetch(
                "SELECT id FROM tracks WHERE status = 'removed' AND (objects_erased_at IS NULL OR "
                " (objects_erased_at < updated_at + make_interval(secs => $1) "
                "  AND now() > updated_at + make_interval(secs => $1))) "
                "ORDER BY updated_at LIMIT $2",
                grace_s,
                limit,
            )
        return [row["id"] for row in rows]

    async def _enqueue(self, connection: Connection, topic: str, event: Event, key: str | None = None) -> None:
        await connection.execute(
            "INSERT INTO outbox (topic, key, payload) VALUES ($1, $2, $3::jsonb)",
            topic,
            key or event.key(),
            event.model_dump_json(),
        )
        # Delivered at commit, so the relay never wakes for a row it cannot see yet.
        await connection.execute("SELECT pg_notify($1, '')", self.channel)

    async def _remember_drop(self, connection: Connection, drop: DropSource, track_id: str) -> None:
        await connection.execute(
            "INSERT INTO ingested_objects (source_key, etag, track_id) VALUES ($1, $2, $3) "
            "ON CONFLICT (source_key) DO UPDATE SET etag = EXCLUDED.etag, track_id = EXCLUDED.track_id, "
            "created_at = now()",
            drop.key,
            drop.etag,
            track_id,
        )
        await connection.execute("DELETE FROM rejected_objects WHERE source_key = $1", drop.key)

    # --- status from downstream -------------------------------------------

    async def mark_embedded(self, track_id: str, sha256: str) -> bool:
        """registered (or failed downstream) -> embedded; a vector of other content is stale and ignored."""
        async with self.db.connection() as connection:
            result = await connection.execute(
                "UPDATE tracks SET status = 'embedded', failure_stage = NULL, failure_reason = NULL, "
                "updated_at = now() WHERE id = $1 AND sha256 = $2 AND "
                "(status = 'registered' OR (status = 'failed' AND failure_stage = ANY($3::text[])))",
                track_id,
                sha256,
                list(_DOWNSTREAM_STAGES),
            )
        return result.endswith(" 1")

    async def mark_failed(self, track_id: str, stage: str, reason: str) -> bool:
        """A downstream stage gave up on a track; an indexed or removed track keeps its status."""
        if stage not in _DOWNSTREAM_STAGES:
            return False
        kind = reason.partition(": ")[0]
        # The reason as it came is for operators; the row, which the public /tracks shows, gets a code.
        log.info("track %s failed at %s: %s", track_id, stage, reason[:2000].replace("\x00", ""))
        async with self.db.connection() as connection:
            result = await connection.execute(
                "UPDATE tracks SET status = 'failed', failure_stage = $2, failure_reason = $3, updated_at = now() "
                "WHERE id = $1 AND status IN ('registered', 'embedded')",
                track_id,
                stage,
                public_reason(kind, stage),
            )
        return result.endswith(" 1")

    async def mark_indexed(self, track_ids: list[str], version: str) -> int:
        """Tracks found in a snapshot become indexed; ``snapshot_version`` is the first snapshot that held them."""
        async with self.db.connection() as connection:
            # The seconds since each track's last announcement: how long upload (or re-announcement)
            # to searchable took, the freshness an operator alerts on.
            waited = await connection.fetch(
                "UPDATE tracks SET status = 'indexed', snapshot_version = $2, failure_stage = NULL, "
                "failure_reason = NULL, updated_at = now() "
                "WHERE id = ANY($1::text[]) AND status IN ('registered', 'embedded', 'failed') "
                "RETURNING extract(epoch FROM now() - announced_at)::float8 AS seconds",
                track_ids,
                version,
            )
        for row in waited:
            metrics.ANNOUNCED_TO_INDEXED.observe(max(0.0, float(row["seconds"])))
        return len(waited)

    async def unmark_missing(self, in_snapshot: list[str], version: str) -> int:
        """Tracks marked indexed that the current snapshot ``version`` does not hold go back to registered
        (with their old announcement time, so the reconciler's next pass announces them); returns how many.

        Counting first keeps the usual case cheap: a snapshot holds every indexed track, so unless the
        registry counts more indexed tracks than the snapshot has ids, nothing can be missing.
        """
        async with self.db.transaction() as connection:
            indexed = await connection.fetchval("SELECT count(*) FROM tracks WHERE status = 'indexed'")
            if int(indexed) <= len(set(in_snapshot)):
                return 0
            result = await connection.execute(
                "UPDATE tracks SET status = 'registered', snapshot_version = NULL, updated_at = now() "
                "WHERE status = 'indexed' AND (snapshot_version IS NULL OR snapshot_version <> $2) "
                "AND NOT EXISTS (SELECT 1 FROM unnest($1::text[]) AS held(id) WHERE held.id = tracks.id)",
                in_snapshot,
                version,
            )
        return int(result.rsplit(" ", 1)[-1])

    async def reannounce_stale(self, grace_s: float, limit: int) -> list[str]:
        """Queue TrackAdded again for tracks not indexed ``grace_s`` after their last announcement, oldest first.

        A track a downstream stage gave up on only because a dependency stayed down
        past its retries (``transient_exhausted``: S3 unreachable, say) counts as not
        indexed too: the outage ends, the audio has not changed, so it is tried
        again every grace period instead of staying failed for ever. Failures that
        say something about the audio itself (undecodable, silent) stay failed.
        """
        async with self.db.transaction() as connection:
            rows = await connection.fetch(
                "WITH stale AS ("
                " SELECT id FROM tracks WHERE (status IN ('registered', 'embedded')"
                "  OR (status = 'failed' AND failure_stage = ANY($3::text[]) AND failure_reason LIKE $4))"
                " AND announced_at < now() - make_interval(secs => $1)"
                " ORDER BY announced_at LIMIT $2 FOR UPDATE SKIP LOCKED) "
                "UPDATE tracks SET announced_at = now() FROM stale WHERE tracks.id = stale.id RETURNING tracks.*",
                grace_s,
                limit,
                list(_DOWNSTREAM_STAGES),
                f"{TRANSIENT_EXHAUSTED}:%",
            )
            for row in rows:
                await self._enqueue(connection, TRACKS_ADDED, added_event(row, "reconcile"))
        return [row["id"] for row in rows]

    # --- reading ------------------------------------------------------------

    async def status(self, track_id: str) -> TrackStatus | None:
        async with self.db.connection() as connection:
            row = await connection.fetchrow(
                "SELECT id, status, dataset, sha256, audio_uri, snapshot_version, failure_stage, failure_reason, "
                "created_at, updated_at FROM tracks WHERE id = $1",
                track_id,
            )
        if row is None:
            return None
        return TrackStatus(track_id=row["id"], **{k: v for k, v in dict(row).items() if k != "id"})

    async def existing_content(self, sha256: str) -> Registration | None:
        """The live track holding this content, if any (a removed or rejected one does not count)."""
        async with self.db.connection() as connection:
            row = await connection.fetchrow(
                "SELECT id, status, failure_stage, duration_s FROM tracks WHERE sha256 = $1", sha256
            )
        if (
            row is None
            or row["status"] == "removed"
            or (row["status"] == "failed" and row["failure_stage"] == "ingest")
        ):
            return None
        return Registration(row["id"], row["status"], announced=False, existing=True, duration_s=row["duration_s"])

    async def settled_drops(self, objects: list[DropSource]) -> set[str]:
        """Keys among ``objects`` already ingested, or rejected in the same version (etag)."""
        if not objects:
            return set()
        async with self.db.connection() as connection:
            rows = await connection.fetch(
                "SELECT o.key FROM unnest($1::text[], $2::text[]) AS o(key, etag) "
                "WHERE EXISTS (SELECT 1 FROM ingested_objects i WHERE i.source_key = o.key "
                "              AND (o.etag IS NULL OR i.etag IS NULL OR i.etag = o.etag)) "
                "   OR EXISTS (SELECT 1 FROM rejected_objects r WHERE r.source_key = o.key AND r.etag = o.etag)",
                [o.key for o in objects],
                [o.etag for o in objects],
            )
        return {row["key"] for row in rows}

    async def drop_state(self, key: str) -> DropObjectState:
        async with self.db.connection() as connection:
            ingested = await connection.fetchval("SELECT track_id FROM ingested_objects WHERE source_key = $1", key)
            if ingested is not None:
                return DropObjectState(key=key, state="ingested", track_id=ingested)
            reason = await connection.fetchval("SELECT reason FROM rejected_objects WHERE source_key = $1", key)
        if reason is not None:
            return DropObjectState(key=key, state="rejected", reason=reason)
        return DropObjectState(key=key, state="unknown")

    async def pending_events(self) -> int:
        async with self.db.connection() as connection:
            return int(await connection.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"))


def _writer(row: asyncpg.Record | dict[str, Any]) -> str:
    return "an API upload" if row["source_key"] is None else f"a drop of dataset {row['dataset']!r}"


async def undo_keep(registry: TrackRegistry, store: AudioStore, audio: StoredAudio) -> None:
    """Delete the audio object a failed registration's caller created, unless a live track holds the
    content by now (a concurrent upload of the same bytes may have registered it meanwhile)."""
    try:
        holder = await registry.existing_content(audio.sha256)
    except Exception:  # noqa: BLE001 - Postgres down is why we are here; then nobody registered it either
        holder = None
    if holder is None:
        await store.forget(audio.audio_uri)


async def erase_objects(registry: TrackRegistry, store: AudioStore, track_id: str) -> bool:
    """Erase a removed track's audio and waveform and record it; False when the track is not removed.
    An S3 failure propagates and leaves the erasure due, for the reconciler to finish."""
    async with registry.erasing(track_id) as removed:
        if removed is None:
            return False
        await store.erase(removed.track_id, removed.audio_uri)
    return True
