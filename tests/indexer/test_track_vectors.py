"""Upserts, removals, their ordering across topics, and the model guard, on the state alone."""

import numpy as np
import pytest

from mess.contracts.events import ModelIdentity
from mess.indexer.sharding import shard_of
from mess.indexer.track_vectors import ModelGuard, Outcome, ShardContents, TrackVectors

DSP = ModelIdentity(name="dsp", revision="v1", dim=4, pooling="mean")
MERT = ModelIdentity(name="m-a-p/MERT-v1-95M", revision="abc", dim=4, pooling="layers-mean")


def vec(*values: float) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def fresh(shards: int = 4, expected: str | None = None) -> TrackVectors:
    return TrackVectors(shards, ModelGuard(None, expected))


def test_an_upsert_adds_then_replaces_and_stores_unit_vectors() -> None:
    state = fresh()
    assert state.apply_embedded("t1", DSP, vec(3, 4, 0, 0), 10) is Outcome.ADDED
    np.testing.assert_allclose(state.vector("t1"), [0.6, 0.8, 0, 0], rtol=1e-6)
    assert state.apply_embedded("t1", DSP, vec(0, 0, 2, 0), 20) is Outcome.REPLACED
    np.testing.assert_allclose(state.vector("t1"), [0, 0, 1, 0])
    assert len(state) == 1
    assert state.dirty_shards() == [shard_of("t1", 4)]


def test_a_redelivered_event_changes_nothing() -> None:
    state = fresh()
    state.apply_embedded("t1", DSP, vec(1, 0, 0, 0), 10)
    state.capture(state.dirty_shards())
    assert state.apply_embedded("t1", DSP, vec(1, 0, 0, 0), 10) is Outcome.UNCHANGED
    assert state.dirty_shards() == []


def test_a_removal_deletes_and_a_removal_of_an_unknown_track_is_remembered() -> None:
    state = fresh()
    state.apply_embedded("t1", DSP, vec(1, 0, 0, 0), 10)
    assert state.apply_removed("t1", 20) is Outcome.REMOVED
    assert "t1" not in state and len(state) == 0
    assert state.apply_removed("t2", 20) is Outcome.TOMBSTONED
    # The tombstone outranks an older embedding that arrives later...
    assert state.apply_embedded("t2", DSP, vec(1, 0, 0, 0), 15) is Outcome.STALE
    assert "t2" not in state
    # ...but not a newer one (the track was added again).
    assert state.apply_embedded("t2", DSP, vec(1, 0, 0, 0), 25) is Outcome.ADDED


def test_a_removal_older_than_the_applied_embedding_is_dropped() -> None:
    state = fresh()
    state.apply_embedded("t1", DSP, vec(1, 0, 0, 0), 30)
    assert state.apply_removed("t1", 20) is Outcome.STALE
    assert "t1" in state


def test_a_tie_between_embedding_and_removal_goes_to_the_removal() -> None:
    state = fresh()
    state.apply_removed("t1", 10)
    assert state.apply_embedded("t1", DSP, vec(1, 0, 0, 0), 10) is Outcome.STALE
    other = fresh()
    other.apply_embedded("t1", DSP, vec(1, 0, 0, 0), 10)
    assert other.apply_removed("t1", 10) is Outcome.REMOVED


@pytest.mark.parametrize("removed_at", [5, 15, 25, 35])
def test_the_result_does_not_depend_on_how_the_two_topics_interleave(removed_at: int) -> None:
    embeddings = [("t1", vec(1, 0, 0, 0), 10), ("t1", vec(0, 1, 0, 0), 20), ("t1", vec(0, 0, 1, 0), 30)]
    results = set()
    # The removal may land anywhere between the embeddings (which keep their topic order).
    for position in range(len(embeddings) + 1):
        state = fresh()
        for step, (track_id, vector, at) in enumerate(embeddings):
            if step == position:
                state.apply_removed("t1", removed_at)
            state.apply_embedded(track_id, DSP, vector, at)
        if position == len(embeddings):
            state.apply_removed("t1", removed_at)
        current = state.vector("t1")
        results.add(None if current is None else tuple(current.tolist()))
    assert len(results) == 1
    expected = None if removed_at >= 30 else (0.0, 0.0, 1.0, 0.0)
    assert results == {expected}


def test_the_first_vector_fixes_the_model() -> None:
    state = fresh()
    state.apply_embedded("t1", DSP, vec(1, 0, 0, 0), 10)
    assert state.model == DSP
    assert state.apply_embedded("t2", MERT, vec(1, 0, 0, 0), 10) is Outcome.MODEL_MISMATCH
    assert "t2" not in state


def test_a_configured_fingerprint_fixes_the_model_before_any_vector() -> None:
    state = fresh(expected=MERT.fingerprint())
    assert state.apply_embedded("t1", DSP, vec(1, 0, 0, 0), 10) is Outcome.MODEL_MISMATCH
    assert state.model is None
    assert state.apply_embedded("t1", MERT, vec(1, 0, 0, 0), 10) is Outcome.ADDED
    assert state.model == MERT


def test_a_snapshot_of_another_model_than_the_configured_one_is_refused() -> None:
    with pytest.raises(ValueError, match="rebuild"):
        ModelGuard(DSP, MERT.fingerprint())


def test_a_zero_vector_is_refused() -> None:
    state = fresh()
    assert state.apply_embedded("t1", DSP, vec(0, 0, 0, 0), 10) is Outcome.ZERO_VECTOR
    assert len(state) == 0


def test_capture_freezes_sorted_rows_and_marks_shards_clean() -> None:
    state = fresh(shards=1)
    for n, track_id in enumerate(["c", "a", "b"]):
        state.apply_embedded(track_id, DSP, vec(1, n, 0, 0), 100 + n)
    state.apply_removed("z", 50)
    (capture,) = state.capture([0])
    assert state.dirty_shards() == []
    state.apply_embedded("d", DSP, vec(0, 0, 0, 1), 200)  # after the capture: not in it
    contents = capture.freeze()
    assert contents.ids == ["a", "b", "c"]
    assert contents.embedded_at == [101, 102, 100]
    assert contents.removed_at == {"z": 50}
    np.testing.assert_allclose(contents.vectors[0], state.vector("a"))


def test_loading_a_shard_with_another_shard_count_reshards_it() -> None:
    ids = [f"track-{n}" for n in range(40)]
    vectors = np.eye(4, dtype=np.float32)[[n % 4 for n in range(40)]]
    state = fresh(shards=3)
    state.guard.model = DSP
    state.load_shard(ShardContents(0, ids, vectors, list(range(40)), {"gone": 7}))
    assert len(state) == 40
    for number, shard in enumerate(state.shards):
        assert all(shard_of(t, 3) == number for t in shard.vectors)
    assert state.shards[shard_of("gone", 3)].removed_at == {"gone": 7}


def test_sample_draws_stored_vectors_from_every_shard() -> None:
    state = fresh(shards=4)
    for n in range(100):
        state.apply_embedded(f"t{n}", DSP, vec(1, n, 0, 0), n)
    sample = state.sample(30)
    assert sample.shape == (30, 4)
    stored = {tuple(v.tolist()) for shard in state.shards for v in shard.vectors.values()}
    assert all(tuple(row.tolist()) in stored for row in sample)
    assert len({tuple(row.tolist()) for row in sample}) == 30
