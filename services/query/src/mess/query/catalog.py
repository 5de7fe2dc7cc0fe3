"""Reading the track registry (the ``tracks`` table that ingest owns).

The query service never writes here. Reads go through a bounded asyncpg pool
whose acquire has a timeout: when every connection is busy the request gets a
503 quickly instead of queueing without end. Track rows are kept in a bounded
in-process cache with a short expiry (also cleared at every snapshot swap),
because recommendations ask for the same popular tracks over and over.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from pydantic import BaseModel, ConfigDict

from mess.contracts.ids import is_track_id
from mess.query.filters import TrackFilters
from mess.query.metrics import QueryMetrics

log = logging.getLogger(__name__)

_COLUMNS = (
    "id, dataset, title, composer, composer_full, work, movement, era, form, key, instrument, performer, "
    "year, duration_s, tags, status, snapshot_version, failure_stage, failure_reason, audio_uri, created_at"
)


class CatalogBusyError(Exception):
    """No Postgres connection freed up within the acquire timeout."""


class CatalogUnavailableError(Exception):
    """Postgres cannot be reached, or the registry tables do not exist yet."""


class BadCursorError(ValueError):
    pass


class TrackRecord(BaseModel):
    """One row of ``tracks`` as the API shows it."""

    model_config = ConfigDict(frozen=True)

    id: str
    dataset: str
    title: str | None = None
    composer: str | None = None
    composer_full: str | None = None
    work: str | None = None
    movement: str | None = None
    era: str | None = None
    form: str | None = None
    key: str | None = None
    instrument: str | None = None
    performer: str | None = None
    year: int | None = None
    duration_s: float | None = None
    tags: list[str] = []
    status: str
    snapshot_version: str | None = None
    failure_stage: str | None = None
    failure_reason: str | None = None
    audio_uri: str
    created_at: datetime | None = None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> TrackRecord:
        values = dict(row)
        values["tags"] = list(values.get("tags") or [])
        return cls.model_validate(values)


class TrackFilter(BaseModel):
    composer: str | None = None
    dataset: str | None = None
    era: str | None = None
    text: str | None = None
    status: str | None = None


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode("utf-8")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        last_id = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise BadCursorError(f"cursor {cursor!r} is not one this API handed out") from exc
    if not is_track_id(last_id):
        raise BadCursorError(f"cursor {cursor!r} is not one this API handed out")
    return last_id


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class _TrackCache:
    """An LRU with expiry; ``None`` values remember that a track does not exist."""

    def __init__(self, size: int, ttl_s: float) -> None:
        self._size = size
        self._ttl = ttl_s
        self._entries: OrderedDict[str, tuple[float, TrackRecord | None]] = OrderedDict()

    def get(self, track_id: str) -> tuple[bool, TrackRecord | None]:
        entry = self._entries.get(track_id)
        if entry is None:
            return False, None
        expires, record = entry
        if expires < time.monotonic():
            del self._entries[track_id]
            return False, None
        self._entries.move_to_end(track_id)
        return True, record

    def put(self, track_id: str, record: TrackRecord | None) -> None:
        if self._size <= 0 or self._ttl <= 0:
            return
        self._entries[track_id] = (time.monotonic() + self._ttl, record)
        self._entries.move_to_end(track_id)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


class TrackCatalog:
    def __init__(
        self,
        pool: asyncpg.Pool,
        metrics: QueryMetrics,
        acquire_timeout_s: float,
        cache_size: int,
        cache_ttl_s: float,
    ) -> None:
        self.pool = pool
        self._metrics = metrics
        self._acquire_timeout = acquire_timeout_s
        self._cache = _TrackCache(cache_size, cache_ttl_s)

    def forget_cached(self) -> None:
        self._cache.clear()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[PoolConnectionProxy]:
        try:
            connection = await self.pool.acquire(timeout=self._acquire_timeout)
        except TimeoutError as exc:
            self._metrics.pg_busy.inc()
            raise CatalogBusyError(
                f"the track registry is busy: no database connection freed up within {self._acquire_timeout:g}s"
            ) from exc
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise CatalogUnavailableError("the track registry is unreachable") from exc
        try:
            yield connection
        except asyncpg.UndefinedTableError as exc:
            raise CatalogUnavailableError("the track registry has no tracks table yet (ingest creates it)") from exc
        except (TimeoutError, asyncpg.QueryCanceledError) as exc:
            raise CatalogUnavailableError("the track registry did not answer in time") from exc
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
            raise CatalogUnavailableError("the track registry connection failed") from exc
        finally:
            try:
                await self.pool.release(connection)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # The rows are already read; a connection that fails to go back is
                # closed by the pool, and this request's answer stands.
                log.warning("Postgres connection not returned cleanly to the pool: %r", exc)

    async def ping(self) -> bool:
        try:
            async with self._connection() as connection:
                await connection.fetchval("SELECT 1")
        except (CatalogBusyError, CatalogUnavailableError, asyncpg.PostgresError, TimeoutError):
            return False
        return True

    async def get(self, track_id: str) -> TrackRecord | None:
        found = await self.get_many([track_id])
        return found.get(track_id)

    async def get_many(self, track_ids: Iterable[str]) -> dict[str, TrackRecord]:
        """Rows for the ids that exist (any status), from the cache where possible."""
        found: dict[str, TrackRecord] = {}
        missing: list[str] = []
        for track_id in dict.fromkeys(track_ids):
            hit, record = self._cache.get(track_id)
            if hit:
                if record is not None:
                    found[track_id] = record
            else:
                missing.append(track_id)
        hits = len(found)
        self._metrics.metadata_cache.labels("hit").inc(hits)
        if not missing:
            return found
        self._metrics.metadata_cache.labels("miss").inc(len(missing))
        async with self._connection() as connection:
            rows = await connection.fetch(f"SELECT {_COLUMNS} FROM tracks WHERE id = ANY($1::text[])", missing)  # noqa: S608 - constant columns
        fetched = {row["id"]: TrackRecord.from_row(row) for row in rows}
        for track_id in missing:
            record = fetched.get(track_id)
            self._cache.put(track_id, record)
            if record is not None:
                found[track_id] = record
        return found

    async def list(self, filters: TrackFilter, limit: int, cursor: str | None) -> tuple[list[TrackRecord], str | None]:
        """One page of tracks in id order; the cursor is the last id of the previous page."""
        clauses: list[str] = []
        args: list[object] = []

        def arg(value: object) -> str:
            args.append(value)
            return f"${len(args)}"

        if filters.status is not None:
            clauses.append(f"status = {arg(filters.status)}")
        else:
            clauses.append("status <> 'removed'")
        if filters.composer is not None:
            clauses.append(f"lower(composer) = lower({arg(filters.composer)})")
        if filters.dataset is not None:
            clauses.append(f"dataset = {arg(filters.dataset)}")
        if filters.era is not None:
            clauses.append(f"lower(era) = lower({arg(filters.era)})")
        if filters.text is not None:
            pattern = arg(_like_pattern(filters.text))
            fields = ("title", "composer", "composer_full", "work", "movement", "performer", "instrument")
            searched = [f"{name} ILIKE {pattern}" for name in fields]
            searched.append(f"array_to_string(tags, ' ') ILIKE {pattern}")
            clauses.append("(" + " OR ".join(searched) + ")")
        if cursor is not None:
            clauses.append(f"id > {arg(decode_cursor(cursor))}")
        query = (
            f"SELECT {_COLUMNS} FROM tracks WHERE {' AND '.join(clauses)} "  # noqa: S608 - values are bound arguments
            f"ORDER BY id LIMIT {arg(limit + 1)}"
        )
        async with self._connection() as connection:
            rows = await connection.fetch(query, *args)
        records = [TrackRecord.from_row(row) for row in rows[:limit]]
        next_cursor = encode_cursor(records[-1].id) if len(rows) > limit and records else None
        return records, next_cursor

    async def matching_ids(self, filters: TrackFilters, limit: int) -> tuple[str, ...]:
        """Ids of the tracks that match, at most ``limit`` of them (ask for one more than you can use to learn
        whether there are more)."""
        args: list[object] = []

        def arg(value: object) -> str:
            args.append(value)
            return f"${len(args)}"

        where = " AND ".join(filters.sql(arg))
        query = f"SELECT id FROM tracks WHERE {where} LIMIT {arg(limit)}"  # noqa: S608 - values are bound arguments
        async with self._connection() as connection:
            rows = await connection.fetch(query, *args)
        return tuple(str(row["id"]) for row in rows)

    async def matching_among(self, filters: TrackFilters, track_ids: Sequence[str]) -> set[str]:
        """Which of ``track_ids`` match (the same predicate as ``matching_ids``)."""
        if not track_ids:
            return set()
        args: list[object] = [list(track_ids)]

        def arg(value: object) -> str:
            args.append(value)
            return f"${len(args)}"

        where = " AND ".join(["id = ANY($1::text[])", *filters.sql(arg)])
        async with self._connection() as connection:
            rows = await connection.fetch(f"SELECT id FROM tracks WHERE {where}", *args)  # noqa: S608 - bound values
        return {str(row["id"]) for row in rows}
