"""Pitch sequences in served snapshots: memory-mapped, checked, and used by the version re-rank.

Against the real broker, S3 endpoint, Postgres and Redis. The vectors put the
reference's other version far down FAISS's list; only the sequences can bring
it first.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from mess.runtime.endpoints import StackSettings

from .conftest import Catalogue, StartQuery, apply_registry, eventually, insert_tracks
from .snapshot_writer import ShardInput, SnapshotWriter, Tampering

Sequence = npt.NDArray[np.uint8]


def chord_progression(seed: int, frames: int = 80) -> Sequence:
    """A chroma sequence with the structure of music: chords of three pitch classes, each held a while."""
    rng = np.random.default_rng(seed)
    rows: list[npt.NDArray[np.float64]] = []
    while len(rows) < frames:
        chord = rng.uniform(0.0, 0.2, 12)
        chord[rng.choice(12, 3, replace=False)] += rng.uniform(0.5, 1.0, 3)
        rows += [chord] * int(rng.integers(2, 5))
    matrix = np.array(rows[:frames])
    quantised: Sequence = (matrix / matrix.max(axis=1, keepdims=True) * 255).astype(np.uint8)
    return quantised


def shards_with(catalogue: Catalogue, sequences: dict[str, Sequence], count: int = 2) -> list[ShardInput]:
    shards = catalogue.shards(count)
    for shard in shards:
        shard.sequences = [sequences.get(track_id) for track_id in shard.ids]
    return shards


def recommendation_ids(body: dict[str, Any]) -> list[str]:
    return [r["track_id"] for r in body["recommendations"]]


async def test_versions_come_first_with_their_alignment_and_a_snapshot_without_sequences_keeps_faiss_order(
    stack: StackSettings, start_query: StartQuery, writer: SnapshotWriter, catalogue: Catalogue
) -> None:
    await apply_registry(stack)
    await insert_tracks(stack, catalogue.rows)
    reference = catalogue.ids[0]
    faiss_order = catalogue.expected_neighbours(reference, 59)
    version = faiss_order[25]  # far below any k a listener asks for
    decoys = faiss_order[:3]  # the closest vectors, whose sequences align with nothing (silence)
    work = chord_progression(1)
    sequences = {
        reference: work,
        version: np.roll(work, 2, axis=1),  # the same progression two semitones higher
        **{d: np.zeros((60, 12), dtype=np.uint8) for d in decoys},
    }
    first = writer.write(1, shards_with(catalogue, sequences), dim=16)
    async with start_query() as query:
        await query.wait_for_version(first.version)
        served = query.resources.follower.current
        assert served is not None
        np.testing.assert_array_equal(served.sequence_of(version), sequences[version])
        assert isinstance(served.shards[0].sequences.frames, np.memmap)  # type: ignore[union-attr]
        assert served.sequence_of(faiss_order[10]) is None  # a track the embedder sent none for

        response = await query.client.get(f"/recommend/{reference}?k=5&strategy=similar")
        assert response.status_code == 200, response.text
        picks = response.json()["recommendations"]
        assert [p["track_id"] for p in picks] == [version, *faiss_order[:4]]
        top = picks[0]
        assert top["alignment"]["same_work"] is True
        assert top["alignment"]["key_shift_semitones"] == 2
        assert top["alignment"]["score"] >= 0.9
        assert "version of the same work" in top["explanation"]
        # similarity_score still means cosine, whatever the order.
        cosine = float(catalogue.vectors[0] @ catalogue.vectors[catalogue.ids.index(version)])
        assert top["similarity_score"] == pytest.approx(cosine, abs=1e-5)
        assert top["similarity_score"] < picks[1]["similarity_score"]
        for pick in picks[1:]:
            if pick["track_id"] in decoys:
                assert pick["alignment"]["same_work"] is False
            else:
                assert pick["alignment"] is None

        only = (await query.client.get(f"/recommend/{reference}?k=5&strategy=versions")).json()
        assert recommendation_ids(only) == [version]
        assert only["algorithm"] == "versions"
        assert only["recommendations"][0]["alignment"]["same_work"] is True

        back = (await query.client.get(f"/recommend/{version}?k=3")).json()
        assert recommendation_ids(back)[0] == reference
        assert back["recommendations"][0]["alignment"]["key_shift_semitones"] == -2

        # The same vectors without sequences (a snapshot from before issue 15): FAISS order, no alignment.
        second = writer.write(2, catalogue.shards(2), dim=16)
        await writer.announce(second)
        await query.wait_for_version(second.version)
        plain = (await query.client.get(f"/recommend/{reference}?k=5")).json()
        assert recommendation_ids(plain) == faiss_order[:5]
        assert all(p["alignment"] is None for p in plain["recommendations"])
        none = (await query.client.get(f"/recommend/{reference}?k=5&strategy=versions")).json()
        assert none["recommendations"] == []


@pytest.mark.parametrize(
    ("tampering", "reason"),
    [
        (Tampering(corrupt_sequences_of_shard=1), "checksum"),
        (Tampering(overrun_sequences_of_shard=0), "sequences"),
    ],
    ids=["corrupt-frames", "offsets-past-the-frames"],
)
async def test_a_snapshot_with_broken_sequence_files_is_refused(
    stack: StackSettings,
    start_query: StartQuery,
    writer: SnapshotWriter,
    catalogue: Catalogue,
    tampering: Tampering,
    reason: str,
) -> None:
    await apply_registry(stack)
    await insert_tracks(stack, catalogue.rows)
    sequences = {track_id: chord_progression(n) for n, track_id in enumerate(catalogue.ids)}
    first = writer.write(1, shards_with(catalogue, sequences), dim=16)
    async with start_query() as query:
        await query.wait_for_version(first.version)
        broken = writer.write(2, shards_with(catalogue, sequences, count=3), dim=16, tampering=tampering)
        await writer.announce(broken)
        await eventually(
            lambda: query.metric("mess_query_snapshot_refused_total", {"reason": reason}) >= 1, "the refusal"
        )
        current = query.resources.follower.current
        assert current is not None and current.version == first.version
        response = await query.client.get(f"/recommend/{catalogue.ids[0]}?k=3")
        assert response.status_code == 200 and response.json()["snapshot_version"] == first.version
