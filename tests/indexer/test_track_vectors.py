"""Registry facts, embeddings checked against them, removals, and the model guard, on the state alone."""

import itertools

import numpy as np
import pytest

from mess.contracts.events import ModelIdentity
from mess.indexer.sharding import shard_of
from mess.indexer.track_vectors import Fact, ModelGuard, Outcome, ShardContents, TrackVectors

DSP = ModelIdentity(name="dsp", revision="v1", dim=4, pooling="mean")
MERT = ModelIdentity(name="m-a-p/MERT-v1-95M", revision="abc", dim=4, pooling="layers-mean")
A = "a" * 64
B = "b" * 64


def vec(*values: float) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def fresh(shards: int = 4, expected: str | None = None) -> TrackVectors:
    return TrackVectors(shards, ModelGuard(None, expected))


def registered(shards: int = 4, expected: str | None = None, tracks: tuple[str, ...] = ("t1",)) -> TrackVectors:
    state = fresh(shards, expected)
    for track_id in tracks:
        state.apply_added(track_id, A, 1)
    return state


def test_an_upsert_adds_then_replaces_and_stores_unit_vectors() -> None:
    state = registered()
    assert state.apply_embedded("t1", DSP, vec(3, 4, 0, 0), A) is Outcome.ADDED
    np.testing.assert_allclose(state.vector("t1"), [0.6, 0.8, 0, 0], rtol=1e-6)
    assert state.apply_embedded("t1", DSP, vec(0, 0, 2, 0), A) is Outcome.REPLACED
    np.testing.assert_allclose(state.vector("t1"), [0, 0, 1, 0])
    assert len(state) == 1
    assert state.dirty_shards() == [shard_of("t1", 4)]


def test_a_redelivered_event_changes_nothing() -> None:
    state = registered()
    state.apply_embedded("t1", DSP, vec(1, 0, 0, 0), A)
    state.capture(state.dirty_shards())
    assert state.apply_embedded("t1", DSP, vec(1, 0, 0, 0), A) is Outcome.UNCHANGED
    assert state.apply_added("t1", A, 1) is Outcome.UNCHANGED
    assert state.dirty_shards() == []


def test_an_embedding_is_indexed_only_for_the_registered_content() -> None:
    state = fresh()
    assert state.apply_embedded("t1", DSP, vec(1, 0, 0, 0), A) is Outcome.UNREGISTERED
    assert state.apply_added("t1", A, 5) is Outcome.REGISTERED
    assert state.apply_embedded("t1", DSP, vec(1, 0, 0, 0), B) is Outcome.CONTENT_MISMATCH
    assert "t1" not in state and state.model is None  # a refused vector fixes no model either
    assert state.apply_embedded("t1", DSP, vec(1, 0, 0, 0), A) is Outcome.ADDED


def test_new_content_registered_drops_the_old_contents_vector() -> None:
    state = registered()
    state.apply_embedded("t1", DSP, vec(1, 0, 0, 0), A)
    assert state.apply_added("t1", B, 2) is Outcome.SUPERSEDED
    assert "t1" not in state
    assert state.apply_embedded("t1", DSP, vec(1, 0, 0, 0), A) is Outcome.CONTENT_MISMATCH
    assert state.apply_embedded("t1", DSP, vec(0, 1, 0, 0), B) is Outcome.ADDED
    # A re-announcement of the same content keeps the vector.
    assert state.apply_added("t1", B, 3) is Outcome.REGISTERED
    assert "t1" in state


def test_a_removal_deletes_and_makes_later_embeddings_stale() -> None:
    state = registered()
    state.apply_embedded("t1", DSP, vec(1, 0, 0, 0), A)
    assert state.apply_removed("t1", 2) is Outcome.REMOVED
    assert "t1" not in state and len(state) == 0
    assert state.apply_embedded("t1", DSP, vec(1, 0, 0, 0), A) is Outcome.STALE
    assert state.apply_removed("t2", 3) is Outcome.TOMBSTONED
    assert state.fact("t2") == Fact(None, 3)
    # Added again (a later registry sequence): its embedding counts again.
    assert state.apply_added("t1", A, 4) is Outcome.REGISTERED
    assert state.apply_embedded("t1", DSP, vec(1, 0, 0, 0), A) is Outcome.ADDED


def test_facts_are_ordered_by_registry_sequence_not_arrival() -> None:
    state = registered()
    state.apply_embedded("t1", DSP, vec(1, 0, 0, 0), A)
    assert state.apply_removed("t1", 0) is Outcome.STALE  # older than the TrackAdded (1)
    assert "t1" in state
    assert state.apply_removed("t1", 7) is Outcome.REMOVED
    assert state.apply_added("t1", A, 6) is Outcome.STALE  # the add the removal superseded, arriving late
    assert state.fact("t1") == Fact(None, 7)
    # A fact without the header (an older relay) goes by arrival, keeping the sequence known.
    assert state.apply_added("t1", B, None) is Outcome.REGISTERED
    assert state.fact("t1") == Fact(B, 7)


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_the_latest_fact_wins_however_the_topics_interleave(order: tuple[int, ...]) -> None:
    # add(A)@1, remove@2, add(B)@3 on two topics: any arrival order ends at "added B".
    facts = [("added", A, 1), ("removed", None, 2), ("added", B, 3)]
    state = fresh()
    for position in order:
        kind, sha256, sequence = facts[position]
        if kind == "added" and sha256 is not None:
            state.apply_added("t1", sha256, sequence)
        else:
            state.apply_removed("t1", sequence)
    assert state.fact("t1") == Fact(B, 3)
    assert state.apply_embedded("t1", DSP, vec(1, 0, 0, 0), A) is Outcome.CONTENT_MISMATCH
    assert state.apply_embedded("t1", DSP, vec(1, 0, 0, 0), B) is Outcome.ADDED


def test_a_kafka_tombstone_drops_the_vector_and_keeps_the_fact() -> None:
    state = registered()
    state.apply_embedded("t1", DSP, vec(1, 0, 0, 0), A)
    assert state.drop_embedding("t1") is Outcome.REMOVED
    assert "t1" not in state and state.fact("t1") == Fact(A, 1)
    assert state.drop_embedding("t1") is Outcome.UNCHANGED


def test_the_first_vector_fixes_the_model() -> None:
    state = registered(tracks=("t1", "t2"))
    state.apply_embedded("t1", DSP, vec(1, 0, 0, 0), A)
    assert state.model == DSP
    assert state.apply_embedded("t2", MERT, vec(1, 0, 0, 0), A) is Outcome.MODEL_MISMATCH
    assert "t2" not in state


def test_a_configured_fingerprint_fixes_the_model_before_any_vector() -> None:
    state = registered(expected=MERT.fingerprint())
    assert state.apply_embedded("t1", DSP, vec(1, 0, 0, 0), A) is Outcome.MODEL_MISMATCH
    assert state.model is None
    assert state.apply_embedded("t1", MERT, vec(1, 0, 0, 0), A) is Outcome.ADDED
    assert state.model == MERT


def test_a_snapshot_of_another_model_than_the_configured_one_is_refused() -> None:
    with pytest.raises(ValueError, match="rebuild"):
        ModelGuard(DSP, MERT.fingerprint())


def test_a_zero_vector_is_refused() -> None:
    state = registered()
    assert state.apply_embedded("t1", DSP, vec(0, 0, 0, 0), A) is Outcome.ZERO_VECTOR
    assert len(state) == 0


def test_capture_freezes_sorted_rows_and_marks_shards_clean() -> None:
    state = registered(shards=1, tracks=("c", "a", "b", "d"))
    for n, track_id in enumerate(["c", "a", "b"]):
        state.apply_embedded(track_id, DSP, vec(1, n, 0, 0), A)
    state.apply_removed("z", 50)
    (capture,) = state.capture([0])
    assert state.dirty_shards() == []
    state.apply_embedded("d", DSP, vec(0, 0, 0, 1), A)  # after the capture: not in it
    contents = capture.freeze()
    assert contents.ids == ["a", "b", "c"]
    assert contents.facts == {t: Fact(A, 1) for t in "abcd"} | {"z": Fact(None, 50)}
    np.testing.assert_allclose(contents.vectors[0], state.vector("a"))


def test_loading_a_shard_with_another_shard_count_reshards_it() -> None:
    ids = [f"track-{n}" for n in range(40)]
    vectors = np.eye(4, dtype=np.float32)[[n % 4 for n in range(40)]]
    state = fresh(shards=3)
    state.guard.model = DSP
    state.load_shard(ShardContents(0, ids, vectors, {"gone": Fact(None, 7)}))
    assert len(state) == 40
    for number, shard in enumerate(state.shards):
        assert all(shard_of(t, 3) == number for t in shard.vectors)
    assert state.shards[shard_of("gone", 3)].facts == {"gone": Fact(None, 7)}


def test_sample_draws_stored_vectors_from_every_shard() -> None:
    state = registered(tracks=tuple(f"t{n}" for n in range(100)))
    for n in range(100):
        state.apply_embedded(f"t{n}", DSP, vec(1, n, 0, 0), A)
    sample = state.sample(30)
    assert sample.shape == (30, 4)
    stored = {tuple(v.tolist()) for shard in state.shards for v in shard.vectors.values()}
    assert all(tuple(row.tolist()) in stored for row in sample)
    assert len({tuple(row.tolist()) for row in sample}) == 30
