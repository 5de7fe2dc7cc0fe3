"""The second retrieval stage: recognise other versions of the query's work among FAISS's candidates.

FAISS proposes the top K tracks by cosine of their vectors. This module aligns
the query's pitch-content sequence (12-bin CENS-like chroma, ~1.35 frames a
second, uint8; made by the embedder for every backend) with each candidate's,
after Serra, Serra & Andrzejak (2009), "Cross recurrence quantification for
cover song identification":

1. **Key.** The optimal transposition index (OTI): the rotation of the
   candidate's global pitch-class profile that best matches the query's. The
   candidate is rotated by it, so a transposed version aligns as if it were
   not; the shift is reported in semitones.
2. **Cross recurrence.** Frame i of the query and frame j of the candidate
   "recur" when each is among the other's ``kappa`` most similar frames
   (mutual nearest neighbours of the cosine). Relative, not absolute: two
   instruments rarely give the same chroma values, but they give the same
   ranking of them.
3. **Qmax.** The longest, least interrupted diagonal-ish path through the
   recurrence plot, allowing steps (1,1), (2,1) and (1,2) so the path can
   follow a tempo ratio between 1/2 and 2; an interruption costs
   ``gap_onset`` then ``gap_extension`` per frame. The path's slope is the
   tempo relation, reported where the path is long enough to say.

Score = Qmax / the shorter sequence's length, in [0, 1]: the share of the
shorter track that aligns. A candidate at or above ``threshold`` is
recognised as a version of the query's work.

Cost is bounded and vectorised: all K candidates are aligned at once, one
numpy step per query frame over a (K, frames) array, and both sequences are
cut to ``max_frames``. Everything here is pure numpy; nothing is stored.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

PitchSequence = npt.NDArray[np.uint8]
Floats = npt.NDArray[np.float32]

# The embedder's sequence rate (mess.embedder.pitch_sequence.FRAME_RATE);
# repeated here because services never import each other. Used only to turn
# path lengths into seconds for the explanation.
SEQUENCE_FRAME_RATE = 11025 / 1024 / 8


@dataclass(frozen=True)
class AlignmentParameters:
    """Every knob of the alignment; chosen on a development set (see bench/retrieval_quality.py)."""

    # Each frame keeps this share of the other track's frames as neighbours.
    kappa: float = 0.1
    gap_onset: float = 5.0
    gap_extension: float = 0.5
    # Share of the shorter sequence that must align for a candidate to move ahead of the
    # embedding order: chosen for ranking (MAP@10), so it lets through some near misses.
    threshold: float = 0.12
    # The stricter share behind the answer's ``same_work`` flag and the ``versions`` strategy,
    # where a wrong "yes" is visible to the user. Chosen on the development set (seed 101) as the
    # highest recall with precision at least 0.9: 0.90 there at 0.96 recall of the versions among
    # K, against 0.45 precision at ``threshold``. Most near misses left are chorales harmonising
    # the same hymn tune as the query's, which a listener may well call the same music.
    same_work_threshold: float = 0.18
    # Frames aligned at most, per sequence: bounds the cost of every query.
    max_frames: int = 144
    # A path shorter than this (in frames) says nothing reliable about tempo.
    min_tempo_frames: int = 16


@dataclass(frozen=True)
class VersionMatch:
    """How a candidate aligned with the query: why it was (or was not) recognised as a version of its work."""

    score: float
    #: the candidate's key relative to the query's, in semitones (+2: two semitones higher; -5..+6)
    key_shift: int
    #: the candidate's tempo over the query's, from the alignment path's slope; None when too short to say
    tempo_ratio: float | None
    #: seconds of the query covered by the aligned path; None where the path was not traced (non-versions)
    aligned_seconds: float | None
    #: whether the score reached ``AlignmentParameters.same_work_threshold`` (a recognised candidate
    #: below it still moves ahead of the embedding order, but is not claimed to be the same work)
    same_work: bool = True


@dataclass(frozen=True)
class Reranking:
    """``order``: candidate positions, recognised versions first (best score first), then the rest as given."""

    order: list[int]
    scores: Floats
    key_shifts: npt.NDArray[np.int64]
    versions: dict[int, VersionMatch] = field(default_factory=dict)

    def alignment(self, index: int) -> VersionMatch:
        """Candidate ``index``'s alignment: its explanation if recognised, else its score and key shift."""
        found = self.versions.get(index)
        if found is not None:
            return found
        return VersionMatch(
            score=round(float(self.scores[index]), 4),
            key_shift=_signed_shift(int(self.key_shifts[index])),
            tempo_ratio=None,
            aligned_seconds=None,
            same_work=False,
        )


def _as_unit_frames(sequence: PitchSequence, max_frames: int) -> Floats:
    frames = np.asarray(sequence[:max_frames], dtype=np.float32)
    norms = np.linalg.norm(frames, axis=1, keepdims=True)
    unit: Floats = np.where(norms > 0, frames / np.maximum(norms, 1e-9), 0.0).astype(np.float32)
    return unit


def _signed_shift(shift: int) -> int:
    return shift - 12 if shift > 6 else shift


class VersionMatcher:
    """Aligns one query's pitch sequence with K candidates'; stateless and thread-safe."""

    def __init__(self, parameters: AlignmentParameters | None = None) -> None:
        self.parameters = parameters or AlignmentParameters()
        # _rotation[k, p] = (p + k) % 12: frames[:, _rotation[k]] is the track moved down k semitones.
        self._rotation = (np.arange(12)[None, :] + np.arange(12)[:, None]) % 12

    def rerank(self, query: PitchSequence, candidates: Sequence[PitchSequence]) -> Reranking:
        """Versions first, each explained; the others keep the order they came in."""
        scores, shifts = self.scores(query, candidates)
        recognised = [i for i in range(len(candidates)) if scores[i] >= self.parameters.threshold]
        recognised.sort(key=lambda i: (-float(scores[i]), i))
        chosen = set(recognised)
        order = recognised + [i for i in range(len(candidates)) if i not in chosen]
        versions: dict[int, VersionMatch] = {}
        if recognised:
            ratios, lengths = self._paths(query, [candidates[i] for i in recognised])
            for position, index in enumerate(recognised):
                versions[index] = VersionMatch(
                    score=round(float(scores[index]), 4),
                    key_shift=_signed_shift(int(shifts[index])),
                    tempo_ratio=ratios[position],
                    aligned_seconds=round(lengths[position] / SEQUENCE_FRAME_RATE, 1),
                    same_work=bool(scores[index] >= self.parameters.same_work_threshold),
                )
        return Reranking(order=order, scores=scores, key_shifts=shifts, versions=versions)

    def scores(self, query: PitchSequence, candidates: Sequence[PitchSequence]) -> tuple[Floats, npt.NDArray[np.int64]]:
        """Alignment score in [0, 1] and OTI (0..11) of every candidate; 0 for an empty sequence."""
        count = len(candidates)
        scores = np.zeros(count, dtype=np.float32)
        shifts = np.zeros(count, dtype=np.int64)
        q = _as_unit_frames(query, self.parameters.max_frames)
        if count == 0 or q.shape[0] < 2:
            return scores, shifts
        stacked, lengths, shifts = self._rotated_candidates(q, candidates)
        usable = lengths >= 2
        if not usable.any():
            return scores, shifts
        recurrence = self._recurrence(q, stacked[usable], lengths[usable])
        qmax = self._qmax(recurrence)
        shorter = np.minimum(lengths[usable], q.shape[0]).astype(np.float32)
        scores[usable] = qmax / shorter
        return scores, shifts

    # --- the steps ---------------------------------------------------------------------

    def _rotated_candidates(
        self, q: Floats, candidates: Sequence[PitchSequence]
    ) -> tuple[Floats, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """(K, frames, 12) candidates moved into the query's key, zero-padded; their lengths and OTIs."""
        limit = self.parameters.max_frames
        lengths = np.array([min(len(c), limit) for c in candidates], dtype=np.int64)
        stacked = np.zeros((len(candidates), max(int(lengths.max()), 1), 12), dtype=np.float32)
        for row, candidate in enumerate(candidates):
            stacked[row, : lengths[row]] = _as_unit_frames(candidate, limit)
        query_profile = q.sum(axis=0)
        profiles = stacked.sum(axis=1)  # (K, 12)
        # agreement[k, r] = sum_p query[p] * candidate_k[(p + r) % 12]
        agreement = profiles[:, self._rotation] @ query_profile
        shifts = np.argmax(agreement, axis=1).astype(np.int64)
        rotated = np.take_along_axis(stacked, self._rotation[shifts][:, None, :], axis=2)
        return rotated, lengths, shifts

    def _recurrence(self, q: Floats, c: Floats, lengths: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """(K, Tq, Tc) mutual-nearest-neighbour cross recurrence; padded frames never recur."""
        # Both orientations are computed so that each threshold is a sort along
        # a contiguous last axis (a sort there is cheaper than a partition across).
        query_by_candidate = np.matmul(q[None, :, :], c.transpose(0, 2, 1))  # (K, Tq, Tc)
        candidate_by_query = np.matmul(c, q.T)  # (K, Tc, Tq)
        kappa = self.parameters.kappa
        # One neighbour count for all candidates (from the median length) keeps
        # this one sort per orientation; padded frames score 0 and sort last.
        along_candidate = min(c.shape[1], max(1, round(kappa * float(np.median(lengths)))))
        along_query = min(q.shape[0], max(1, round(kappa * q.shape[0])))
        row_threshold = np.sort(query_by_candidate, axis=2)[:, :, -along_candidate]  # (K, Tq)
        candidate_by_query.sort(axis=2)  # only its order statistics are needed: sorted in place, no copy
        column_threshold = candidate_by_query[:, :, -along_query]  # (K, Tc)
        # Silent or padded frames (all-zero chroma) recur with nothing: a similarity must also be
        # positive, folded into the row threshold (x >= the smallest positive float is x > 0). Padded
        # candidate frames are all zero, so this also keeps them out without a mask of their own.
        np.maximum(row_threshold, np.nextafter(np.float32(0), np.float32(1)), out=row_threshold)
        recurrence: npt.NDArray[np.bool_] = query_by_candidate >= row_threshold[:, :, None]
        recurrence &= query_by_candidate >= column_threshold[:, None, :]
        return recurrence

    def _qmax(self, recurrence: npt.NDArray[np.bool_]) -> Floats:
        """Qmax of each candidate: one vectorised step per query frame over all (candidate, frame) cells."""
        count, rows, columns = recurrence.shape
        # All candidates side by side in one flat row per query frame, each
        # preceded by two zero cells (j-1, j-2 before its first frame), so every
        # step is a handful of contiguous 1-D operations; two leading zero rows
        # stand for i-1 and i-2 before the first query frame.
        width = columns + 2
        flat = count * width
        recurs = np.zeros((rows, count, width), dtype=bool)
        recurs[:, :, 2:] = recurrence.transpose(1, 0, 2)
        recurs = recurs.reshape(rows, flat)
        penalty = np.where(recurs, np.float32(self.parameters.gap_onset), np.float32(self.parameters.gap_extension))
        penalty = np.vstack([np.zeros((2, flat), dtype=np.float32), penalty.astype(np.float32)])
        cells = np.zeros((count, width), dtype=np.float32)
        cells[:, 2:] = 1.0
        in_track = cells.reshape(flat)[2:]
        q = np.zeros((rows + 2, flat), dtype=np.float32)
        reach = np.empty(flat - 2, dtype=np.float32)
        gap = np.empty_like(reach)
        other = np.empty_like(reach)
        for i in range(2, rows + 2):
            diagonal, skip_row, skip_column = q[i - 1, 1:-1], q[i - 2, 1:-1], q[i - 1, :-2]
            np.maximum(diagonal, skip_row, out=reach)
            np.maximum(reach, skip_column, out=reach)
            np.subtract(diagonal, penalty[i - 1, 1:-1], out=gap)
            np.subtract(skip_row, penalty[i - 2, 1:-1], out=other)
            np.maximum(gap, other, out=gap)
            np.subtract(skip_column, penalty[i - 1, :-2], out=other)
            np.maximum(gap, other, out=gap)
            np.maximum(gap, 0.0, out=gap)
            reach += 1.0
            np.copyto(gap, reach, where=recurs[i - 2, 2:])
            # The two cells before each candidate's first frame stay zero.
            np.multiply(gap, in_track, out=q[i, 2:])
        best: Floats = q.reshape(rows + 2, count, width).max(axis=(0, 2))
        return best

    def _qmax_path(self, recurrence: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """The best path's extent (query frames, candidate frames) per candidate; slower, for the few versions."""
        count, rows, columns = recurrence.shape
        onset, extension = self.parameters.gap_onset, self.parameters.gap_extension
        prev1 = np.zeros((count, columns + 2), dtype=np.float32)
        prev2 = np.zeros_like(prev1)
        rec1 = np.zeros((count, columns + 2), dtype=bool)
        rec2 = np.zeros_like(rec1)
        start_i1 = np.zeros((count, columns + 2), dtype=np.int64)
        start_j1 = np.zeros_like(start_i1)
        start_i2 = np.zeros_like(start_i1)
        start_j2 = np.zeros_like(start_i1)
        here_j = np.arange(columns)[None, :]
        picked = np.arange(count)
        best = np.zeros(count, dtype=np.float32)
        span_q = np.zeros(count, dtype=np.int64)
        span_c = np.zeros(count, dtype=np.int64)
        for i in range(rows):
            diagonal, skip_row, skip_column = prev1[:, 1:-1], prev2[:, 1:-1], prev1[:, :-2]
            reach = np.maximum(np.maximum(diagonal, skip_row), skip_column)
            recurs = recurrence[:, i, :]
            penalised = np.maximum(
                np.maximum(
                    diagonal - np.where(rec1[:, 1:-1], onset, extension),
                    skip_row - np.where(rec2[:, 1:-1], onset, extension),
                ),
                skip_column - np.where(rec1[:, :-2], onset, extension),
            )
            current = np.where(recurs, reach + 1.0, np.maximum(penalised, 0.0)).astype(np.float32)
            # The path goes on from its strongest predecessor; where nothing
            # reaches this cell, a new path starts here.
            came = np.argmax(np.stack([diagonal, skip_row, skip_column]), axis=0)
            from_i = np.choose(came, [start_i1[:, 1:-1], start_i2[:, 1:-1], start_i1[:, :-2]])
            from_j = np.choose(came, [start_j1[:, 1:-1], start_j2[:, 1:-1], start_j1[:, :-2]])
            fresh = reach <= 0.0
            new_i = np.where(fresh, i, from_i)
            new_j = np.where(fresh, here_j, from_j)
            where = current.argmax(axis=1)
            row_best = current[picked, where]
            better = row_best > best
            span_q = np.where(better, i - new_i[picked, where], span_q)
            span_c = np.where(better, where - new_j[picked, where], span_c)
            best = np.maximum(best, row_best)
            start_i2, start_j2 = start_i1, start_j1
            start_i1 = np.zeros_like(start_i2)
            start_j1 = np.zeros_like(start_j2)
            start_i1[:, 2:], start_j1[:, 2:] = new_i, new_j
            prev2, prev1 = prev1, np.zeros_like(prev1)
            prev1[:, 2:] = current
            rec2, rec1 = rec1, np.zeros_like(rec1)
            rec1[:, 2:] = recurs
        return span_q, span_c

    def _paths(
        self, query: PitchSequence, candidates: Sequence[PitchSequence]
    ) -> tuple[list[float | None], list[float]]:
        """Tempo ratio and aligned query length of the best path, for the recognised candidates only."""
        q = _as_unit_frames(query, self.parameters.max_frames)
        stacked, lengths, _ = self._rotated_candidates(q, candidates)
        recurrence = self._recurrence(q, stacked, lengths)
        span_q, span_c = self._qmax_path(recurrence)
        ratios: list[float | None] = []
        for along_query, along_candidate in zip(span_q.tolist(), span_c.tolist(), strict=True):
            if min(along_query, along_candidate) < self.parameters.min_tempo_frames:
                ratios.append(None)
            else:
                # The candidate covers the same music in fewer frames when it is faster.
                ratios.append(round(along_query / along_candidate, 3))
        return ratios, [float(s) for s in span_q.tolist()]
