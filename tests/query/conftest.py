"""Fixtures for the query service: a registry in this test's Postgres schema,
a catalogue of tracks with vectors, and the app running in-process against the
test's real endpoints (httpx over ASGI, lifespan included)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import numpy as np
import pytest

from mess.query.config import Settings
from mess.query.main import create_app
from mess.query.resources import Resources
from mess.runtime.endpoints import StackSettings

from .snapshot_writer import FloatMatrix, ShardInput, SnapshotWriter, unit_rows

ROOT = Path(__file__).resolve().parents[2]
MIGRATION = ROOT / "services/ingest/src/mess/ingest/migrations/0001_tracks.sql"

COMPOSERS = ["Bach", "Mozart", "Chopin", "Debussy"]
ERAS = ["Baroque", "Classical", "Romantic", "Impressionist"]
FORMS = ["fugue", "sonata", "nocturne", "prelude"]


@dataclass
class Catalogue:
    """Tracks in families: each family shares a composer and sits around one direction."""

    ids: list[str]
    vectors: FloatMatrix
    rows: list[dict[str, Any]]

    def shards(self, count: int, index_factory: str = "Flat") -> list[ShardInput]:
        return [
            ShardInput(ids=self.ids[i::count], vectors=self.vectors[i::count], index_factory=index_factory)
            for i in range(count)
        ]

    def expected_neighbours(self, track_id: str, k: int, vectors: FloatMatrix | None = None) -> list[str]:
        """Brute-force top k by inner product, the reference itself excluded."""
        matrix = self.vectors if vectors is None else vectors
        position = self.ids.index(track_id)
        scores = matrix @ matrix[position]
        order = [i for i in np.argsort(-scores, kind="stable") if i != position]
        return [self.ids[i] for i in order[:k]]


def build_catalogue(families: int = 4, per_family: int = 15, dim: int = 16, seed: int = 0) -> Catalogue:
    rng = np.random.default_rng(seed)
    centres = unit_rows(rng.normal(size=(families, dim)))
    ids, vectors, rows = [], [], []
    for family in range(families):
        for member in range(per_family):
            track_id = f"{COMPOSERS[family % 4].lower()}-{family:02d}-{member:03d}"
            ids.append(track_id)
            vectors.append(centres[family] + rng.normal(scale=0.35, size=dim))
            rows.append(
                track_row(
                    track_id,
                    title=f"{FORMS[family % 4].title()} no. {member + 1}",
                    composer=COMPOSERS[family % 4],
                    era=ERAS[family % 4],
                    form=FORMS[family % 4],
                )
            )
    return Catalogue(ids, unit_rows(np.array(vectors)), rows)


def track_row(track_id: str, status: str = "indexed", **fields: Any) -> dict[str, Any]:
    sha = hashlib.sha256(track_id.encode()).hexdigest()
    return {
        "id": track_id,
        "sha256": sha,
        "audio_uri": f"s3://placeholder/audio/{sha[:2]}/{sha}.wav",
        "dataset": fields.pop("dataset", "demo"),
        "status": status,
        **fields,
    }


async def apply_registry(stack: StackSettings) -> None:
    """The ingest migration, read from its file (the query service never creates tables)."""
    connection = await asyncpg.connect(stack.postgres_dsn)
    try:
        await connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{stack.postgres_schema}"')
        await connection.execute(f'SET search_path TO "{stack.postgres_schema}"')
        await connection.execute(MIGRATION.read_text(encoding="utf-8"))
    finally:
        await connection.close()


async def insert_tracks(stack: StackSettings, rows: list[dict[str, Any]]) -> None:
    connection = await asyncpg.connect(stack.postgres_dsn, server_settings={"search_path": stack.postgres_schema})
    try:
        for row in rows:
            columns = list(row)
            placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
            await connection.execute(
                f"INSERT INTO tracks ({', '.join(columns)}) VALUES ({placeholders})", *row.values()
            )
    finally:
        await connection.close()


async def eventually(check: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    """Wait for state that a background task changes (a swap, a refusal, a connection)."""
    steps = int(timeout_s / 0.05)
    for _ in range(steps):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@dataclass
class RunningQuery:
    client: httpx.AsyncClient
    resources: Resources
    settings: Settings

    async def wait_for_version(self, version: str, timeout_s: float = 20.0) -> None:
        await self.resources.follower.wait_for_version(version, timeout_s)

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.resources.metrics.registry.get_sample_value(name, labels or {})
        return float(value or 0.0)


StartQuery = Callable[..., AbstractAsyncContextManager[RunningQuery]]


@pytest.fixture
def query_settings(stack: StackSettings, tmp_path: Path) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "stack": stack,
            "snapshot_cache_dir": tmp_path / "snapshots",
            "snapshot_poll_s": 30.0,
            "broker_retry_s": 0.5,
            **overrides,
        }
        return Settings(**values)

    return build


@pytest.fixture
def start_query(query_settings: Callable[..., Settings]) -> StartQuery:
    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[RunningQuery]:
        settings = query_settings(**overrides)
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://query.test") as client:
                yield RunningQuery(client, app.state.resources, settings)

    return start


@pytest.fixture
def catalogue() -> Catalogue:
    return build_catalogue()


@pytest.fixture
def writer(stack: StackSettings) -> SnapshotWriter:
    return SnapshotWriter(stack)
