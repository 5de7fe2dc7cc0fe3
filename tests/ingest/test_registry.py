"""The track registry and its migrations against the real Postgres (no service running)."""

import hashlib
from collections.abc import AsyncIterator

import pytest

from mess.contracts.events import TrackFailed, TrackMetadata
from mess.ingest.audio import AudioFacts
from mess.ingest.db import Database, apply_migrations, migration_files, open_database
from mess.ingest.registry import (
    DropSource,
    RejectedContent,
    StoredAudio,
    TrackCandidate,
    TrackRegistry,
    UnstorableTrackError,
)
from mess.runtime.endpoints import StackSettings

from .service_harness import connect_db

FACTS = AudioFacts(format="WAV", extension="wav", duration_s=3.0, sample_rate=44100, channels=2, peak=0.7)


def candidate(content: str, track_id: str | None = None, dataset: str = "upload") -> TrackCandidate:
    sha256 = hashlib.sha256(content.encode()).hexdigest()
    return TrackCandidate(
        track_id=track_id or sha256[:32],
        dataset=dataset,
        metadata=TrackMetadata(title=content, tags=["a", "b"]),
        audio=StoredAudio(sha256=sha256, audio_uri=f"s3://bucket/audio/{sha256}.wav", size_bytes=10, facts=FACTS),
    )


@pytest.fixture
async def registry(stack: StackSettings) -> AsyncIterator[TrackRegistry]:
    await apply_migrations(stack)
    db: Database = await open_database(stack, min_size=0, max_size=2, acquire_timeout_s=5, command_timeout_s=10)
    try:
        yield TrackRegistry(db, stack.postgres_schema)
    finally:
        await db.pool.close()


async def outbox_topics(stack: StackSettings) -> list[str]:
    connection = await connect_db(stack)
    try:
        return [row["topic"] for row in await connection.fetch("SELECT topic FROM outbox ORDER BY id")]
    finally:
        await connection.close()


async def test_migrations_create_the_schema_and_apply_once(stack: StackSettings) -> None:
    assert await apply_migrations(stack) == [name for name, _ in migration_files()]
    assert await apply_migrations(stack) == []
    connection = await connect_db(stack)
    try:
        tables = {
            r["tablename"]
            for r in await connection.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = $1", stack.postgres_schema
            )
        }
    finally:
        await connection.close()
    assert {"tracks", "outbox", "rejected_objects", "ingested_objects", "schema_migrations"} <= tables


async def test_registering_writes_track_and_event_together_and_only_once(
    stack: StackSettings, registry: TrackRegistry
) -> None:
    first = await registry.register(candidate("one"))
    again = await registry.register(candidate("one", track_id="some-other-id", dataset="s3"))
    assert (first.announced, first.existing) == (True, False)
    assert (again.track_id, again.announced, again.existing) == (first.track_id, False, True)
    assert await outbox_topics(stack) == ["mess.tracks.added.v1"]


async def test_a_failed_insert_leaves_no_event(stack: StackSettings, registry: TrackRegistry) -> None:
    # Refused before the transaction, as a permanent error of the input (the id CHECK would refuse it too).
    with pytest.raises(UnstorableTrackError):
        await registry.register(candidate("bad", track_id="Not A Valid Id"))
    assert await outbox_topics(stack) == []


async def test_removed_track_revives_and_changed_dataset_file_replaces_content(
    stack: StackSettings, registry: TrackRegistry
) -> None:
    original = await registry.register(candidate("v1", track_id="smd-piece-0123456789ab", dataset="smd"))
    assert await registry.remove(original.track_id) is not None
    revived = await registry.register(candidate("v1", track_id="smd-piece-0123456789ab", dataset="smd"))
    assert (revived.status, revived.announced) == ("registered", True)

    replaced = await registry.register(candidate("v2", track_id="smd-piece-0123456789ab", dataset="smd"))
    assert (replaced.track_id, replaced.announced) == ("smd-piece-0123456789ab", True)
    status = await registry.status("smd-piece-0123456789ab")
    assert status is not None
    assert status.sha256 == hashlib.sha256(b"v2").hexdigest()
    assert await outbox_topics(stack) == [
        "mess.tracks.added.v1",
        "mess.tracks.removed.v1",
        "mess.tracks.added.v1",
        "mess.tracks.added.v1",
    ]


async def test_rejected_object_is_settled_until_it_changes(stack: StackSettings, registry: TrackRegistry) -> None:
    drop = DropSource("drop/bad.wav", "etag-1")
    letter = TrackFailed(track_id="abc", stage="ingest", error_kind="silent", error="drop/bad.wav: silent")
    content = RejectedContent("abc", "0" * 64, "s3://b/drop/bad.wav", "s3", TrackMetadata(), 5)
    await registry.record_rejected_drop(
        drop, letter, content, reason="silent: silent", letter_key="s3://b/drop/bad.wav"
    )
    assert await registry.settled_drops([drop]) == {"drop/bad.wav"}
    assert await registry.settled_drops([DropSource("drop/bad.wav", "etag-2")]) == set()  # fixed in place
    status = await registry.status("abc")
    assert status is not None and (status.status, status.failure_stage) == ("failed", "ingest")

    # Fixed content is new content (a new id); the object is now ingested, no longer rejected.
    fixed = await registry.register(candidate("fixed"), DropSource("drop/bad.wav", "etag-2"))
    state = await registry.drop_state("drop/bad.wav")
    assert (state.state, state.track_id) == ("ingested", fixed.track_id)
