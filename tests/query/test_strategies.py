"""Each strategy's defining property, on vectors built to show it (pure logic)."""

from __future__ import annotations

import itertools

import faiss
import numpy as np
import pytest

from mess.contracts.storage import SnapshotManifest
from mess.query.searcher import LoadedShard, SnapshotSearcher
from mess.query.snapshots import SnapshotRefusedError, canary
from mess.query.strategies import (
    Candidate,
    ComplementaryStrategy,
    Limits,
    ParameterError,
    RawParams,
    StrategyName,
    build_strategy,
    complementary,
    diverse,
    exploration,
    hybrid,
    kmeans,
    similarity,
)

from .snapshot_writer import FloatMatrix, unit_rows


def _candidates(reference: FloatMatrix, vectors: FloatMatrix) -> list[Candidate]:
    scores = vectors @ reference
    order = np.argsort(-scores, kind="stable")
    return [Candidate(f"t{i:03d}", float(scores[i])) for i in order]


def _ordered(vectors: FloatMatrix, candidates: list[Candidate]) -> FloatMatrix:
    return np.stack([vectors[int(c.track_id[1:])] for c in candidates])


def _mean_pairwise(vectors: FloatMatrix) -> float:
    pairs = list(itertools.combinations(range(len(vectors)), 2))
    return float(np.mean([vectors[a] @ vectors[b] for a, b in pairs]))


@pytest.fixture
def near_duplicates() -> tuple[FloatMatrix, FloatMatrix]:
    """A reference, five near-copies of one direction close to it, and a spread of others."""
    rng = np.random.default_rng(3)
    reference = unit_rows(rng.normal(size=(1, 32)))[0]
    twin = unit_rows([reference + 0.4 * rng.normal(size=32)])[0]
    copies = unit_rows(twin + 0.02 * rng.normal(size=(5, 32)))
    others = unit_rows(reference + 0.9 * rng.normal(size=(40, 32)))
    return reference, np.vstack([copies, others]).astype(np.float32)


def test_similarity_is_the_top_k_in_order(near_duplicates: tuple[FloatMatrix, FloatMatrix]) -> None:
    reference, vectors = near_duplicates
    candidates = _candidates(reference, vectors)
    picks = similarity(candidates, 6)
    scores = vectors @ reference
    assert [p.track_id for p in picks] == [f"t{i:03d}" for i in np.argsort(-scores)[:6]]
    assert all("most similar" in p.explanation for p in picks)


def test_diverse_picks_are_less_alike_than_plain_top_k(near_duplicates: tuple[FloatMatrix, FloatMatrix]) -> None:
    reference, vectors = near_duplicates
    candidates = _candidates(reference, vectors)
    ordered = _ordered(vectors, candidates)
    top = similarity(candidates, 5)
    mmr = diverse(candidates, ordered, 5, lambda_=0.3)
    top_vectors = np.stack([vectors[int(p.track_id[1:])] for p in top])
    mmr_vectors = np.stack([vectors[int(p.track_id[1:])] for p in mmr])
    assert _mean_pairwise(mmr_vectors) < _mean_pairwise(top_vectors) - 0.1
    # lambda 1 is pure relevance: MMR then equals plain similarity.
    assert [p.track_id for p in diverse(candidates, ordered, 5, lambda_=1.0)] == [p.track_id for p in top]
    assert "MMR pick" in mmr[1].explanation and "similar to the tracks picked before it" in mmr[1].explanation


def test_complementary_takes_one_pick_from_each_cluster() -> None:
    rng = np.random.default_rng(5)
    reference = unit_rows(rng.normal(size=(1, 24)))[0]
    directions = unit_rows(reference + 0.8 * rng.normal(size=(4, 24)))
    # The first cluster is the closest and the largest: plain top-k comes only from it.
    sizes = [20, 6, 6, 6]
    vectors = np.vstack(
        [unit_rows(d + 0.05 * rng.normal(size=(n, 24))) for d, n in zip(directions, sizes, strict=True)]
    ).astype(np.float32)
    cluster_of = {f"t{i:03d}": c for i, c in enumerate(np.repeat(np.arange(4), sizes))}
    candidates = _candidates(reference, vectors)
    picks = complementary(candidates, _ordered(vectors, candidates), 4)
    assert sorted(cluster_of[p.track_id] for p in picks) == [0, 1, 2, 3]
    # Each pick is the member of its cluster closest to the reference.
    for pick in picks:
        members = [c for c in candidates if cluster_of[c.track_id] == cluster_of[pick.track_id]]
        assert pick.track_id == members[0].track_id
    top_clusters = {cluster_of[p.track_id] for p in similarity(candidates, 4)}
    assert len(top_clusters) < 4
    assert "group 1 of 4" in picks[0].explanation


def test_kmeans_is_deterministic_per_seed() -> None:
    vectors = unit_rows(np.random.default_rng(1).normal(size=(60, 8)))
    assert np.array_equal(kmeans(vectors, 5, seed=2), kmeans(vectors, 5, seed=2))


def test_exploration_stays_above_the_floor_and_is_reproducible_by_seed(
    near_duplicates: tuple[FloatMatrix, FloatMatrix],
) -> None:
    reference, vectors = near_duplicates
    candidates = _candidates(reference, vectors)
    floor = float(np.median([c.similarity for c in candidates]))
    first = exploration(candidates, 6, floor, seed=1)
    assert len(first) == 6
    assert all(p.similarity >= floor for p in first)
    assert [p.track_id for p in exploration(candidates, 6, floor, seed=1)] == [p.track_id for p in first]
    draws = {tuple(p.track_id for p in exploration(candidates, 6, floor, seed=s)) for s in range(10)}
    assert len(draws) > 5  # different seeds, different picks
    assert any(set(d) != {p.track_id for p in similarity(candidates, 6)} for d in draws)
    # Too high a floor: fewer picks, never one below it.
    assert exploration(candidates, 6, 0.99, seed=1) == []


def test_hybrid_lets_shared_metadata_outrank_slightly_higher_similarity() -> None:
    candidates = [Candidate("other-composer", 0.90), Candidate("same-composer", 0.85), Candidate("far", 0.2)]
    reference = {"composer": "Bach", "era": "Baroque", "form": "fugue"}
    metadata: dict[str, dict[str, str | None]] = {
        "other-composer": {"composer": "Liszt", "era": "Romantic", "form": "etude"},
        "same-composer": {"composer": "bach", "era": "Baroque", "form": None},
        "far": {"composer": "Bach", "era": "Baroque", "form": "fugue"},
    }
    weights = {"similarity": 0.6, "composer": 0.2, "era": 0.1, "form": 0.1}
    picks = hybrid(candidates, 2, weights, reference, metadata)
    assert [p.track_id for p in picks] == ["same-composer", "other-composer"]
    assert "same composer (Bach)" in picks[0].explanation and "same era (Baroque)" in picks[0].explanation
    only_similarity = {"similarity": 1.0, "composer": 0.0, "era": 0.0, "form": 0.0}
    assert [p.track_id for p in hybrid(candidates, 2, only_similarity, reference, metadata)] == [
        "other-composer",
        "same-composer",
    ]


LIMITS = Limits(max_pool=1000, max_work=1e9)


def test_parameters_are_resolved_with_defaults_and_checked() -> None:
    resolved = build_strategy(StrategyName.diverse, 10, RawParams(), LIMITS, 16)
    assert resolved.params() == {"pool": 50, "lambda": 0.5}
    weights = build_strategy(StrategyName.balanced, 5, RawParams(weights="composer=0.5, era:0"), LIMITS, 16)
    assert weights.params()["weights"] == {"similarity": 0.6, "composer": 0.5, "era": 0.0, "form": 0.1}
    with pytest.raises(ParameterError, match="applies to exploration"):
        build_strategy(StrategyName.diverse, 10, RawParams(seed=3), LIMITS, 16)
    with pytest.raises(ParameterError, match="is not name:value"):
        build_strategy(StrategyName.balanced, 10, RawParams(weights="composer"), LIMITS, 16)
    with pytest.raises(ParameterError, match="at least one weight"):
        build_strategy(StrategyName.balanced, 10, RawParams(weights="similarity:0,composer:0,era:0,form:0"), LIMITS, 16)


def test_float_spellings_of_one_value_give_one_set_of_parameters() -> None:
    spellings = ["similarity:0.6", "similarity:0.600000000", "similarity:6e-1", "similarity:0.60000001"]
    keys = {str(build_strategy(StrategyName.balanced, 5, RawParams(weights=w), LIMITS, 16).params()) for w in spellings}
    assert len(keys) == 1
    lambdas = {
        build_strategy(StrategyName.diverse, 5, RawParams(lambda_=v), LIMITS, 16).params()["lambda"]
        for v in (0.3, 0.30000000001, 0.2999999999, 3e-1)
    }
    assert lambdas == {0.3}


def test_every_strategy_is_held_to_the_work_budget() -> None:
    # k-means at k=100 over 1000 MERT-sized vectors: about 2.6e9 operations for one run.
    with pytest.raises(ParameterError, match="lower pool or k"):
        build_strategy(StrategyName.complementary, 100, RawParams(pool=1000), LIMITS, 768)
    # Within budget, complementary buys only the restarts the budget pays for.
    fitted = build_strategy(StrategyName.complementary, 40, RawParams(pool=500), LIMITS, 768)
    assert isinstance(fitted, ComplementaryStrategy) and 1 <= fitted.restarts < 5
    assert fitted.work(768) <= LIMITS.max_work
    for name in StrategyName:
        strategy = build_strategy(name, 10, RawParams(), LIMITS, 768)
        assert strategy.work(768) <= LIMITS.max_work


def _flat_shard(shard: int, ids: list[str], vectors: FloatMatrix) -> LoadedShard:
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return LoadedShard(shard=shard, index=index, ids=tuple(ids), vectors=vectors, reuse_key=(str(shard), "", "", ""))


def _manifest(count: int, dim: int) -> SnapshotManifest:
    return SnapshotManifest.model_validate(
        {
            "version": "000000000001",
            "created_at": "2026-01-01T00:00:00Z",
            "model": {"name": "test", "revision": "1", "dim": dim, "pooling": "none"},
            "dim": dim,
            "shard_count": 3,
            "vector_count": count,
            "shards": [],
        }
    )


def test_sharded_search_merges_to_the_exact_top_k_of_one_index() -> None:
    vectors = unit_rows(np.random.default_rng(9).normal(size=(300, 12)))
    ids = [f"t{i:03d}" for i in range(300)]
    shards = tuple(_flat_shard(s, ids[s::3], vectors[s::3]) for s in range(3))
    searcher = SnapshotSearcher(manifest=_manifest(300, 12), shards=shards)
    for row in (0, 77, 299):
        expected = [ids[i] for i in np.argsort(-(vectors @ vectors[row]), kind="stable")[:25]]
        found = searcher.search(searcher.vector_of(ids[row]), 25)
        assert [n.track_id for n in found] == expected
        assert np.allclose(searcher.vectors_of(found[:3]), vectors[[int(i[1:]) for i in expected[:3]]])
    canary(searcher, rows_per_shard=3, k=5)


def test_canary_refuses_vectors_that_do_not_line_up_with_the_index() -> None:
    vectors = unit_rows(np.random.default_rng(4).normal(size=(30, 12)))
    ids = [f"t{i:03d}" for i in range(30)]
    shard = _flat_shard(0, ids, vectors)
    misaligned = LoadedShard(0, shard.index, shard.ids, np.roll(vectors, 1, axis=0), shard.reuse_key)
    searcher = SnapshotSearcher(manifest=_manifest(30, 12), shards=(misaligned,))
    with pytest.raises(SnapshotRefusedError, match="not among its own top"):
        canary(searcher, rows_per_shard=3, k=1)
