"""The second stage: versions of the query's work come first, explained; the rest keep their order."""

import numpy as np
import numpy.typing as npt

from mess.query.versions import AlignmentParameters, VersionMatcher

FRAMES = 80  # ~60 s at the embedder's ~1.35 frames a second


def work(seed: int, frames: int = FRAMES) -> npt.NDArray[np.float64]:
    """A 'piece': a chord progression of 3-note chords held for 2..5 frames each."""
    rng = np.random.default_rng(seed)
    rows: list[npt.NDArray[np.float64]] = []
    while len(rows) < frames:
        chord = np.zeros(12)
        root = int(rng.integers(12))
        chord[[root, (root + int(rng.choice([3, 4]))) % 12, (root + 7) % 12]] = [1.0, 0.7, 0.8]
        rows.extend([chord] * int(rng.integers(2, 6)))
    return np.array(rows[:frames])


def rendition(
    piece: npt.NDArray[np.float64], shift: int, tempo: float, seed: int, noise: float = 0.15
) -> npt.NDArray[np.uint8]:
    """The piece moved up ``shift`` semitones, played ``tempo`` times as fast, with timbre-like noise."""
    rng = np.random.default_rng(seed)
    positions = np.arange(0.0, piece.shape[0] - 1, tempo)
    frames = piece[np.rint(positions).astype(int)]
    frames = np.roll(frames + noise * rng.random(frames.shape), shift, axis=1)
    frames /= frames.max(axis=1, keepdims=True)
    return np.rint(frames * 255).astype(np.uint8)


def test_versions_are_recognised_under_transposition_and_tempo_change_and_come_first() -> None:
    matcher = VersionMatcher()
    query = rendition(work(1), 0, 1.0, seed=10)
    others = [rendition(work(100 + i), int(i % 5) - 2, 1.0, seed=20 + i) for i in range(20)]
    versions = [rendition(work(1), 2, 1.12, seed=11), rendition(work(1), -1, 0.88, seed=12)]
    # First-stage order: the versions come last, as a poor embedding would put them.
    candidates = others + versions
    result = matcher.rerank(query, candidates)
    assert set(result.order[:2]) == {20, 21}
    # The rest keep the order they came in.
    assert result.order[2:] == list(range(20))
    faster, slower = result.versions[20], result.versions[21]
    # The key shift says where the candidate's key lies relative to the query's.
    assert faster.key_shift == 2
    assert slower.key_shift == -1
    # The candidate played 12 % faster covers the query's music in fewer frames.
    assert faster.tempo_ratio is not None and abs(faster.tempo_ratio - 1.12) < 0.12
    assert slower.tempo_ratio is not None and abs(slower.tempo_ratio - 0.88) < 0.12
    assert all(i not in result.versions for i in range(20))


def test_scores_do_not_depend_on_the_key_of_the_version() -> None:
    matcher = VersionMatcher()
    piece = work(7)
    query = rendition(piece, 0, 1.0, seed=1)
    scores = [float(matcher.scores(query, [rendition(piece, shift, 1.0, seed=2)])[0][0]) for shift in range(-5, 7)]
    assert max(scores) - min(scores) < 1e-6
    assert min(scores) >= AlignmentParameters().threshold


def test_empty_and_silent_sequences_are_never_versions() -> None:
    matcher = VersionMatcher()
    query = rendition(work(3), 0, 1.0, seed=1)
    empty = np.zeros((0, 12), dtype=np.uint8)
    silent = np.zeros((40, 12), dtype=np.uint8)
    result = matcher.rerank(query, [empty, silent, query])
    assert result.order == [2, 0, 1]
    assert list(result.versions) == [2]
    assert matcher.rerank(empty, [query]).versions == {}


def test_long_sequences_are_cut_so_cost_is_bounded() -> None:
    parameters = AlignmentParameters()
    matcher = VersionMatcher(parameters)
    long_piece = work(5, frames=parameters.max_frames * 3)
    query = rendition(long_piece, 0, 1.0, seed=1)
    q = matcher._rotated_candidates(query[: parameters.max_frames].astype(np.float32), [query])[0]
    assert q.shape[1] == parameters.max_frames
    assert matcher.rerank(query, [query]).versions[0].score > 0.5
