"""Snapshots in the real S3 endpoint: round trip, checksums, reuse of unchanged
shards, retention, and the conditional writes that keep writers apart."""

import json

import numpy as np
import pytest

from mess.contracts.storage import LATEST_KEY, manifest_key
from mess.indexer.snapshot_store import (
    LatestMovedError,
    LeaseHeldError,
    SnapshotIntegrityError,
    SnapshotStore,
    VersionTakenError,
)
from mess.indexer.snapshots import BuildOptions, Checkpoint, PublishedSnapshot, publish_snapshot
from mess.indexer.track_vectors import ModelGuard, Outcome, TrackVectors
from mess.runtime.endpoints import StackSettings

from .indexer_harness import DSP, SHA, index, next_registry_sequence, read_back, snapshot_store, unit_vector

OPTIONS = BuildOptions(flat_threshold=1_000, approximate_index="HNSW32,SQ8", ef_construction=40, tuning_recall=0.95)


def publish(store: SnapshotStore, state: TrackVectors, base: PublishedSnapshot | None) -> PublishedSnapshot:
    """One publish as the live indexer makes it: dirty shards (all, the first time) built, others reused."""
    shards = state.dirty_shards() if base is not None else list(range(state.shard_count))
    checkpoint = Checkpoint(
        offsets={"topic": {"0": 7}},
        model=state.model,
        shard_count=state.shard_count,
        captures=state.capture(shards),
        tuning_queries=state.sample(20),
        base=base.stored if base else None,
        expect_latest=base.latest.version if base else None,
    )
    lease = store.acquire_lease("tester", 60)
    try:
        return publish_snapshot(store, checkpoint, OPTIONS, lease, 60)
    finally:
        store.release_lease(lease)


def filled(count: int, shards: int = 4) -> TrackVectors:
    state = TrackVectors(shards, ModelGuard(None, None))
    for n in range(count):
        index(state, f"track-{n:03d}", DSP, unit_vector(n))
    state.apply_removed("removed-track", next_registry_sequence())
    return state


def test_a_snapshot_reads_back_exactly(stack: StackSettings) -> None:
    store = snapshot_store(stack)
    state = filled(60)
    published = publish(store, state, None)
    manifest = published.stored.manifest
    assert manifest.version == "000000000001" and manifest.previous_version is None
    assert manifest.vector_count == 60 and manifest.shard_count == 4 and manifest.dim == DSP.dim
    assert manifest.offsets == {"topic": {"0": 7}}
    assert store.read_latest().version == manifest.version  # type: ignore[union-attr]
    store.acquire_lease("another-writer", 60)  # the publish handed its (renewed) lease back

    loaded = read_back(store, manifest.version)
    assert sorted(loaded.track_ids()) == sorted(state.track_ids())
    for track_id in state.track_ids():
        np.testing.assert_array_equal(loaded.vector(track_id), state.vector(track_id))
    # The registry's facts survive too: after a restart, an embedding of the removed track is still
    # refused, and one of content the registry never announced for a track is too.
    assert loaded.apply_embedded("removed-track", DSP, unit_vector(1), SHA) is Outcome.STALE
    assert loaded.fact("track-000") == state.fact("track-000")
    assert loaded.apply_embedded("track-000", DSP, unit_vector(1), "f" * 64) is Outcome.CONTENT_MISMATCH


@pytest.mark.parametrize("which", ["index", "ids", "vectors"])
def test_a_corrupted_shard_file_is_refused_by_its_checksum(stack: StackSettings, which: str) -> None:
    store = snapshot_store(stack)
    published = publish(store, filled(30), None)
    shard = published.stored.manifest.shards[1]
    key = getattr(shard, which).key
    body = store.s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read()
    store.s3.put_object(Bucket=stack.bucket, Key=key, Body=body[:-1] + bytes([body[-1] ^ 1]))
    with pytest.raises(SnapshotIntegrityError, match=rf"{key} is corrupt: .* sha256"):
        read_back(store, published.stored.version)


def test_a_missing_shard_file_is_refused(stack: StackSettings) -> None:
    store = snapshot_store(stack)
    published = publish(store, filled(30), None)
    key = published.stored.manifest.shards[2].vectors.key
    store.s3.delete_object(Bucket=stack.bucket, Key=key)
    with pytest.raises(SnapshotIntegrityError, match=rf"{key} is missing"):
        read_back(store, published.stored.version)


def test_ids_in_the_wrong_shard_are_refused_even_with_good_checksums(stack: StackSettings) -> None:
    store = snapshot_store(stack)
    published = publish(store, filled(30), None)
    document = json.loads(store.s3.get_object(Bucket=stack.bucket, Key=manifest_key("000000000001"))["Body"].read())
    # Swap two shards' files in the manifest: every checksum still matches its file.
    first, second = document["shards"][0], document["shards"][1]
    for field in ("index", "ids", "vectors", "facts", "count"):
        first[field], second[field] = second[field], first[field]
    store.s3.put_object(Bucket=stack.bucket, Key=manifest_key("000000000001"), Body=json.dumps(document).encode())
    with pytest.raises(SnapshotIntegrityError, match="belong to other shards"):
        read_back(store, published.stored.version)


def test_unchanged_shards_are_referenced_not_rebuilt(stack: StackSettings) -> None:
    store = snapshot_store(stack)
    state = filled(40)
    first = publish(store, state, None)
    index(state, "track-000", DSP, unit_vector(500))
    second = publish(store, state, first)
    assert second.rebuilt_shards == 1 and second.stored.manifest.previous_version == first.stored.version
    for old, new in zip(first.stored.manifest.shards, second.stored.manifest.shards, strict=True):
        if new.built_in == second.stored.version:
            assert new.index.key.startswith("snapshots/000000000002/")
        else:
            assert new == old  # same keys, checksums and build version
    assert len([s for s in second.stored.manifest.shards if s.built_in == second.stored.version]) == 1
    listed = store.s3.list_objects_v2(Bucket=stack.bucket, Prefix="snapshots/000000000002/")["Contents"]
    assert len(listed) == 5  # one shard's four files and the manifest
    np.testing.assert_array_equal(read_back(store, "000000000002").vector("track-000"), unit_vector(500))


def test_retention_keeps_the_last_k_and_every_file_they_reference(stack: StackSettings) -> None:
    store = snapshot_store(stack)
    state = filled(40)
    published = [publish(store, state, None)]
    for n in range(4):  # only track-000's shard changes in these
        index(state, "track-000", DSP, unit_vector(600 + n))
        published.append(publish(store, state, published[-1]))
    deleted = store.prune(keep=2)

    kept = [p.stored for p in published[-2:]]
    needed = set().union(*(k.keys() for k in kept))
    remaining = {o["Key"] for o in store.s3.list_objects_v2(Bucket=stack.bucket, Prefix="snapshots/")["Contents"]}
    assert remaining == needed | {LATEST_KEY}
    # The first snapshot's unchanged shards are still referenced, so still there...
    assert any(key.startswith("snapshots/000000000001/shard-") for key in remaining)
    # ...but its manifest, and the rebuilt shard of the snapshots between, are gone.
    assert manifest_key("000000000001") in deleted and manifest_key("000000000003") in deleted
    for version in [k.version for k in kept]:
        read_back(store, version)  # both kept snapshots load with every checksum good


def test_latest_moves_only_from_the_version_the_writer_read(stack: StackSettings) -> None:
    store = snapshot_store(stack)
    state = filled(10)
    first = publish(store, state, None)
    index(state, "track-001", DSP, unit_vector(700))
    publish(store, state, first)  # another writer moved LATEST to 2
    index(state, "track-002", DSP, unit_vector(701))
    with pytest.raises(LatestMovedError, match="000000000002"):
        publish(store, state, first)  # still believes LATEST is 1
    assert store.read_latest().version == "000000000002"  # type: ignore[union-attr]


def test_a_version_folder_is_never_reused(stack: StackSettings) -> None:
    store = snapshot_store(stack)
    first = publish(store, filled(10), None)
    # What a publish that died after its files leaves behind.
    store.s3.put_object(Bucket=stack.bucket, Key="snapshots/000000000002/shard-0000.index", Body=b"partial")
    assert store.next_version(first.latest) == "000000000003"
    with pytest.raises(VersionTakenError):
        store.put_manifest(first.stored.manifest, {})


def test_the_publish_lease_keeps_a_second_writer_out_until_it_expires(stack: StackSettings) -> None:
    store = snapshot_store(stack)
    lease = store.acquire_lease("indexer-a", 60)
    with pytest.raises(LeaseHeldError, match="indexer-a holds the publish lease"):
        store.acquire_lease("rebuild-b", 60)
    # The same writer restarted after a crash takes its own lease back at once.
    again = store.acquire_lease("indexer-a", 60)
    with pytest.raises(LeaseHeldError):
        store.renew_lease(lease, 60)  # the old holder's handle is stale
    store.release_lease(again)
    short = store.acquire_lease("rebuild-b", 0)  # a lease that has already run out
    assert short.owner == "rebuild-b"
    store.acquire_lease("indexer-a", 60)  # rebuild-b's lease expired
