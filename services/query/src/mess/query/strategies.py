"""The five recommendation strategies, as pure functions over a candidate pool.

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

The public names are the seed's: similar, balanced, diverse, complementary,
exploration (see ``PUBLIC_NAMES``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

FloatMatrix = npt.NDArray[np.float32]


class Strategy(StrEnum):
    similar = "similar"
    balanced = "balanced"
    diverse = "diverse"
    complementary = "complementary"
    exploration = "exploration"


# The seed's public name -> the algorithm it runs (DESIGN.md).
ALGORITHM = {
    Strategy.similar: "similarity",
    Strategy.balanced: "hybrid",
    Strategy.diverse: "diverse",
    Strategy.complementary: "complementary",
    Strategy.exploration: "exploration",
}

AFFINITY_FIELDS = ("composer", "era", "form")
DEFAULT_WEIGHTS = {"similarity": 0.6, "composer": 0.2, "era": 0.1, "form": 0.1}
DEFAULT_LAMBDA = 0.5
DEFAULT_FLOOR = 0.5
MAX_SEED = 2**32 - 1
# Which parameters each strategy reads; any other one is refused so a typo never silently does nothing.
PARAMETERS: dict[Strategy, frozenset[str]] = {
    Strategy.similar: frozenset(),
    Strategy.balanced: frozenset({"pool", "weights"}),
    Strategy.diverse: frozenset({"pool", "lambda"}),
    Strategy.complementary: frozenset({"pool"}),
    Strategy.exploration: frozenset({"pool", "floor", "seed"}),
}


class ParameterError(ValueError):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


@dataclass(frozen=True)
class StrategyParams:
    """Validated parameters with every default filled in (so cache keys are canonical)."""

    pool: int | None = None
    lambda_: float | None = None
    floor: float | None = None
    seed: int | None = None
    weights: dict[str, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.pool is not None:
            out["pool"] = self.pool
        if self.lambda_ is not None:
            out["lambda"] = self.lambda_
        if self.floor is not None:
            out["floor"] = self.floor
        if self.seed is not None:
            out["seed"] = self.seed
        if self.weights is not None:
            out["weights"] = dict(sorted(self.weights.items()))
        return out


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
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ParameterError("weights", f"{name} must be between 0 and 1, got {value}")
    if sum(weights.values()) <= 0:
        raise ParameterError("weights", "at least one weight must be above 0")
    return weights


def resolve_params(
    strategy: Strategy,
    k: int,
    max_pool: int,
    *,
    pool: int | None = None,
    lambda_: float | None = None,
    floor: float | None = None,
    seed: int | None = None,
    weights: str | dict[str, float] | None = None,
) -> StrategyParams:
    given = {
        name
        for name, value in (("pool", pool), ("lambda", lambda_), ("floor", floor), ("seed", seed), ("weights", weights))
        if value is not None
    }
    allowed = PARAMETERS[strategy]
    for name in sorted(given - allowed):
        users = sorted(s.value for s, params in PARAMETERS.items() if name in params)
        raise ParameterError(name, f"does not apply to strategy {strategy.value}; it applies to {', '.join(users)}")
    if strategy is Strategy.similar:
        return StrategyParams()
    default_pool = {
        Strategy.balanced: max(3 * k, 50),
        Strategy.diverse: max(3 * k, 50),
        Strategy.complementary: max(5 * k, 50),
        Strategy.exploration: max(5 * k, 200),
    }[strategy]
    resolved_pool = min(default_pool, max_pool) if pool is None else pool
    if not k <= resolved_pool <= max_pool:
        raise ParameterError("pool", f"must be between k ({k}) and {max_pool}, got {resolved_pool}")
    if strategy is Strategy.balanced:
        return StrategyParams(pool=resolved_pool, weights=parse_weights(weights or {}))
    if strategy is Strategy.diverse:
        value = DEFAULT_LAMBDA if lambda_ is None else lambda_
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ParameterError("lambda", f"must be between 0 and 1, got {value}")
        return StrategyParams(pool=resolved_pool, lambda_=value)
    if strategy is Strategy.complementary:
        return StrategyParams(pool=resolved_pool)
    value = DEFAULT_FLOOR if floor is None else floor
    if not (math.isfinite(value) and -1.0 <= value <= 1.0):
        raise ParameterError("floor", f"must be between -1 and 1, got {value}")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise ParameterError("seed", f"must be between 0 and {MAX_SEED}, got {seed}")
    return StrategyParams(pool=resolved_pool, floor=value, seed=seed)


@dataclass(frozen=True)
class Candidate:
    track_id: str
    similarity: float


@dataclass(frozen=True)
class Pick:
    track_id: str
    similarity: float
    score: float  # what the strategy ranked by (equals similarity for plain similarity)
    explanation: str


def _fmt(value: float) -> str:
    return f"{value:.3f}"


def similarity(candidates: list[Candidate], k: int) -> list[Pick]:
    return [
        Pick(c.track_id, c.similarity, c.similarity, f"#{rank} most similar (similarity {_fmt(c.similarity)})")
        for rank, c in enumerate(candidates[:k], start=1)
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
    for _ in range(1, clusters):
        distance = np.min([np.sum((unit - c) ** 2, axis=1) for c in centres], axis=0)
        total = distance.sum()
        index = int(rng.choice(count, p=distance / total)) if total > 0 else int(rng.integers(count))
        centres.append(unit[index])
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


def complementary(candidates: list[Candidate], vectors: FloatMatrix, k: int) -> list[Pick]:
    """One pick per cluster of the candidates: the member closest to the reference."""
    if not candidates:
        return []
    labels = kmeans(vectors, k)
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
