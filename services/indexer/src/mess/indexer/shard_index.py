"""FAISS indexes for one shard: which type, how it is built and tuned.

A shard below ``flat_threshold`` vectors gets an exact ``Flat`` index (inner
product on unit vectors is cosine). Above it, the configured approximate
factory strings are candidates (``HNSW32,SQ8|IVF{nlist},SQ8`` by default;
``{nlist}`` is filled from the shard size). Each candidate's one search-time
knob (``efSearch`` for HNSW, ``nprobe`` for IVF) is tuned on the spot: the
smallest value on a ladder whose recall@10 against exact search reaches the
target on a sample of stored vectors. With several candidates, each is built
and tuned, and the one that searched the sample fastest while reaching the
target is kept: which family wins depends on the data (IVF on well-separated
clusters, HNSW on continuous data; see the README's figures), so it is
measured, not guessed. The choice sticks to a shard until its size doubles or
halves, so a shard rebuilt for a few changes builds one index, not all.

The tuned value goes into the manifest (``search_params``) so the query
service searches with the same setting; its keys are ``faiss.ParameterSpace``
names.
"""

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

Matrix = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]

FLAT = "Flat"
RECALL_K = 10
# Candidate values, cheapest first; the first that reaches the target wins.
EF_SEARCH_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
NPROBE_LADDER = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


class IndexBuildError(ValueError):
    """The factory string cannot make an index for these vectors."""


@dataclass(frozen=True)
class IndexPlan:
    factory: str
    tuned_parameter: str | None  # "efSearch", "nprobe", or None for exact search

    @property
    def exact(self) -> bool:
        return self.tuned_parameter is None


def nlist_for(count: int) -> int:
    """IVF list count: about 4·sqrt(n), with at least 39 training points per list
    (FAISS warns below that)."""
    return max(1, min(count // 39, int(4 * math.sqrt(count))))


def tuned_parameter_of(factory: str) -> str | None:
    """The search-time knob of a factory string; a leading transform (``PCA256,``,
    ``OPQ64,``) is allowed, FAISS's ParameterSpace reaches through it."""
    if factory == FLAT:
        return None
    body = factory.split(",", 1)[1] if factory.startswith(("PCA", "OPQ")) and "," in factory else factory
    if body.startswith("HNSW"):
        return "efSearch"
    if body.startswith("IVF"):
        return "nprobe"
    raise IndexBuildError(
        f"index factory {factory!r} is neither Flat nor an HNSW or IVF family whose search can be tuned"
    )


def templates_of(approximate_factory: str) -> list[str]:
    """The candidate factory templates of a setting like ``HNSW32,SQ8|IVF{nlist},SQ8``."""
    return [t.strip() for t in approximate_factory.split("|") if t.strip()]


def plan_for(count: int, *, flat_threshold: int, approximate_factory: str) -> IndexPlan:
    """The plan for one template (the first, if the setting names several)."""
    template = templates_of(approximate_factory)[0]
    if count == 0 or count < flat_threshold or template == FLAT:
        return IndexPlan(FLAT, None)
    factory = template.replace("{nlist}", str(nlist_for(count)))
    return IndexPlan(factory, tuned_parameter_of(factory))


def candidate_plans(
    count: int, *, flat_threshold: int, approximate_factory: str, previous: tuple[str, int] | None = None
) -> list[IndexPlan]:
    """Every plan worth building for a shard of ``count`` vectors.

    ``previous`` is the shard's last (factory, count): if that factory came
    from one of the templates and the shard is within a factor of two of that
    size, that template alone is planned (the choice sticks)."""
    templates = templates_of(approximate_factory)
    plans = [plan_for(count, flat_threshold=flat_threshold, approximate_factory=t) for t in templates]
    if plans[0].exact:
        return [plans[0]]
    if previous is not None and len(plans) > 1:
        factory, previous_count = previous
        if previous_count and 0.5 <= count / previous_count <= 2.0:
            for template, plan in zip(templates, plans, strict=True):
                if plan_for(previous_count, flat_threshold=0, approximate_factory=template).factory == factory:
                    return [plan]
    return plans


def factory_fits(factory: str, count: int, *, flat_threshold: int, approximate_factory: str) -> bool:
    """Whether the settings could have chosen ``factory`` for a shard of ``count``."""
    plans = candidate_plans(count, flat_threshold=flat_threshold, approximate_factory=approximate_factory)
    return factory in {plan.factory for plan in plans}


def check_factory(approximate_factory: str, dim: int) -> None:
    """Fail early (at start-up) on a factory string FAISS cannot build for ``dim``."""
    for template in templates_of(approximate_factory):
        if template == FLAT:
            continue
        factory = template.replace("{nlist}", "16")
        tuned_parameter_of(factory)
        try:
            faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise IndexBuildError(f"FAISS cannot build {factory!r} for dimension {dim}: {exc}") from exc


@dataclass(frozen=True)
class BuiltShardIndex:
    factory: str
    search_params: dict[str, int]
    index_bytes: bytes
    recall_at_10: float | None  # measured on the tuning sample; None for exact
    build_seconds: float


def build_index(vectors: Matrix, plan: IndexPlan, *, ef_construction: int = 40) -> faiss.Index:
    dim = vectors.shape[1]
    try:
        index = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise IndexBuildError(f"FAISS cannot build {plan.factory!r} for dimension {dim}: {exc}") from exc
    if plan.tuned_parameter == "efSearch":
        hnsw_index: Any = faiss.downcast_index(index)
        if isinstance(hnsw_index, faiss.IndexPreTransform):
            hnsw_index = faiss.downcast_index(hnsw_index.index)
        hnsw_index.hnsw.efConstruction = ef_construction
    if plan.tuned_parameter == "nprobe":
        ivf: Any = faiss.downcast_index(faiss.extract_index_ivf(index))
        if hasattr(ivf, "do_polysemous_training"):
            # On by default for IVF-PQ, it takes minutes and only serves
            # Hamming-distance filtering, which the indexer never enables.
            ivf.do_polysemous_training = False
    if not index.is_trained and len(vectors):
        index.train(_training_sample(vectors, plan))
    if len(vectors):
        index.add(vectors)
    return index


def _training_sample(vectors: Matrix, plan: IndexPlan) -> Matrix:
    # Scalar quantizers only need each dimension's range; k-means needs a
    # sample big enough for its lists but gains little beyond 256 per list.
    if plan.tuned_parameter != "nprobe":
        return vectors
    limit = 256 * nlist_for(len(vectors))
    if len(vectors) <= limit:
        return vectors
    rows = np.random.default_rng(0).choice(len(vectors), size=limit, replace=False)
    return vectors[np.sort(rows)]


def exact_top_k(queries: Matrix, vectors: Matrix, k: int = RECALL_K) -> Labels:
    """Row numbers of the exact top-k by inner product (-1 where fewer exist)."""
    if len(vectors) == 0 or len(queries) == 0:
        return np.full((len(queries), k), -1, dtype=np.int64)
    _, labels = faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
    return np.asarray(labels, dtype=np.int64)


def recall_at_k(truth: Labels, found: Labels) -> float:
    """Share of the true neighbours found; rows with no true neighbours are skipped."""
    hits = total = 0
    for true_row, found_row in zip(truth, found, strict=True):
        wanted = {int(label) for label in true_row if label >= 0}
        if not wanted:
            continue
        hits += len(wanted & {int(label) for label in found_row})
        total += len(wanted)
    return hits / total if total else 1.0


@dataclass(frozen=True)
class TuningTruth:
    labels: Labels  # exact top-10 per query, its own row left out
    own_rows: list[set[int]]  # rows identical to the query (itself), per query


# Inner product of a unit vector with itself, less float rounding: a "self" match.
_SELF = 1.0 - 1e-5


def tuning_truth(queries: Matrix, vectors: Matrix) -> TuningTruth:
    """Exact neighbours for tuning, the query's own row left out.

    The tuning queries are stored vectors, and a stored vector always finds
    itself, which would flatter recall. What a listener gets is the ten
    nearest *other* tracks (the query service drops the track itself), so
    that is what is measured: exact top-11 minus any row identical to the
    query, cut to ten. Queries from other shards have no such row.
    """
    count = len(queries)
    if len(vectors) == 0 or count == 0:
        return TuningTruth(np.full((count, RECALL_K), -1, dtype=np.int64), [set() for _ in range(count)])
    scores, labels = faiss.knn(queries, vectors, RECALL_K + 1, metric=faiss.METRIC_INNER_PRODUCT)
    truth = np.full((count, RECALL_K), -1, dtype=np.int64)
    own_rows = []
    for row in range(count):
        own = {int(label) for label, score in zip(labels[row], scores[row], strict=True) if score >= _SELF}
        others = [int(label) for label in labels[row] if label >= 0 and int(label) not in own][:RECALL_K]
        truth[row, : len(others)] = others
        own_rows.append(own)
    return TuningTruth(truth, own_rows)


def tune(
    index: faiss.Index, parameter: str, queries: Matrix, truth: TuningTruth, target_recall: float
) -> tuple[int, float]:
    """The cheapest ladder value reaching ``target_recall`` against ``truth``,
    and the recall it got. If none does, the largest value and its recall
    (the caller logs a warning)."""
    space = faiss.ParameterSpace()
    ladder: tuple[int, ...] = EF_SEARCH_LADDER if parameter == "efSearch" else NPROBE_LADDER
    if parameter == "nprobe":
        nlist = int(faiss.extract_index_ivf(index).nlist)
        ladder = (*(v for v in ladder if v < nlist), nlist)
    value, recall = ladder[-1], 0.0
    for candidate in ladder:
        space.set_index_parameter(index, parameter, candidate)
        # One more than asked for, since the query's own row may take a place.
        _, found = index.search(queries, RECALL_K + 1)
        others = np.full((len(queries), RECALL_K), -1, dtype=np.int64)
        for row, own in enumerate(truth.own_rows):
            kept = [int(label) for label in found[row] if int(label) not in own][:RECALL_K]
            others[row, : len(kept)] = kept
        recall = recall_at_k(truth.labels, others)
        value = candidate
        if recall >= target_recall:
            break
    space.set_index_parameter(index, parameter, value)
    return value, recall


@dataclass(frozen=True)
class CandidateResult:
    factory: str
    search_params: dict[str, int]
    recall_at_10: float
    search_ms: float  # mean single-query time on the tuning sample


def build_shard_index(
    vectors: Matrix,
    plans: IndexPlan | list[IndexPlan],
    *,
    tuning_queries: Matrix,
    target_recall: float,
    ef_construction: int = 40,
) -> BuiltShardIndex:
    """Build, tune and serialise one shard's index (blocking; FAISS releases the
    GIL). With several plans, the fastest that reaches the target is kept."""
    started = time.perf_counter()
    candidates = plans if isinstance(plans, list) else [plans]
    best: tuple[faiss.Index, IndexPlan, dict[str, int], float | None] | None = None
    results: list[CandidateResult] = []
    for plan in candidates:
        index = build_index(vectors, plan, ef_construction=ef_construction)
        search_params: dict[str, int] = {}
        recall: float | None = None
        if plan.tuned_parameter is not None and len(vectors) and len(tuning_queries):
            truth = tuning_truth(tuning_queries, vectors)
            value, recall = tune(index, plan.tuned_parameter, tuning_queries, truth, target_recall)
            search_params[plan.tuned_parameter] = value
        if len(candidates) == 1:
            best = (index, plan, search_params, recall)
            break
        result = CandidateResult(plan.factory, search_params, recall or 0.0, _search_ms(index, tuning_queries))
        results.append(result)
        if best is None or _better(result, results, best[1].factory, target_recall):
            best = (index, plan, search_params, recall)
    assert best is not None
    index, plan, search_params, recall = best
    if len(candidates) > 1:
        log.info(
            "shard of %d vectors: chose %s among %s",
            len(vectors),
            plan.factory,
            "; ".join(
                f"{r.factory} {r.search_params} recall {r.recall_at_10:.3f} {r.search_ms:.3f} ms" for r in results
            ),
        )
    if recall is not None and recall < target_recall:
        log.warning(
            "index %s on %d vectors reaches recall@10 %.3f at most (%s), below the target %.2f",
            plan.factory,
            len(vectors),
            recall,
            search_params,
            target_recall,
        )
    index_bytes = faiss.serialize_index(index).tobytes()
    return BuiltShardIndex(
        factory=plan.factory,
        search_params=search_params,
        index_bytes=index_bytes,
        recall_at_10=recall,
        build_seconds=time.perf_counter() - started,
    )


def _search_ms(index: faiss.Index, queries: Matrix, limit: int = 200) -> float:
    """Mean time of one query at a time, as the query service searches."""
    sample = queries[:limit]
    if len(sample) == 0:
        return 0.0
    started = time.perf_counter()
    for row in range(len(sample)):
        index.search(sample[row : row + 1], RECALL_K + 1)
    return (time.perf_counter() - started) * 1000 / len(sample)


def _better(result: CandidateResult, results: list[CandidateResult], best_factory: str, target: float) -> bool:
    """Whether ``result`` beats the best so far: reaching the target first, then
    speed; if neither reaches it, recall."""
    best = next(r for r in results if r.factory == best_factory)
    if (result.recall_at_10 >= target) != (best.recall_at_10 >= target):
        return result.recall_at_10 >= target
    if result.recall_at_10 >= target:
        return result.search_ms < best.search_ms
    return result.recall_at_10 > best.recall_at_10


def load_index(index_bytes: bytes, search_params: dict[str, int]) -> faiss.Index:
    index = faiss.deserialize_index(np.frombuffer(index_bytes, dtype=np.uint8))
    space = faiss.ParameterSpace()
    for name, value in search_params.items():
        space.set_index_parameter(index, name, value)
    return index


def search_shards(
    shards: Sequence[tuple[faiss.Index, Sequence[str]]], queries: Matrix, k: int
) -> list[list[tuple[str, float]]]:
    """Top-k over all shards: each shard's top-k, merged by score. This is the
    reference merge the benchmarks and tests measure recall with; the query
    service does the same over its loaded snapshot."""
    merged: list[list[tuple[str, float]]] = [[] for _ in range(len(queries))]
    for index, ids in shards:
        if index.ntotal == 0:
            continue
        scores, labels = index.search(queries, min(k, index.ntotal))
        for row in range(len(queries)):
            merged[row].extend(
                (ids[int(label)], float(score))
                for score, label in zip(scores[row], labels[row], strict=True)
                if label >= 0
            )
    # Ties are broken by track id so the merge is deterministic.
    return [sorted(hits, key=lambda hit: (-hit[1], hit[0]))[:k] for hits in merged]
