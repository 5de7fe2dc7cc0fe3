"""The full rebuild: replay both topics into a fresh snapshot, through the real broker and S3."""

import numpy as np

from mess.contracts.events import SnapshotPublished
from mess.indexer.indexer import Indexer
from mess.indexer.rebuild import rebuild, rebuild_settings
from mess.indexer.snapshot_store import StoredManifest
from mess.runtime.endpoints import StackSettings

from .indexer_harness import (
    DSP,
    MERT,
    consumed_everything,
    dead_letters,
    embedded,
    indexer_settings,
    producer,
    read_back,
    read_topic,
    removed,
    running,
    snapshot_ids,
    snapshot_store,
    unit_vector,
    wait_for_snapshot,
    wait_until,
)


async def _index_everything(indexer: Indexer, stack: StackSettings) -> str:
    """Wait until LATEST covers every event on the topics; its version."""
    store = snapshot_store(stack)
    await wait_until(lambda: consumed_everything(indexer), "everything consumed")
    ends = await indexer.feed.end_offsets()

    def covers(stored: StoredManifest) -> bool:
        offsets = stored.manifest.offsets
        return all(offsets.get(tp.topic, {}).get(str(tp.partition)) == end for tp, end in ends.items())

    return (await wait_for_snapshot(store, covers, "a snapshot covering every event")).version


async def test_rebuild_replays_both_topics_into_a_fresh_snapshot_of_another_index_type(stack: StackSettings) -> None:
    store = snapshot_store(stack)
    settings = indexer_settings(stack, shard_count=2)
    async with running(settings) as live, producer(stack) as send:
        for n in range(60):
            await send(embedded(f"track-{n:02d}", n))
        for n in range(10):  # a later value per key: must win whether or not the broker compacted
            await send(embedded(f"track-{n:02d}", 1_000 + n))
        for n in range(50, 55):
            await send(removed(f"track-{n:02d}"))
        live_version = await _index_everything(live, stack)

    overrides = rebuild_settings(settings, index_type="HNSW16,Flat", model=None, shards=None)
    report = await rebuild(overrides.model_copy(update={"flat_threshold": 10}))
    assert report.version > live_version and report.vectors == 55
    # 75 events and the 70 TrackAdded before the embeddings. The facts are read first (LATEST's, then
    # the topics'), so the five removed tracks' embeddings are stale and never indexed.
    assert report.records == 145 and report.outcomes["replaced"] == 10
    assert report.outcomes["added"] == 55 and report.outcomes["stale"] >= 5

    rebuilt = store.read_manifest(report.version).manifest
    assert rebuilt.previous_version == live_version
    assert {s.index_factory for s in rebuilt.shards} == {"HNSW16,Flat"}
    assert all(s.built_in == report.version and "efSearch" in s.search_params for s in rebuilt.shards)
    assert rebuilt.offsets == store.read_manifest(live_version).manifest.offsets
    assert sorted(snapshot_ids(store, report.version)) == sorted(snapshot_ids(store, live_version))
    fresh, old = read_back(store, report.version), read_back(store, live_version)
    for track_id in old.track_ids():
        np.testing.assert_array_equal(fresh.vector(track_id), old.vector(track_id))
    np.testing.assert_allclose(fresh.vector("track-03"), unit_vector(1_003), rtol=1e-6)
    announced = await read_topic(
        stack, stack.topics.index_snapshots, SnapshotPublished, lambda es: report.version in {e.version for e in es}
    )
    (event,) = [e for e in announced if e.version == report.version]
    assert event.counts.rebuilt_shards == 2 and event.counts.vectors == 55


async def test_a_running_indexer_adopts_a_rebuild_and_continues_from_its_offsets(stack: StackSettings) -> None:
    store = snapshot_store(stack)
    settings = indexer_settings(stack)
    async with running(settings) as live, producer(stack) as send:
        for n in range(20):
            await send(embedded(f"track-{n:02d}", n))
        await _index_everything(live, stack)

        report = await rebuild(settings)
        adopted = live.metrics.registry.get_sample_value
        await wait_until(lambda: adopted("mess_indexer_adopted_snapshots_total") == 1, "adoption")
        assert live.latest is not None and live.latest.version == report.version

        await send(embedded("after-rebuild", 99))
        after = await wait_for_snapshot(store, lambda s: s.manifest.vector_count == 21, "the next live snapshot")
    assert after.manifest.previous_version == report.version
    ids = snapshot_ids(store, after.version)
    assert len(ids) == len(set(ids)) == 21


async def test_a_rebuild_to_another_model_switches_what_the_guard_admits(stack: StackSettings) -> None:
    store = snapshot_store(stack)
    settings = indexer_settings(stack)
    async with running(settings) as live, producer(stack) as send:
        for n in range(10):
            await send(embedded(f"track-{n:02d}", n, model=DSP))
        for n in range(12):  # re-embedded with the new model, plus two new tracks
            await send(embedded(f"track-{n:02d}", 500 + n, model=MERT))
        await _index_everything(live, stack)
    assert store.read_manifest(store.read_latest().version).manifest.model == DSP  # type: ignore[union-attr]
    assert {f.error_kind for f in await dead_letters(stack, 12)} == {"model_mismatch"}

    report = await rebuild(rebuild_settings(settings, index_type=None, model=MERT.fingerprint(), shards=None))
    assert report.model == MERT.fingerprint() and report.vectors == 12
    assert report.outcomes["skipped_other_model"] == 10  # replayed, not dead-lettered again
    state = read_back(store, report.version)
    np.testing.assert_allclose(state.vector("track-11"), unit_vector(511), rtol=1e-6)

    # A live indexer started now holds the new model: old-model vectors are the mismatches.
    async with running(indexer_settings(stack)) as restarted, producer(stack) as send:
        await send(embedded("old-model-track", 900, model=DSP))
        await send(embedded("new-model-track", 901, model=MERT))
        final = await wait_for_snapshot(store, lambda s: s.manifest.vector_count == 13, "the new-model track")
        await wait_until(lambda: consumed_everything(restarted), "everything consumed")
    assert final.manifest.model == MERT
    failed = {f.track_id: f.error_kind for f in await dead_letters(stack, 13)}
    assert failed["old-model-track"] == "model_mismatch" and "new-model-track" not in failed
