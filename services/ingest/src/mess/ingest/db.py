"""Postgres: the schema migrations applied at start, and the bounded connection pool.

Migrations are the numbered ``migrations/*.sql`` files, applied once each in
name order inside the schema named by ``MESS_POSTGRES_SCHEMA`` (created when
missing) and recorded in ``schema_migrations``. A session advisory lock makes
replicas that start together apply them one at a time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import TYPE_CHECKING, TypeAlias

import asyncpg

from mess.runtime.endpoints import StackSettings

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # What the registry's functions take: a pooled connection or a plain one (the relay's own).
    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT_S = 10.0


def migration_files() -> list[tuple[str, str]]:
    """(name, SQL) of every migration, in the order they apply."""
    folder = resources.files("mess.ingest").joinpath("migrations")
    found = [
        (entry.name, entry.read_text(encoding="utf-8")) for entry in folder.iterdir() if entry.name.endswith(".sql")
    ]
    return sorted(found)


def _quoted(schema: str) -> str:
    # StackSettings restricts the schema to [a-z_][a-z0-9_]*, so quoting is all it needs.
    return f'"{schema}"'


async def apply_migrations(stack: StackSettings) -> list[str]:
    """Create the schema if missing and apply what has not been applied; returns the names applied now."""
    connection = await asyncpg.connect(stack.postgres_dsn, timeout=_CONNECT_TIMEOUT_S)
    lock_key = f"mess.ingest.migrations:{stack.postgres_schema}"
    try:
        await connection.execute("SELECT pg_advisory_lock(hashtext($1))", lock_key)
        try:
            await connection.execute(f"CREATE SCHEMA IF NOT EXISTS {_quoted(stack.postgres_schema)}")
            await connection.execute(f"SET search_path TO {_quoted(stack.postgres_schema)}")
            await connection.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row["name"] for row in await connection.fetch("SELECT name FROM schema_migrations")}
            applied = []
            for name, sql in migration_files():
                if name in done:
                    continue
                async with connection.transaction():
                    await connection.execute(sql)
                    await connection.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
                applied.append(name)
                log.info("applied migration %s in schema %s", name, stack.postgres_schema)
            return applied
        finally:
            await connection.execute("SELECT pg_advisory_unlock(hashtext($1))", lock_key)
    finally:
        await connection.close()


class Database:
    """The bounded pool; every acquire has a timeout so a saturated pool answers 503, not a hang."""

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record], acquire_timeout_s: float) -> None:
        self.pool = pool
        self.acquire_timeout_s = acquire_timeout_s

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[PoolConnectionProxy[asyncpg.Record]]:
        async with self.pool.acquire(timeout=self.acquire_timeout_s) as connection:
            yield connection

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PoolConnectionProxy[asyncpg.Record]]:
        async with self.connection() as connection, connection.transaction():
            yield connection

    async def answers(self, timeout_s: float = 2.0) -> bool:
        try:
            async with self.pool.acquire(timeout=timeout_s) as connection:
                return bool(await connection.fetchval("SELECT true", timeout=timeout_s))
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False


async def open_database(
    stack: StackSettings, *, min_size: int, max_size: int, acquire_timeout_s: float, command_timeout_s: float
) -> Database:
    pool = await asyncpg.create_pool(
        stack.postgres_dsn,
        min_size=min_size,
        max_size=max_size,
        timeout=_CONNECT_TIMEOUT_S,
        command_timeout=command_timeout_s,
        server_settings={"search_path": stack.postgres_schema},
    )
    return Database(pool, acquire_timeout_s)
