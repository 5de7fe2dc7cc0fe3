"""Synthetic vectors and FAISS shards for the query benchmarks (shared by query_load.py
and query_faiss_search.py). Built shards are cached under /tmp so a rerun does not
spend minutes building the same HNSW graphs again.

The vectors are unit-length and clustered (1,000 directions with noise), which is
closer to real music embeddings than uniform noise: neighbours are meaningful and
HNSW has a realistic job to do.
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import numpy.typing as npt

CACHE = Path("/tmp/mess-bench-cache")
FloatMatrix = npt.NDArray[np.float32]


def clustered_vectors(count: int, dim: int, seed: int = 0, clusters: int = 1000) -> FloatMatrix:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = centres[rng.integers(clusters, size=count)] + 0.06 * rng.standard_normal((count, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32)


def track_ids(count: int) -> list[str]:
    return [f"bench-{i:07d}" for i in range(count)]


def search_params(factory: str) -> dict[str, int]:
    return {"efSearch": 64} if factory.startswith("HNSW") else {}


@dataclass
class BuiltShard:
    ids: list[str]
    vectors: FloatMatrix
    index_bytes: bytes


def _npy(matrix: FloatMatrix) -> bytes:
    out = io.BytesIO()
    np.save(out, matrix, allow_pickle=False)
    return out.getvalue()


def build_shard(ids: list[str], vectors: FloatMatrix, factory: str) -> BuiltShard:
    key = hashlib.sha256(_npy(vectors) + factory.encode()).hexdigest()[:20]
    path = CACHE / f"{key}.faiss"
    if path.exists():
        return BuiltShard(ids, vectors, path.read_bytes())
    started = time.perf_counter()
    index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(vectors)
    index.add(vectors)
    raw = bytes(faiss.serialize_index(index).tobytes())
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    print(f"  built {factory} shard of {len(ids)} x {vectors.shape[1]} in {time.perf_counter() - started:.1f}s")
    return BuiltShard(ids, vectors, raw)


def build_shards(count: int, dim: int, shards: int, factory: str, seed: int = 0) -> list[BuiltShard]:
    faiss.omp_set_num_threads(2)
    vectors = clustered_vectors(count, dim, seed)
    ids = track_ids(count)
    return [build_shard(ids[s::shards], np.ascontiguousarray(vectors[s::shards]), factory) for s in range(shards)]


def npy_bytes(matrix: FloatMatrix) -> bytes:
    return _npy(np.ascontiguousarray(matrix, dtype=np.float32))
