"""What the indexer benchmarks share: a synthetic corpus, a private S3 endpoint, memory figures.

Not a benchmark itself. The corpus is clustered random unit vectors (as in
tests/indexer/clustered.py): ``count // 100`` clusters, noise about as long as
the centre, so each track has close neighbours that are hard to tell apart.
Generated in chunks so that a million vectors of dimension 768 cost their
3 GB once, not three times.
"""

from __future__ import annotations

import resource
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import numpy.typing as npt

from mess.contracts.events import ModelIdentity
from mess.dev import stack as local
from mess.indexer.snapshot_store import SnapshotStore
from mess.indexer.track_vectors import ModelGuard, TrackVectors

Matrix = npt.NDArray[np.float32]


def model(dim: int) -> ModelIdentity:
    return ModelIdentity(name="synthetic", revision="bench", dim=dim, pooling="none")


def clustered_blocks(
    count: int, dim: int, *, clusters: int, seed: int, spread: float = 1.0, chunk: int = 100_000
) -> Iterator[Matrix]:
    """``count`` clustered unit vectors, ``chunk`` rows at a time."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    for start in range(0, count, chunk):
        size = min(count, start + chunk) - start
        block = centres[rng.integers(0, clusters, size)]
        block += rng.standard_normal((size, dim), dtype=np.float32) * np.float32(spread / np.sqrt(dim))
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        yield block


def clustered(count: int, dim: int, *, clusters: int, seed: int, spread: float = 1.0) -> Matrix:
    out = np.empty((count, dim), dtype=np.float32)
    start = 0
    for block in clustered_blocks(count, dim, clusters=clusters, seed=seed, spread=spread):
        out[start : start + len(block)] = block
        start += len(block)
    return out


def manifold_blocks(
    count: int, dim: int, *, intrinsic: int = 32, noise: float = 0.1, seed: int = 0, chunk: int = 100_000
) -> Iterator[Matrix]:
    """Vectors with no clusters at all: a random ``intrinsic``-dimensional linear
    subspace of the ``dim`` dimensions, plus a little isotropic noise. Closer to
    embeddings that vary continuously (tempo, timbre, key) than clusters are."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((intrinsic, dim)).astype(np.float32) / np.float32(np.sqrt(intrinsic))
    for start in range(0, count, chunk):
        size = min(count, start + chunk) - start
        block = rng.standard_normal((size, intrinsic), dtype=np.float32) @ basis
        block += rng.standard_normal((size, dim), dtype=np.float32) * np.float32(noise / np.sqrt(dim))
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        yield block


def manifold(count: int, dim: int, *, seed: int = 0) -> Matrix:
    return np.concatenate(list(manifold_blocks(count, dim, seed=seed)))


def corpus(
    count: int, dim: int, queries: int, seed: int = 0, spread: float = 1.0, shape: str = "clusters"
) -> tuple[Matrix, Matrix]:
    """``count`` stored vectors and ``queries`` unseen ones from the same distribution."""
    if shape == "manifold":
        both = manifold(count + queries, dim, seed=seed)
        return both[:count], both[count:]
    both = clustered(count + queries, dim, clusters=max(10, count // 100), seed=seed, spread=spread)
    return both[:count], both[count:]


def track_id(row: int) -> str:
    return f"track-{row:07d}"


def filled_store(vectors: Matrix, shards: int) -> TrackVectors:
    """The indexer's state holding ``vectors``, applied as events would apply them."""
    state = TrackVectors(shards, ModelGuard(None, None))
    identity = model(vectors.shape[1])
    for row in range(len(vectors)):
        state.apply_added(track_id(row), "0" * 64, row)
        state.apply_embedded(track_id(row), identity, vectors[row], "0" * 64)
    return state


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextmanager
def private_s3() -> Iterator[SnapshotStore]:
    """A moto server of our own on a free port, so a benchmark's gigabytes never
    land in the shared stack's endpoint; stopped (and its data gone) afterwards."""
    port = local.free_port()
    logs = Path(tempfile.mkdtemp(prefix="mess-indexer-bench-"))
    pid, _ = local.spawn("s3", local.moto_command("127.0.0.1", port), logs)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        local.wait_for(lambda: local.port_open("127.0.0.1", port), "private S3 endpoint")
        kwargs: dict[str, Any] = {
            "endpoint_url": endpoint,
            "region_name": "us-east-1",
            "aws_access_key_id": "bench",
            "aws_secret_access_key": "bench",
        }
        s3 = boto3.client("s3", **kwargs)
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        s3.create_bucket(Bucket=bucket)
        yield SnapshotStore(s3, bucket)
    finally:
        local.stop_process(pid)


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.started = now - self.started, now
        return elapsed
