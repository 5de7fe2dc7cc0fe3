"""Pitch sequences in the indexer's state and snapshots (real S3 endpoint): they ride in the shard with
the vectors, are checksummed, reused with unchanged shards, and reload on restart."""

import numpy as np
import numpy.typing as npt
import pytest

from mess.contracts.sequences import MAX_SEQUENCE_FRAMES, check_sequence_table, pack_sequences
from mess.indexer.snapshot_store import SnapshotIntegrityError
from mess.indexer.track_vectors import ModelGuard, Outcome, TrackVectors
from mess.runtime.endpoints import StackSettings

from .indexer_harness import DSP, index, next_registry_sequence, read_back, snapshot_store, unit_vector
from .test_snapshots import publish


def sequence(seed: int, frames: int = 40) -> npt.NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, 256, size=(frames, 12), dtype=np.uint8)


def with_sequences(count: int, shards: int = 4) -> TrackVectors:
    """Every third track without a sequence, as from an embedder that predates them."""
    state = TrackVectors(shards, ModelGuard(None, None))
    for n in range(count):
        index(state, f"track-{n:03d}", DSP, unit_vector(n), None if n % 3 == 0 else sequence(n, 20 + n))
    return state


def test_the_pack_round_trips_and_the_check_refuses_what_a_reader_could_not_slice() -> None:
    rows = [sequence(1, 5), None, np.zeros((0, 12), dtype=np.uint8), sequence(2, 3)]
    frames, offsets = pack_sequences(rows)
    check_sequence_table(frames, offsets, len(rows))
    assert offsets.tolist() == [0, 5, 5, 5, 8]
    np.testing.assert_array_equal(frames[offsets[3] : offsets[4]], rows[3])
    with pytest.raises(ValueError, match="offsets span"):
        check_sequence_table(frames, offsets + 1, len(rows))
    with pytest.raises(ValueError, match="int64"):
        check_sequence_table(frames, offsets, len(rows) + 1)  # a row count the shard does not have
    backwards = offsets.copy()
    backwards[1], backwards[2] = 6, 4
    with pytest.raises(ValueError, match="length"):
        check_sequence_table(frames, backwards, len(rows))
    long_frames, long_offsets = pack_sequences([sequence(3, MAX_SEQUENCE_FRAMES + 1)])
    with pytest.raises(ValueError, match="length"):
        check_sequence_table(long_frames, long_offsets, 1)


def test_a_sequence_is_the_tracks_state_replaced_and_removed_with_its_vector() -> None:
    state = TrackVectors(1, ModelGuard(None, None))
    assert index(state, "t1", DSP, unit_vector(1), sequence(1)) is Outcome.ADDED
    assert index(state, "t1", DSP, unit_vector(1), sequence(1)) is Outcome.UNCHANGED
    # Same vector, new sequence: a change to publish, not a redelivery.
    assert index(state, "t1", DSP, unit_vector(1), sequence(2)) is Outcome.REPLACED
    np.testing.assert_array_equal(state.sequence("t1"), sequence(2))
    assert index(state, "t1", DSP, unit_vector(1), None) is Outcome.REPLACED
    assert state.sequence("t1") is None
    index(state, "t1", DSP, unit_vector(1), sequence(3))
    assert state.apply_removed("t1", next_registry_sequence()) is Outcome.REMOVED
    assert state.sequence("t1") is None


def test_sequences_ride_in_the_snapshot_are_reused_with_their_shard_and_reload(stack: StackSettings) -> None:
    store = snapshot_store(stack)
    state = with_sequences(40)
    first = publish(store, state, None)
    for shard in first.stored.manifest.shards:
        assert shard.sequences is not None and shard.count > 0
        assert shard.sequences.frames.key.endswith(".sequences.npy")
    assert {f.key for s in first.stored.manifest.shards for f in s.files()} <= first.stored.keys()

    loaded = read_back(store, first.stored.version)  # every checksum verified, as on restart
    for n in range(40):
        track_id = f"track-{n:03d}"
        if n % 3 == 0:
            assert loaded.sequence(track_id) is None
        else:
            np.testing.assert_array_equal(loaded.sequence(track_id), sequence(n, 20 + n))

    index(state, "track-001", DSP, unit_vector(500), sequence(500))
    second = publish(store, state, first)
    assert second.rebuilt_shards == 1
    for old, new in zip(first.stored.manifest.shards, second.stored.manifest.shards, strict=True):
        if new.built_in != second.stored.version:
            assert new.sequences == old.sequences  # referenced, not re-uploaded
    reloaded = read_back(store, second.stored.version)
    np.testing.assert_array_equal(reloaded.sequence("track-001"), sequence(500))
    np.testing.assert_array_equal(reloaded.sequence("track-002"), sequence(2, 22))


def test_a_shard_whose_tracks_have_no_sequence_lists_no_sequence_file(stack: StackSettings) -> None:
    store = snapshot_store(stack)
    state = TrackVectors(2, ModelGuard(None, None))
    for n in range(10):
        index(state, f"track-{n:03d}", DSP, unit_vector(n))
    published = publish(store, state, None)
    assert all(shard.sequences is None for shard in published.stored.manifest.shards)
    assert read_back(store, published.stored.version).sequence("track-001") is None


@pytest.mark.parametrize("which", ["frames", "offsets"])
def test_a_corrupted_sequence_file_is_refused_by_its_checksum(stack: StackSettings, which: str) -> None:
    store = snapshot_store(stack)
    published = publish(store, with_sequences(30), None)
    sequences = published.stored.manifest.shards[1].sequences
    assert sequences is not None
    key = getattr(sequences, which).key
    body = store.s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read()
    store.s3.put_object(Bucket=stack.bucket, Key=key, Body=body[:-1] + bytes([body[-1] ^ 1]))
    with pytest.raises(SnapshotIntegrityError, match=rf"{key} is corrupt: .* sha256"):
        read_back(store, published.stored.version)
