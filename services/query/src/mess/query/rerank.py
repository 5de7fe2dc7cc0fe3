"""The re-rank stage of a recommendation: between proposing candidates and a strategy choosing among them.

FAISS proposes candidates from one vector per track; a re-ranker may reorder
them with evidence the vectors lack (DESIGN.md, "two-stage retrieval": aligning
pitch-content sequences of the top K so other versions of a work come first).
It receives the candidates best first and returns them in its order; it must
not add candidates, and its cost must be bounded by the number it is given.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from mess.query.searcher import SnapshotSearcher
from mess.query.sequences import PitchSequence
from mess.query.strategies import Candidate


class CandidateReranker(ABC):
    """Reorders a reference's candidates, with the snapshot they came from. The reference's pitch sequence
    is given (a track's from the snapshot, a clip's from the embedder), or None when there is none."""

    #: blocking work that belongs on the strategy threads rather than the event loop
    heavy: bool = False
    #: candidates the re-rank wants to see whatever the strategy's pool (0: the pool's own);
    #: the strategy still gets its pool, cut from the re-ranked order
    depth: int = 0

    @abstractmethod
    def rerank(
        self, snapshot: SnapshotSearcher, reference: PitchSequence | None, candidates: list[Candidate]
    ) -> list[Candidate]:
        """The same candidates (or fewer), in the order the strategy should see them."""


class KeepOrder(CandidateReranker):
    """No second stage: the embedding order stands."""

    def rerank(
        self, snapshot: SnapshotSearcher, reference: PitchSequence | None, candidates: list[Candidate]
    ) -> list[Candidate]:
        return candidates
