"""The live indexer through the real broker and S3 endpoint: upserts, removals,
ordering by registry sequence, embeddings checked against the registered
content, the model guard and poison messages."""

import asyncio
import time
from datetime import UTC, datetime

import numpy as np

from mess.contracts.events import SnapshotPublished
from mess.dev.stack import create_topics, delete_topics
from mess.indexer.sharding import shard_of
from mess.runtime.endpoints import StackSettings

from .indexer_harness import (
    DSP,
    MERT,
    added,
    at,
    consumed_everything,
    content,
    dead_letters,
    embedded,
    indexer_settings,
    next_registry_sequence,
    producer,
    read_back,
    read_topic,
    removed,
    running,
    send_raw,
    snapshot_ids,
    snapshot_store,
    unit_vector,
    wait_for_snapshot,
    wait_until,
)


async def test_first_start_publishes_the_known_empty_snapshot(stack: StackSettings) -> None:
    store = snapshot_store(stack)
    async with running(indexer_settings(stack)) as indexer:
        assert await indexer.readiness() == {"snapshot_loaded": True, "consuming": True, "publishing": True}
    latest = store.read_latest()
    assert latest is not None and latest.version == "000000000001"
    manifest = store.read_manifest(latest.version).manifest
    assert (manifest.vector_count, manifest.model, manifest.dim, manifest.shards) == (0, None, None, [])
    (event,) = await read_topic(stack, stack.topics.index_snapshots, SnapshotPublished, 1)
    assert event.version == "000000000001" and event.model is None and event.counts.vectors == 0
    assert event.manifest_uri == f"s3://{stack.bucket}/snapshots/000000000001/manifest.json"


async def test_upserts_replace_and_removals_delete(stack: StackSettings) -> None:
    store = snapshot_store(stack)
    async with running(indexer_settings(stack)) as indexer, producer(stack) as send:
        for n in range(20):
            await send(embedded(f"track-{n:02d}", seed=n, when=at(n)))
        first = await wait_for_snapshot(store, lambda s: s.manifest.vector_count == 20, "20 tracks indexed")
        assert first.manifest.model == DSP
        assert sorted(snapshot_ids(store, first.version)) == [f"track-{n:02d}" for n in range(20)]

        for n in range(5):
            await send(embedded(f"track-{n:02d}", seed=100 + n, when=at(100 + n)))
        for n in range(15, 18):
            await send(removed(f"track-{n:02d}", when=at(100)))
        second = await wait_for_snapshot(store, lambda s: s.manifest.vector_count == 17, "3 tracks removed")
        await wait_until(lambda: consumed_everything(indexer), "everything consumed")

    state = read_back(store, second.version)
    assert sorted(state.track_ids()) == [f"track-{n:02d}" for n in range(20) if not 15 <= n < 18]
    for n in range(20):
        if not 15 <= n < 18:
            expected = unit_vector(100 + n if n < 5 else n)
            np.testing.assert_allclose(state.vector(f"track-{n:02d}"), expected, rtol=1e-6)
    # Unchanged shards are referenced from the earlier snapshot, not rebuilt.
    changed = {s.shard for s in second.manifest.shards if s.built_in == second.version}
    reused = [s for s in second.manifest.shards if s.built_in != second.version]
    touched = {shard_of(f"track-{n:02d}", 4) for n in [*range(5), *range(15, 18)]}
    assert changed == touched
    for shard in reused:
        assert shard.index.key.startswith(f"snapshots/{shard.built_in}/")


async def test_facts_are_ordered_by_registry_sequence_across_topics(stack: StackSettings) -> None:
    store = snapshot_store(stack)
    async with running(indexer_settings(stack)) as indexer, producer(stack) as send:
        # Added, then removed (a later sequence): the embedding arriving after the removal is stale.
        await send(added("late-embedding"))
        await send(removed("late-embedding"))
        await send(embedded("late-embedding", seed=1), register=False)
        # A removal with an earlier sequence than the track's TrackAdded is dropped, wherever it lands.
        early = next_registry_sequence()
        await send(embedded("early-removal", seed=2))
        await wait_until(lambda: consumed_everything(indexer), "first events consumed")
        await send(removed("early-removal"), sequence=early)
        await send(embedded("marker", seed=3))
        await wait_until(lambda: consumed_everything(indexer), "everything consumed")
        snapshot = await wait_for_snapshot(store, lambda s: s.manifest.vector_count == 2, "two tracks")
    assert sorted(snapshot_ids(store, snapshot.version)) == ["early-removal", "marker"]


async def test_an_embedding_dated_in_the_year_9999_does_not_outrank_a_later_delete(stack: StackSettings) -> None:
    store = snapshot_store(stack)
    async with running(indexer_settings(stack)) as indexer, producer(stack) as send:
        await send(embedded("far-future", seed=1, when=datetime(9999, 1, 1, tzinfo=UTC)))
        await send(embedded("marker", seed=2))
        await wait_for_snapshot(store, lambda s: s.manifest.vector_count == 2, "both tracks indexed")
        await send(removed("far-future"))  # the DELETE, stamped with today's time
        await wait_until(lambda: consumed_everything(indexer), "the removal consumed")
        snapshot = await wait_for_snapshot(store, lambda s: s.manifest.vector_count == 1, "the removal published")
    assert snapshot_ids(store, snapshot.version) == ["marker"]


async def test_an_embedding_of_other_content_than_registered_is_dead_lettered_not_indexed(
    stack: StackSettings,
) -> None:
    store = snapshot_store(stack)
    async with running(indexer_settings(stack)) as indexer, producer(stack) as send:
        await send(added("track", content(1)))
        await send(embedded("track", seed=1, sha256=content(2)), register=False)
        await send(embedded("marker", seed=2))
        await wait_until(lambda: consumed_everything(indexer), "everything consumed")
        snapshot = await wait_for_snapshot(store, lambda s: s.manifest.vector_count == 1, "the marker")
    assert snapshot_ids(store, snapshot.version) == ["marker"]
    (failed,) = await dead_letters(stack, 1)
    assert (failed.stage, failed.error_kind) == ("index", "content_mismatch")
    assert failed.source_topic == stack.topics.tracks_embedded
    assert content(1) in failed.error and content(2) in failed.error


async def test_a_forged_embedding_of_a_track_never_added_is_dead_lettered_and_its_partition_moves_on(
    stack: StackSettings,
) -> None:
    store = snapshot_store(stack)
    async with running(indexer_settings(stack)) as indexer, producer(stack) as send:
        await send(embedded("forged", seed=1), register=False)
        (failed,) = await dead_letters(stack, 1)
        # The same key, so the same partition, behind the forgery: registered and embedded for real.
        await send(embedded("forged", seed=2))
        snapshot = await wait_for_snapshot(store, lambda s: s.manifest.vector_count == 1, "the real embedding")
        await wait_until(lambda: consumed_everything(indexer), "everything consumed")
    assert snapshot_ids(store, snapshot.version) == ["forged"]
    np.testing.assert_allclose(read_back(store, snapshot.version).vector("forged"), unit_vector(2), rtol=1e-6)
    assert (failed.error_kind, failed.original_key) == ("unregistered_content", "forged")


async def test_a_track_removed_then_added_again_with_new_content_is_indexed_with_it(stack: StackSettings) -> None:
    store = snapshot_store(stack)
    async with running(indexer_settings(stack)) as indexer, producer(stack) as send:
        await send(embedded("track", seed=1, sha256=content(1), when=at(100)))
        await wait_for_snapshot(store, lambda s: s.manifest.vector_count == 1, "the first content")
        await send(removed("track", when=at(200)))
        await wait_for_snapshot(store, lambda s: s.manifest.vector_count == 0, "the removal")
        # Its embedder's clock is behind the removal's: no matter, the registry's sequence says "added again".
        await send(embedded("track", seed=2, sha256=content(2), when=at(150)))
        await wait_until(lambda: consumed_everything(indexer), "everything consumed")
        snapshot = await wait_for_snapshot(store, lambda s: s.manifest.vector_count == 1, "the new content")
    np.testing.assert_allclose(read_back(store, snapshot.version).vector("track"), unit_vector(2), rtol=1e-6)


async def test_a_vector_from_another_model_is_dead_lettered_and_the_index_keeps_its_model(
    stack: StackSettings,
) -> None:
    store = snapshot_store(stack)
    async with running(indexer_settings(stack)) as indexer, producer(stack) as send:
        await send(embedded("dsp-track", seed=1))
        await send(embedded("mert-track", seed=2, model=MERT))
        await send(embedded("dsp-track-2", seed=3))
        snapshot = await wait_for_snapshot(store, lambda s: s.manifest.vector_count == 2, "two dsp tracks")
        await wait_until(lambda: consumed_everything(indexer), "everything consumed")
    assert snapshot.manifest.model == DSP
    assert sorted(snapshot_ids(store, snapshot.version)) == ["dsp-track", "dsp-track-2"]
    (failed,) = await dead_letters(stack, 1)
    assert (failed.track_id, failed.stage, failed.error_kind) == ("mert-track", "index", "model_mismatch")
    assert MERT.fingerprint() in failed.error and DSP.fingerprint() in failed.error
    assert failed.source_topic == stack.topics.tracks_embedded
    assert failed.original_payload is not None and "mert-track" in failed.original_payload


async def test_a_configured_model_refuses_the_first_vector_of_another(stack: StackSettings) -> None:
    store = snapshot_store(stack)
    settings = indexer_settings(stack, model=MERT.fingerprint())
    async with running(settings) as indexer, producer(stack) as send:
        await send(embedded("dsp-track", seed=1))
        await send(embedded("mert-track", seed=2, model=MERT))
        snapshot = await wait_for_snapshot(store, lambda s: s.manifest.vector_count == 1, "the mert track")
        await wait_until(lambda: consumed_everything(indexer), "everything consumed")
    assert snapshot.manifest.model == MERT
    (failed,) = await dead_letters(stack, 1)
    assert (failed.track_id, failed.error_kind) == ("dsp-track", "model_mismatch")


async def test_poison_messages_are_dead_lettered_and_do_not_block_their_partition(stack: StackSettings) -> None:
    store = snapshot_store(stack)
    topics = stack.topics
    async with running(indexer_settings(stack, shard_count=1)) as indexer, producer(stack) as send:
        await send_raw(stack, topics.tracks_embedded, b"{not json", key=b"broken-track")
        await send_raw(stack, topics.tracks_embedded, b'{"track_id": "no-vector"}', key=b"no-vector")
        await send_raw(stack, topics.tracks_removed, b"[]", key=b"odd")
        await send(embedded("good-track", seed=1))
        snapshot = await wait_for_snapshot(store, lambda s: s.manifest.vector_count == 1, "the good track")
        await wait_until(lambda: consumed_everything(indexer), "everything consumed")
    assert snapshot_ids(store, snapshot.version) == ["good-track"]
    failed = await dead_letters(stack, 3)
    assert {f.error_kind for f in failed} == {"malformed_event"}
    assert {f.original_key for f in failed} == {"broken-track", "no-vector", "odd"}
    assert all(f.stage == "index" and f.error for f in failed)


async def test_a_redelivered_event_does_not_cause_a_snapshot(stack: StackSettings) -> None:
    store = snapshot_store(stack)
    event = embedded("track", seed=1, when=at(1))
    async with running(indexer_settings(stack)) as indexer, producer(stack) as send:
        await send(event)
        snapshot = await wait_for_snapshot(store, lambda s: s.manifest.vector_count == 1, "one track")
        await send(event, register=False)  # at-least-once delivery: the same event again
        await wait_until(lambda: consumed_everything(indexer), "the redelivery consumed")
        unchanged = indexer.metrics.registry.get_sample_value(
            "mess_indexer_events_total", {"topic": stack.topics.tracks_embedded, "outcome": "unchanged"}
        )
        assert unchanged == 1
    # Stopping waits for an in-flight publish, so one caused by the redelivery would show here.
    latest = store.read_latest()
    assert latest is not None and latest.version == snapshot.version


async def test_a_topic_the_broker_lost_and_recreated_is_read_again_from_its_start(stack: StackSettings) -> None:
    # What a memory-storage broker does on restart: the topics come back empty
    # (the deployment's topic job creates them again) and every offset restarts at 0.
    store = snapshot_store(stack)
    async with running(indexer_settings(stack)) as indexer:
        async with producer(stack) as send:
            for n in range(12):
                await send(embedded(f"before-{n:02d}", seed=n, when=at(n)))
        await wait_for_snapshot(store, lambda s: s.manifest.vector_count == 12, "12 tracks indexed")
        await asyncio.to_thread(_recreate_topics, stack)
        async with producer(stack) as send:
            for n in range(3):
                await send(embedded(f"after-{n:02d}", seed=50 + n, when=at(50 + n)))
        latest = await wait_for_snapshot(store, lambda s: s.manifest.vector_count == 15, "the 3 new tracks indexed")
        assert sorted(snapshot_ids(store, latest.version)) == sorted(
            [f"before-{n:02d}" for n in range(12)] + [f"after-{n:02d}" for n in range(3)]
        )
        assert indexer.metrics.logs_rewound._value.get() >= 1


def _recreate_topics(stack: StackSettings) -> None:
    asyncio.run(delete_topics(stack))
    time.sleep(0.5)
    asyncio.run(create_topics(stack))
