"""Clustered random unit vectors: many tight-ish groups, like renditions of works.

Each vector is a random cluster centre plus Gaussian noise whose norm is about
``spread`` times the centre's, normalised. With spread 1.0 two members of one
cluster have cosine about 0.5 and members of different clusters about 0: close
neighbours exist, but within a cluster they are hard to tell apart, which is
what makes approximate search earn its recall.
"""

import numpy as np
import numpy.typing as npt


def clustered_vectors(
    count: int, dim: int, *, clusters: int | None = None, spread: float = 1.0, seed: int = 0
) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    clusters = clusters or max(1, count // 100)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, clusters, count)
    noise = rng.standard_normal((count, dim)).astype(np.float32) * (spread / np.sqrt(dim))
    vectors = centres[labels] + noise
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32)
