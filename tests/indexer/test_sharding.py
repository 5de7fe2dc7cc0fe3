"""The shard rule, and that sharding does not change exact search results."""

import hashlib
from collections import Counter

import faiss
import numpy as np
import pytest

from mess.indexer.shard_index import search_shards
from mess.indexer.sharding import shard_of

from .clustered import clustered_vectors


def test_shard_of_is_sha256_first_eight_bytes_big_endian_mod_count() -> None:
    for track_id in ("a", "track-1", "maestro-2004-01-abc123def456"):
        expected = int.from_bytes(hashlib.sha256(track_id.encode()).digest()[:8], "big") % 8
        assert shard_of(track_id, 8) == expected
    # Pinned: a snapshot written today must be readable by every later version.
    assert [shard_of(t, 8) for t in ("a", "track-1", "0123456789abcdef0123456789abcdef")] == [2, 4, 6]


def test_shards_are_balanced() -> None:
    counts = Counter(shard_of(f"track-{n}", 8) for n in range(16_000))
    assert sorted(counts) == list(range(8))
    assert max(counts.values()) < 1.1 * 2_000 and min(counts.values()) > 0.9 * 2_000


def test_shard_count_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        shard_of("a", 0)


def test_sharded_exact_search_returns_the_same_top_k_as_one_unsharded_index() -> None:
    vectors = clustered_vectors(3_000, 48, seed=1)
    ids = [f"track-{n:05d}" for n in range(len(vectors))]
    queries = clustered_vectors(40, 48, seed=2)

    whole = faiss.IndexFlatIP(48)
    whole.add(vectors)
    expected = search_shards([(whole, ids)], queries, k=10)

    shard_count = 5
    members: list[list[int]] = [[] for _ in range(shard_count)]
    for row, track_id in enumerate(ids):
        members[shard_of(track_id, shard_count)].append(row)
    shards = []
    for rows in members:
        index = faiss.IndexFlatIP(48)
        index.add(vectors[rows])
        shards.append((index, [ids[r] for r in rows]))
    found = search_shards(shards, queries, k=10)

    assert [[t for t, _ in hits] for hits in found] == [[t for t, _ in hits] for hits in expected]
    for hits, reference in zip(found, expected, strict=True):
        np.testing.assert_allclose([s for _, s in hits], [s for _, s in reference], rtol=1e-5)
