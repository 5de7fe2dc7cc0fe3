"""Index type by shard size, tuning to a recall target, and the recall of approximate shards."""

import numpy as np
import pytest
from pydantic import ValidationError

from mess.contracts.events import ModelIdentity
from mess.indexer.config import Settings
from mess.indexer.shard_index import (
    FLAT,
    IndexBuildError,
    IndexPlan,
    build_shard_index,
    candidate_plans,
    check_factory,
    exact_top_k,
    factory_fits,
    load_index,
    plan_for,
    recall_at_k,
    search_shards,
    tuning_truth,
)
from mess.indexer.track_vectors import ModelGuard, TrackVectors

from .clustered import clustered_vectors
from .indexer_harness import index


def test_small_shards_are_exact_and_large_ones_approximate() -> None:
    assert plan_for(9_999, flat_threshold=10_000, approximate_factory="HNSW32,SQ8") == IndexPlan(FLAT, None)
    assert plan_for(10_000, flat_threshold=10_000, approximate_factory="HNSW32,SQ8") == IndexPlan(
        "HNSW32,SQ8", "efSearch"
    )
    ivf = plan_for(40_000, flat_threshold=10_000, approximate_factory="IVF{nlist},SQ8")
    assert ivf == IndexPlan("IVF800,SQ8", "nprobe")
    assert plan_for(0, flat_threshold=0, approximate_factory="HNSW32,SQ8").exact


def test_every_candidate_is_planned_until_a_choice_sticks() -> None:
    both = "HNSW32,SQ8|IVF{nlist},SQ8"
    plans = candidate_plans(40_000, flat_threshold=5_000, approximate_factory=both)
    assert [p.factory for p in plans] == ["HNSW32,SQ8", "IVF800,SQ8"]
    # The shard was IVF at 30,000: within a factor of two, only IVF is built again.
    sticky = candidate_plans(40_000, flat_threshold=5_000, approximate_factory=both, previous=("IVF692,SQ8", 30_000))
    assert [p.factory for p in sticky] == ["IVF800,SQ8"]
    # Grown more than twofold, or chosen under other settings: measured again.
    regrown = candidate_plans(70_000, flat_threshold=5_000, approximate_factory=both, previous=("IVF692,SQ8", 30_000))
    assert len(regrown) == 2
    assert len(candidate_plans(40_000, flat_threshold=5_000, approximate_factory=both, previous=("Flat", 30_000))) == 2
    assert candidate_plans(4_000, flat_threshold=5_000, approximate_factory=both) == [IndexPlan(FLAT, None)]
    assert factory_fits("IVF800,SQ8", 40_000, flat_threshold=5_000, approximate_factory=both)
    assert not factory_fits("HNSW16,SQ8", 40_000, flat_threshold=5_000, approximate_factory=both)


def test_of_several_candidates_one_that_reaches_the_target_is_kept() -> None:
    vectors = clustered_vectors(3_000, 32, seed=5)
    plans = candidate_plans(3_000, flat_threshold=1_000, approximate_factory="IVF{nlist},PQ4|HNSW16,Flat")
    built = build_shard_index(vectors, plans, tuning_queries=vectors[:100], target_recall=0.9)
    # PQ with 4 bytes per vector cannot reach 0.9 here; the graph can, so it wins however fast PQ is.
    assert built.factory == "HNSW16,Flat"
    assert built.recall_at_10 is not None and built.recall_at_10 >= 0.9
    assert set(built.search_params) == {"efSearch"}


def test_a_factory_with_no_search_knob_to_tune_is_refused_at_start_up() -> None:
    with pytest.raises(ValidationError, match="neither Flat nor"):
        Settings(approximate_index="LSH")
    with pytest.raises(ValidationError, match="neither Flat nor"):
        Settings(approximate_index="HNSW32,SQ8|LSH")
    with pytest.raises(IndexBuildError, match="cannot build"):
        check_factory("HNSW32,PQ7", dim=16)  # PQ needs the dimension to divide evenly


def test_recall_counts_true_neighbours_found() -> None:
    truth = np.array([[1, 2, 3], [4, 5, -1]])
    found = np.array([[3, 2, 9], [5, 9, 9]])
    assert recall_at_k(truth, found) == pytest.approx(3 / 5)


def test_tuning_measures_the_nearest_other_tracks_not_the_query_itself() -> None:
    vectors = clustered_vectors(500, 16, seed=4)
    truth = tuning_truth(vectors[:5], vectors)
    for row in range(5):
        assert truth.own_rows[row] == {row}
        assert row not in truth.labels[row]
        assert list(truth.labels[row]) == list(exact_top_k(vectors[row : row + 1], vectors, 11)[0][1:])
    unseen = tuning_truth(clustered_vectors(503, 16, seed=4)[500:], vectors)
    assert unseen.own_rows == [set(), set(), set()]


@pytest.mark.parametrize(("factory", "parameter"), [("HNSW16,Flat", "efSearch"), ("IVF{nlist},Flat", "nprobe")])
def test_an_approximate_shard_is_tuned_to_the_target_and_loads_with_its_parameter(factory: str, parameter: str) -> None:
    vectors = clustered_vectors(4_000, 32, seed=3)
    plan = plan_for(len(vectors), flat_threshold=1_000, approximate_factory=factory)
    queries = clustered_vectors(4_200, 32, seed=3)[4_000:]  # same clusters, unseen points
    built = build_shard_index(vectors, plan, tuning_queries=queries[:100], target_recall=0.9)
    assert set(built.search_params) == {parameter}
    assert built.recall_at_10 is not None and built.recall_at_10 >= 0.9

    index = load_index(built.index_bytes, built.search_params)
    _, found = index.search(queries[100:], 10)
    assert recall_at_k(exact_top_k(queries[100:], vectors), found) >= 0.85


@pytest.mark.slow
def test_approximate_shards_reach_recall_at_10_of_095_on_50000_clustered_vectors_of_dim_768() -> None:
    """The production path: default settings, vectors sharded and built as a
    snapshot builds them, tuned on stored vectors, then measured on queries
    the tuning never saw, merged over the shards, against exact search."""
    settings = Settings()
    data = clustered_vectors(50_500, 768, clusters=500, seed=7)
    vectors, queries = data[:50_000], data[50_000:]
    model = ModelIdentity(name="synthetic", revision="1", dim=768, pooling="none")
    state = TrackVectors(2, ModelGuard(None, None))  # 25,000 per shard: above the Flat threshold
    ids = [f"track-{n:05d}" for n in range(len(vectors))]
    for row, track_id in enumerate(ids):
        index(state, track_id, model, vectors[row])
    tuning = state.sample(settings.tuning_queries)

    shards = []
    for capture in state.capture(range(2)):
        contents = capture.freeze()
        plans = candidate_plans(
            len(contents.ids), flat_threshold=settings.flat_threshold, approximate_factory=settings.approximate_index
        )
        assert not plans[0].exact
        built = build_shard_index(
            contents.vectors,
            plans,
            tuning_queries=tuning,
            target_recall=settings.tuning_recall,
            ef_construction=settings.hnsw_ef_construction,
        )
        shards.append((load_index(built.index_bytes, built.search_params), contents.ids))

    found = search_shards(shards, queries, k=10)
    truth = exact_top_k(queries, vectors)
    row_of = {track_id: row for row, track_id in enumerate(ids)}
    found_rows = np.array([[row_of[t] for t, _ in hits] for hits in found])
    recall = recall_at_k(truth, found_rows)
    print(f"recall@10 over 2 approximate shards on 500 unseen queries: {recall:.3f}")
    assert recall >= 0.95
