"""The track registry: the only code that writes ``tracks`` and ``outbox``.

Every way audio comes in (upload, S3 drop, reconcile scan) ends in
``TrackRegistry.register``: the track row and the outbox row holding its
TrackAdded are written in one transaction, so an event exists exactly when
the track does. Registration is idempotent by content: the same bytes give
the same track and no second event. The status consumer and the reconciler
move tracks through ``registered -> embedded -> indexed`` (or ``failed``)
here too, so every rule about statuses lives in one file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import asyncpg
from pydantic import BaseModel

from mess.contracts.events import TRANSIENT_EXHAUSTED, Event, TrackAdded, TrackFailed, TrackMetadata, TrackRemoved
from mess.contracts.topics import TRACKS_ADDED, TRACKS_FAILED, TRACKS_REMOVED
from mess.ingest.audio import AudioFacts

if TYPE_CHECKING:
    from mess.ingest.db import Connection, Database

log = logging.getLogger(__name__)

TrackStatusName = Literal["registered", "embedded", "indexed", "failed", "removed"]
# One column per TrackMetadata field; tags are an array column handled on their own.
_METADATA_COLUMNS = tuple(name for name in TrackMetadata.model_fields if name != "tags")
# Stages whose failures other services report; ingest records its own directly.
_DOWNSTREAM_STAGES = ("embed", "index")


def outbox_channel(schema: str) -> str:
    """The NOTIFY channel that wakes the relay of this schema (channels are database-wide)."""
    return f"mess_outbox_{schema}"


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

    async def register(self, candidate: TrackCandidate, drop: DropSource | None = None) -> Registration:
        """Register audio as a track and queue its TrackAdded, in one transaction; idempotent by sha256."""
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
            # Removed (or once rejected) content sent again comes back under its old id.
            row = await self._overwrite(connection, same_content["id"], values)
            await self._enqueue(connection, TRACKS_ADDED, added_event(row, "new"))
            return Registration(row["id"], "registered", announced=True, existing=True)
        # The id is taken by other content: a dataset file changed at the same path. The new audio replaces it.
        same_id = await connection.fetchrow("SELECT id FROM tracks WHERE id = $1 FOR UPDATE", candidate.track_id)
        if same_id is None:
            raise RuntimeError(f"track {candidate.track_id} conflicted on insert but no row holds its id or content")
        row = await self._overwrite(connection, candidate.track_id, values)
        await self._enqueue(connection, TRACKS_ADDED, added_event(row, "replaced"))
        log.info("track %s now holds new audio %s", candidate.track_id, candidate.audio.sha256)
        return Registration(row["id"], "registered", announced=True, existing=True)

    async def _overwrite(self, connection: Connection, track_id: str, values: dict[str, Any]) -> asyncpg.Record:
        updates = {k: v for k, v in values.items() if k != "id"}
        assignments = ", ".join(f"{column} = ${i}" for i, column in enumerate(updates, start=2))
        row = await connection.fetchrow(
            f"UPDATE tracks SET {assignments}, status = 'registered', snapshot_version = NULL, "  # noqa: S608
            "failure_stage = NULL, failure_reason = NULL, announced_at = now(), updated_at = now() "
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
    ) -> None:
        """A dropped object that is not acceptable audio: remembered (so it is not retried until it changes),
        shown as a failed track when its content and id are known, and dead-lettered, in one transaction."""
        async with self.db.transaction() as connection:
            await connection.execute(
                "INSERT INTO rejected_objects (source_key, etag, reason) VALUES ($1, $2, $3) "
                "ON CONFLICT (source_key) DO UPDATE SET etag = EXCLUDED.etag, reason = EXCLUDED.reason, "
                "created_at = now()",
                drop.key,
                drop.etag,
                f"{dead_letter.error_kind}: {dead_letter.error}",
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
                    f"{dead_letter.error_kind}: {dead_letter.error}",
                )
            await self._enqueue(connection, TRACKS_FAILED, dead_letter)

    async def record_dead_letter(self, dead_letter: TrackFailed) -> None:
        """Queue a dead letter through the outbox, so it survives a broker outage like any event."""
        async with self.db.transaction() as connection:
            await self._enqueue(connection, TRACKS_FAILED, dead_letter)

    async def remove(self, track_id: str, reason: str | None = None) -> Removal | None:
        """Mark a track removed and queue TrackRemoved; None when no such track exists."""
        async with self.db.transaction() as connection:
            status = await connection.fetchval("SELECT status FROM tracks WHERE id = $1 FOR UPDATE", track_id)
            if status is None:
                return None
            if status == "removed":
                return Removal(track_id, already_removed=True)
            await connection.execute("UPDATE tracks SET status = 'removed', updated_at = now() WHERE id = $1", track_id)
            await self._enqueue(connection, TRACKS_REMOVED, TrackRemoved(track_id=track_id, reason=reason))
        return Removal(track_id, already_removed=False)

    async def _enqueue(self, connection: Connection, topic: str, event: Event) -> None:
        await connection.execute(
            "INSERT INTO outbox (topic, key, payload) VALUES ($1, $2, $3::jsonb)",
            topic,
            event.key(),
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
        async with self.db.connection() as connection:
            result = await connection.execute(
                "UPDATE tracks SET status = 'failed', failure_stage = $2, failure_reason = $3, updated_at = now() "
                "WHERE id = $1 AND status IN ('registered', 'embedded')",
                track_id,
                stage,
                # Postgres text cannot hold NUL; a reason is for people, so it is dropped rather than refused.
                reason.replace("\x00", "")[:4000],
            )
        return result.endswith(" 1")

    async def mark_indexed(self, track_ids: list[str], version: str) -> int:
        """Tracks found in a snapshot become indexed; ``snapshot_version`` is the first snapshot that held them."""
        async with self.db.connection() as connection:
            result = await connection.execute(
                "UPDATE tracks SET status = 'indexed', snapshot_version = $2, failure_stage = NULL, "
                "failure_reason = NULL, updated_at = now() "
                "WHERE id = ANY($1::text[]) AND status IN ('registered', 'embedded', 'failed')",
                track_ids,
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
