"""The five recommendation strategies: one ``Strategy`` interface, one registry, one factory.

Every strategy starts from the reference track's nearest neighbours (the
candidate pool, best first, the reference itself already removed) and picks
``k`` of them, each with a sentence saying why it was picked:

- similarity: the top ``k`` by cosine similarity.
- hybrid: similarity blended with metadata affinity (same composer, era,
  form), by configurable weights.
- diverse: maximal marginal relevance: each pick trades similarity to the
  reference against similarity to the tracks already picked (``lambda``).
- complementary: k-means over the candidates' vectors with ``k`` clusters,
  then the candidate closest to the reference in each cluster.
- exploration: a seeded random sample of the candidates above a similarity
  floor.
- versions: only the candidates the version re-rank (mess.query.version_rerank)
  recognised as the reference's work, best aligned first.

The public names are the seed's: similar, balanced, diverse, complementary,
exploration (``StrategyName``). ``build_strategy`` turns a request's name, ``k``
and raw parameters into one configured ``Strategy``: parameters are checked,
defaults filled in and floats quantised (so two spellings of one request
share one cache key), and the strategy's estimated work is held to a budget,
so no request can ask for unbounded CPU. A strategy says whether it is
``heavy``: heavy ones run on their own bounded threads, never on the search
threads that plain requests wait for.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from mess.query.versions import VersionMatch

FloatMatrix = npt.NDArray[np.float32]


class StrategyName(StrEnum):
    similar = "similar"
    balanced = "balanced"
    diverse = "diverse"
    complementary = "complementary"
    exploration = "exploration"
    versions = "versions"


AFFINITY_FIELDS = ("composer", "era", "form")
DEFAULT_WEIGHTS = {"similarity": 0.6, "composer": 0.2, "era": 0.1, "form": 0.1}
DEFAULT_LAMBDA = 0.5
DEFAULT_FLOOR = 0.5
MAX_SEED = 2**32 - 1
# Floats a client sends are rounded to this many decimals before use: finer
# steps change no answer a listener could tell apart, and each spelling of
# 0.6 would otherwise be a cache entry of its own.
FLOAT_DECIMALS = 3
KMEANS_ITERATIONS = 25
KMEANS_MAX_RESTARTS = 5


class ParameterError(ValueError):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


def quantise(value: float) -> float:
    rounded = round(value, FLOAT_DECIMALS)
    return rounded + 0.0  # -0.0 and 0.0 are one value, and one key


@dataclass(frozen=True)
class RawParams:
    """The strategy parameters as a request gave them (query string or batch body), unchecked."""

    pool: int | None = None
    lambda_: float | None = None
    floor: float | None = None
    seed: int | None = None
    weights: str | dict[str, float] | None = None

    def given(self) -> set[str]:
        named = (("pool", self.pool), ("lambda", self.lambda_), ("floor", self.floor), ("seed", self.seed))
        return {name for name, value in (*named, ("weights", self.weights)) if value is not None}


@dataclass(frozen=True)
class Limits:
    """What one request may cost: the candidate pool, and the estimated floating-point work of its strategy."""

    max_pool: int
    max_work: float


def parse_weights(raw: str | dict[str, float]) -> dict[str, float]:
    """``composer:0.3,era:0.2`` (or ``=``), or a JSON object; unnamed fields keep their default."""
    if isinstance(raw, str):
        given: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in raw.split(","))):
            name, sep, text = part.replace("=", ":").partition(":")
            if not sep:
                raise ParameterError("weights", f"{part!r} is not name:value")
            try:
                given[name.strip()] = float(text)
            except ValueError as exc:
                raise ParameterError("weights", f"{text!r} is not a number") from exc
    else:
        given = dict(raw)
    unknown = sorted(set(given) - set(DEFAULT_WEIGHTS))
    if unknown:
        raise ParameterError("weights", f"unknown names {unknown}; use {sorted(DEFAULT_WEIGHTS)}")
    weights = {**DEFAULT_WEIGHTS, **given}
    for name, value in weights.items():
        if not (isinstance(value, int | float) and math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ParameterError("weights", f"{name} must be between 0 and 1, got {value}")
    weights = {name: quantise(value) for name, value in sorted(weights.items())}
    if sum(weights.values()) <= 0:
        raise ParameterError("weights", "at least one weight must be above 0")
    return weights


def _unit_interval(name: str, value: float, low: float = 0.0) -> float:
    if not (math.isfinite(value) and low <= value <= 1.0):
        raise ParameterError(name, f"must be between {low:g} and 1, got {value}")
    return quantise(value)


@dataclass(frozen=True)
class CandidatePool:
    """What a strategy chooses from: the candidates best first, their vectors on demand, their metadata."""

    candidates: list[Candidate]
    vectors: Callable[[], FloatMatrix]  # aligned with ``candidates``; loaded only by strategies that read them
    reference: Mapping[str, str | None] = field(default_factory=dict)
    metadata: Mapping[str, Mapping[str, str | None]] = field(default_factory=dict)


class Strategy(ABC):
    """One configured way of picking ``k`` tracks from a candidate pool.

    Subclasses declare their public ``name``, the ``algorithm`` it runs, the
    ``parameters`` they read (any other one is refused, so a typo never
    silently does nothing) and whether they are ``heavy``; they build
    themselves from a request in ``from_request`` and estimate their work in
    ``work``.
    """

    name: ClassVar[StrategyName]
    algorithm: ClassVar[str]
    parameters: ClassVar[frozenset[str]]
    #: heavy strategies run on the bounded strategy threads, not the search threads
    heavy: ClassVar[bool] = False

    def __init__(self, k: int, pool: int) -> None:
        self.k = k
        self.pool = pool

    @classmethod
    @abstractmethod
    def from_request(cls, k: int, raw: RawParams, limits: Limits) -> Strategy:
        """The strategy with every default filled in; raises ``ParameterError``."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The parameters in use, canonical (sorted, quantised): part of the cache key and of the answer."""

    @abstractmethod
    def choose(self, pool: CandidatePool) -> list[Pick]:
        """Blocking: at most ``k`` picks, best first."""

    def work(self, dim: int) -> float:
        """Estimated floating-point operations of ``choose`` on vectors of ``dim``."""
        return float(self.pool)

    @property
    def cacheable(self) -> bool:
        """False when each request should get a fresh answer (an unseeded random draw)."""
        return True

    @classmethod
    def _resolve_pool(cls, k: int, given: int | None, default: int, limits: Limits) -> int:
        pool = min(default, limits.max_pool) if given is None else given
        if not k <= pool <= limits.max_pool:
            raise ParameterError("pool", f"must be between k ({k}) and {limits.max_pool}, got {pool}")
        return pool


class SimilarityStrategy(Strategy):
    name = StrategyName.similar
    algorithm = "similarity"
    parameters = frozenset()

    @classmethod
    def from_request(cls, k: int, raw: RawParams, limits: Limits) -> Strategy:
        return cls(k, k)

    def params(self) -> dict[str, Any]:
        return {}

    def choose(self, pool: CandidatePool) -> list[Pick]:
        return similarity(pool.candidates, self.k)


class HybridStrategy(Strategy):
    name = StrategyName.balanced
    algorithm = "hybrid"
    parameters = frozenset({"pool", "weights"})

    def __init__(self, k: int, pool: int, weights: dict[str, float]) -> None:
        super().__init__(k, pool)
        self.weights = weights

    @classmethod
    def from_request(cls, k: int, raw: RawParams, limits: Limits) -> Strategy:
        pool = cls._resolve_pool(k, raw.pool, max(3 * k, 50), limits)
        return cls(k, pool, parse_weights(raw.weights or {}))

    def params(self) -> dict[str, Any]:
        return {"pool": self.pool, "weights": dict(self.weights)}

    def choose(self, pool: CandidatePool) -> list[Pick]:
        return hybrid(pool.candidates, self.k, self.weights, pool.reference, pool.metadata)


class DiverseStrategy(Strategy):
    name = StrategyName.diverse
    algorithm = "diverse"
    parameters = frozenset({"pool", "lambda"})
    heavy = True

    def __init__(self, k: int, pool: int, lambda_: float) -> None:
        super().__init__(k, pool)
        self.lambda_ = lambda_

    @classmethod
    def from_request(cls, k: int, raw: RawParams, limits: Limits) -> Strategy:
        pool = cls._resolve_pool(k, raw.pool, max(3 * k, 50), limits)
        lambda_ = _unit_interval("lambda", DEFAULT_LAMBDA if raw.lambda_ is None else raw.lambda_)
        return cls(k, pool, lambda_)

    def params(self) -> dict[str, Any]:
        return {"lambda": self.lambda_, "pool": self.pool}

    def work(self, dim: int) -> float:
        # the pairwise similarity matrix, then k passes over the pool
        return float(self.pool * self.pool * dim + self.k * self.pool)

    def choose(self, pool: CandidatePool) -> list[Pick]:
        return diverse(pool.candidates, pool.vectors(), self.k, self.lambda_)


class ComplementaryStrategy(Strategy):
    name = StrategyName.complementary
    algorithm = "complementary"
    parameters = frozenset({"pool"})
    heavy = True

    def __init__(self, k: int, pool: int, restarts: int) -> None:
        super().__init__(k, pool)
        self.restarts = restarts

    @staticmethod
    def one_run(k: int, pool: int, dim: int) -> float:
        # k-means++ seeding plus every iteration: a (pool x dim) by (dim x k) product each
        return float((KMEANS_ITERATIONS + 1) * pool * k * dim)

    @classmethod
    def from_request(cls, k: int, raw: RawParams, limits: Limits) -> Strategy:
        pool = cls._resolve_pool(k, raw.pool, max(5 * k, 50), limits)
        return cls(k, pool, KMEANS_MAX_RESTARTS)

    def fitted(self, dim: int, max_work: float) -> ComplementaryStrategy:
        """As many restarts as the budget pays for (at least one), so a large k and pool cost one run."""
        affordable = int(max_work // max(self.one_run(self.k, self.pool, dim), 1.0))
        return ComplementaryStrategy(self.k, self.pool, max(1, min(KMEANS_MAX_RESTARTS, affordable)))

    def params(self) -> dict[str, Any]:
        return {"pool": self.pool, "restarts": self.restarts}

    def work(self, dim: int) -> float:
        return self.restarts * self.one_run(self.k, self.pool, dim)

    def choose(self, pool: CandidatePool) -> list[Pick]:
        return complementary(pool.candidates, pool.vectors(), self.k, restarts=self.restarts)


class ExplorationStrategy(Strategy):
    name = StrategyName.exploration
    algorithm = "exploration"
    parameters = frozenset({"pool", "floor", "seed"})

    def __init__(self, k: int, pool: int, floor: float, seed: int | None) -> None:
        super().__init__(k, pool)
        self.floor = floor
        self.given_seed = seed
        # A fresh draw per request when none is given; the seed is reported so the answer can be reproduced.
        self.seed = random.randint(0, MAX_SEED) if seed is None else seed

    @classmethod
    def from_request(cls, k: int, raw: RawParams, limits: Limits) -> Strategy:
        pool = cls._resolve_pool(k, raw.pool, max(5 * k, 200), limits)
        floor = _unit_interval("floor", DEFAULT_FLOOR if raw.floor is None else raw.floor, low=-1.0)
        if raw.seed is not None and not 0 <= raw.seed <= MAX_SEED:
            raise ParameterError("seed", f"must be between 0 and {MAX_SEED}, got {raw.seed}")
        return cls(k, pool, floor, raw.seed)

    @property
    def cacheable(self) -> bool:
        return self.given_seed is not None  # caching a random draw would freeze it

    def params(self) -> dict[str, Any]:
        return {"floor": self.floor, "pool": self.pool, "seed": self.seed}

    def choose(self, pool: CandidatePool) -> list[Pick]:
        return exploration(pool.candidates, self.k, self.floor, self.seed)


class VersionsStrategy(Strategy):
    """Versions only: the candidates the second stage aligned as the same work. Its pool is ``k``
    because the re-rank looks deeper than any pool on its own (``CandidateReranker.depth``) and
    puts the versions it finds first; with no re-rank, or a snapshot without sequences, it finds none."""

    name = StrategyName.versions
    algorithm = "versions"
    parameters = frozenset()

    @classmethod
    def from_request(cls, k: int, raw: RawParams, limits: Limits) -> Strategy:
        return cls(k, k)

    def params(self) -> dict[str, Any]:
        return {}

    def choose(self, pool: CandidatePool) -> list[Pick]:
        return versions(pool.candidates, self.k)


#: The one registry: public name -> implementation. A new strategy is a new class here, nothing else.
STRATEGIES: dict[StrategyName, type[Strategy]] = {
    cls.name: cls
    for cls in (
        SimilarityStrategy,
        HybridStrategy,
        DiverseStrategy,
        ComplementaryStrategy,
        ExplorationStrategy,
        VersionsStrategy,
    )
}
# The seed's public name -> the algorithm it runs (DESIGN.md).
ALGORITHM = {name: cls.algorithm for name, cls in STRATEGIES.items()}


def build_strategy(name: StrategyName, k: int, raw: RawParams, limits: Limits, dim: int) -> Strategy:
    """The configured strategy for a request; raises ``ParameterError`` (a 422) for a parameter that does
    not apply, is out of range, or asks for more work than ``limits.max_work``."""
    kind = STRATEGIES[name]
    for extra in sorted(raw.given() - kind.parameters):
        users = sorted(n.value for n, c in STRATEGIES.items() if extra in c.parameters)
        raise ParameterError(extra, f"does not apply to strategy {name.value}; it applies to {', '.join(users)}")
    strategy = kind.from_request(k, raw, limits)
    if isinstance(strategy, ComplementaryStrategy):
        strategy = strategy.fitted(dim, limits.max_work)
    work = strategy.work(dim)
    if work > limits.max_work:
        raise ParameterError(
            "pool",
            f"strategy {name.value} with k={k} and pool={strategy.pool} would cost about {work:.2g} operations; "
            f"the limit is {limits.max_work:.2g}: lower pool or k",
        )
    return strategy


@dataclass(frozen=True)
class Candidate:
    track_id: str
    similarity: float
    # set by the version re-rank where both tracks have pitch sequences
    alignment: VersionMatch | None = None


@dataclass(frozen=True)
class Pick:
    track_id: str
    similarity: float
    score: float  # what the strategy ranked by (equals similarity for plain similarity)
    explanation: str
    # the candidate's alignment with the reference, copied from it after the strategy chose
    alignment: VersionMatch | None = None


def _fmt(value: float) -> str:
    return f"{value:.3f}"


def similarity(candidates: list[Candidate], k: int) -> list[Pick]:
    # Candidates arrive in the re-rank's order: recognised versions of the work first.
    return [
        Pick(
            c.track_id,
            c.similarity,
            c.similarity,
            f"#{rank}: {describe_version(c.alignment)}; similarity {_fmt(c.similarity)}"
            if c.alignment is not None and c.alignment.same_work
            else f"#{rank} most similar (similarity {_fmt(c.similarity)})",
        )
        for rank, c in enumerate(candidates[:k], start=1)
    ]


def describe_version(match: VersionMatch) -> str:
    relations = [f"{match.aligned_seconds:g} s aligned"] if match.aligned_seconds is not None else []
    if match.key_shift:
        relations.append(f"{match.key_shift:+d} semitones")
    if match.tempo_ratio is not None:
        relations.append(f"tempo x{match.tempo_ratio:g}")
    return f"a version of the same work (alignment {_fmt(match.score)}{''.join(', ' + r for r in relations)})"


def versions(candidates: list[Candidate], k: int) -> list[Pick]:
    """The recognised versions among the candidates, best aligned first (the re-rank's order)."""
    found = [c for c in candidates if c.alignment is not None and c.alignment.same_work]
    return [
        Pick(
            c.track_id,
            c.similarity,
            c.alignment.score,
            f"#{rank}: {describe_version(c.alignment)}; similarity {_fmt(c.similarity)}",
        )
        for rank, c in enumerate(found[:k], start=1)
        if c.alignment is not None
    ]


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a.strip().lower() == b.strip().lower()


def hybrid(
    candidates: list[Candidate],
    k: int,
    weights: dict[str, float],
    reference: Mapping[str, str | None],
    metadata: Mapping[str, Mapping[str, str | None]],
) -> list[Pick]:
    """Score = weighted mean of cosine similarity and one 0/1 match per metadata field."""
    total = sum(weights.values())
    scored = []
    for candidate in candidates:
        fields = metadata.get(candidate.track_id, {})
        matches = [name for name in AFFINITY_FIELDS if _same(reference.get(name), fields.get(name))]
        affinity = sum(weights[name] for name in matches)
        score = (weights["similarity"] * candidate.similarity + affinity) / total
        scored.append((score, candidate, matches))
    scored.sort(key=lambda item: -item[0])
    picks = []
    for score, candidate, matches in scored[:k]:
        shared = ", ".join(f"same {name} ({reference[name]})" for name in matches) or "no shared composer, era or form"
        picks.append(
            Pick(
                candidate.track_id,
                candidate.similarity,
                score,
                f"blended score {_fmt(score)}: similarity {_fmt(candidate.similarity)}; {shared}",
            )
        )
    return picks


def _normalised(vectors: FloatMatrix) -> FloatMatrix:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit: FloatMatrix = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return unit


def diverse(candidates: list[Candidate], vectors: FloatMatrix, k: int, lambda_: float) -> list[Pick]:
    """Maximal marginal relevance (Carbonell and Goldstein, 1998)."""
    if not candidates:
        return []
    unit = _normalised(vectors)
    pairwise = unit @ unit.T
    relevance = np.array([c.similarity for c in candidates], dtype=np.float64)
    chosen: list[int] = []
    closest = np.full(len(candidates), -np.inf)  # max similarity to anything chosen so far
    picks = []
    for _ in range(min(k, len(candidates))):
        redundancy = np.where(np.isfinite(closest), closest, 0.0)
        mmr = lambda_ * relevance - (1.0 - lambda_) * redundancy
        mmr[chosen] = -np.inf
        best = int(np.argmax(mmr))
        candidate = candidates[best]
        if chosen:
            why = f"at most {_fmt(float(closest[best]))} similar to the tracks picked before it"
        else:
            why = "the most relevant candidate"
        picks.append(
            Pick(
                candidate.track_id,
                candidate.similarity,
                float(mmr[best]),
                f"MMR pick (lambda {lambda_:g}): similarity {_fmt(candidate.similarity)} to the reference, {why}",
            )
        )
        chosen.append(best)
        closest = np.maximum(closest, pairwise[best])
    return picks


def _kmeans_once(
    unit: npt.NDArray[np.float64], clusters: int, rng: np.random.Generator, iterations: int
) -> tuple[float, npt.NDArray[np.int64]]:
    count = unit.shape[0]
    centres = [unit[int(rng.integers(count))]]
    # The distance to the nearest centre so far, kept as a running minimum: seeding
    # costs O(k * pool * dim), not the O(k^2 * pool * dim) of recomputing it per centre.
    distance = np.sum((unit - centres[0]) ** 2, axis=1)
    for _ in range(1, clusters):
        total = distance.sum()
        index = int(rng.choice(count, p=distance / total)) if total > 0 else int(rng.integers(count))
        centres.append(unit[index])
        distance = np.minimum(distance, np.sum((unit - unit[index]) ** 2, axis=1))
    centre_matrix = np.array(centres)
    labels = np.full(count, -1, dtype=np.int64)
    for _ in range(iterations):
        new_labels = np.argmax(unit @ centre_matrix.T, axis=1).astype(np.int64)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        for cluster in range(clusters):
            members = unit[labels == cluster]
            if len(members):
                centre = members.mean(axis=0)
                centre_matrix[cluster] = centre / max(float(np.linalg.norm(centre)), 1e-12)
    cohesion = float(np.sum(unit * centre_matrix[labels]))  # total cosine to own centre
    return cohesion, labels


def kmeans(
    vectors: FloatMatrix, clusters: int, seed: int = 0, iterations: int = 25, restarts: int = 5
) -> npt.NDArray[np.int64]:
    """Cluster labels by spherical k-means (k-means++ starts, on unit vectors).

    Several starts, keeping the most cohesive, because one unlucky start can split a
    big cluster and merge two small ones. Deterministic for a given seed.
    """
    unit = _normalised(vectors).astype(np.float64)
    clusters = min(clusters, unit.shape[0])
    rng = np.random.default_rng(seed)
    best = max((_kmeans_once(unit, clusters, rng, iterations) for _ in range(restarts)), key=lambda r: r[0])
    return best[1]


def complementary(
    candidates: list[Candidate], vectors: FloatMatrix, k: int, restarts: int = KMEANS_MAX_RESTARTS
) -> list[Pick]:
    """One pick per cluster of the candidates: the member closest to the reference."""
    if not candidates:
        return []
    labels = kmeans(vectors, k, iterations=KMEANS_ITERATIONS, restarts=restarts)
    best_of: dict[int, int] = {}
    sizes: dict[int, int] = {}
    for position, label in enumerate(labels.tolist()):
        sizes[label] = sizes.get(label, 0) + 1
        # candidates arrive best first, so the first member seen is the closest
        best_of.setdefault(label, position)
    ordered = sorted(best_of.items(), key=lambda item: item[1])
    clusters = len(ordered)
    return [
        Pick(
            candidates[position].track_id,
            candidates[position].similarity,
            candidates[position].similarity,
            f"closest to the reference (similarity {_fmt(candidates[position].similarity)}) "
            f"in group {number} of {clusters} among the {len(candidates)} nearest tracks "
            f"({sizes[label]} tracks in the group)",
        )
        for number, (label, position) in enumerate(ordered, start=1)
    ]


def exploration(candidates: list[Candidate], k: int, floor: float, seed: int) -> list[Pick]:
    """A uniform random sample, reproducible by seed, of the candidates at or above the floor."""
    eligible = [c for c in candidates if c.similarity >= floor]
    sample = random.Random(seed).sample(eligible, min(k, len(eligible)))
    sample.sort(key=lambda c: -c.similarity)
    return [
        Pick(
            c.track_id,
            c.similarity,
            c.similarity,
            f"random pick (seed {seed}) among {len(eligible)} tracks with similarity >= {floor:g}; "
            f"this one {_fmt(c.similarity)}",
        )
        for c in sample
    ]
