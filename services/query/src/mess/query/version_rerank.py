"""The version-aware second stage as a ``CandidateReranker``: aligned versions first, the rest as proposed.

The alignment itself is mess.query.versions (pure numpy). This adapter only
finds the pitch sequences of the reference and its candidates, reorders the
candidates and attaches each one's alignment (``Candidate.alignment``), which
the API shows as ``alignment``. Sequences come from a ``SequenceSource``; a
snapshot that holds none (built before the indexer stored them) leaves the
order as FAISS proposed it, so the hook is safe to install before every
snapshot has them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

import numpy as np
import numpy.typing as npt

from mess.query.rerank import CandidateReranker
from mess.query.searcher import SnapshotSearcher
from mess.query.sequences import PitchSequence
from mess.query.strategies import Candidate
from mess.query.versions import VersionMatcher


class SequenceSource(Protocol):
    """Where a snapshot's pitch sequences are read (memory-mapped shard files in the snapshot)."""

    def sequence_of(self, snapshot: SnapshotSearcher, track_id: str) -> npt.NDArray[np.uint8] | None: ...


class SnapshotSequences:
    """The sequences the snapshot itself carries (``mess.query.sequences``: memory-mapped per shard)."""

    def sequence_of(self, snapshot: SnapshotSearcher, track_id: str) -> npt.NDArray[np.uint8] | None:
        return snapshot.sequence_of(track_id)


class VersionReranker(CandidateReranker):
    """Aligns the top ``candidates`` (K) with the reference; bounded by K and the matcher's frame cap."""

    # Alignment of K = 50 costs milliseconds of numpy: keep it off the event loop.
    heavy = True

    def __init__(self, source: SequenceSource, matcher: VersionMatcher | None = None, candidates: int = 50) -> None:
        self.source = source
        self.matcher = matcher or VersionMatcher()
        self.candidates = candidates
        # A strategy with a small pool (similar at k = 10) still has K proposals aligned, so a
        # version FAISS ranked 30th can come first.
        self.depth = candidates

    def rerank(
        self, snapshot: SnapshotSearcher, reference: PitchSequence | None, candidates: list[Candidate]
    ) -> list[Candidate]:
        if reference is None or reference.shape[0] == 0:
            return candidates
        head, tail = candidates[: self.candidates], candidates[self.candidates :]
        empty = np.zeros((0, 12), dtype=np.uint8)
        sequences = []
        for candidate in head:
            found = self.source.sequence_of(snapshot, candidate.track_id)
            sequences.append(empty if found is None else found)
        reranking = self.matcher.rerank(reference, sequences)
        # A candidate without a sequence was not aligned at all: no alignment, rather than a score of 0.
        return [
            replace(head[i], alignment=reranking.alignment(i)) if sequences[i].shape[0] else head[i]
            for i in reranking.order
        ] + tail
