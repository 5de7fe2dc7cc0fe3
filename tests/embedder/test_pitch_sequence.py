"""The pitch sequence and the dsp track-level block: bounded, and blind to key and (within bounds) tempo."""

import numpy as np
import numpy.typing as npt

from mess.embedder.backends.dsp import DspBackend
from mess.embedder.pitch_sequence import MAX_FRAMES, SAMPLE_RATE, modulation_spectrum, pitch_sequence

# (root as semitones above A3, chord quality) per bar.
PROGRESSION_A = [(3, "maj"), (8, "maj"), (10, "maj"), (3, "maj"), (0, "min"), (8, "maj"), (10, "maj"), (3, "maj")]
PROGRESSION_B = [(3, "min"), (4, "maj"), (9, "min"), (6, "dim"), (3, "min"), (11, "maj"), (1, "maj"), (6, "min")]
QUALITIES = {"maj": (0, 4, 7), "min": (0, 3, 7), "dim": (0, 3, 6)}


def chords(
    progression: list[tuple[int, str]], transpose: int = 0, bar_s: float = 1.2, seconds: float = 60.0
) -> np.ndarray:
    """Organ-like chords with a bass note, one per bar, repeated to ``seconds``."""
    t = np.arange(int(bar_s * SAMPLE_RATE)) / SAMPLE_RATE
    envelope = np.minimum(1.0, t / 0.02) * np.exp(-t * 1.0)
    bars = []
    while len(bars) * bar_s < seconds:
        root, quality = progression[len(bars) % len(progression)]
        bar = np.zeros_like(t)
        for note in [root + transpose + step for step in QUALITIES[quality]] + [root + transpose - 12]:
            f = 220.0 * 2 ** (note / 12)
            for harmonic in (1, 2, 3, 4):
                bar += np.sin(2 * np.pi * f * harmonic * t) / harmonic**1.5
        bars.append(bar * envelope)
    signal = np.concatenate(bars)
    return (0.5 * signal / np.max(np.abs(signal))).astype(np.float32)


def cosine(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_sequence_is_compact_uint8_chroma_and_capped_for_long_tracks() -> None:
    sequence = pitch_sequence(chords(PROGRESSION_A, seconds=60.0))
    assert sequence.dtype == np.uint8 and sequence.shape[1] == 12
    assert 70 <= sequence.shape[0] <= 90  # ~1.35 frames a second
    # An hour of audio still makes at most MAX_FRAMES frames.
    hour = np.tile(chords(PROGRESSION_A, seconds=60.0), 60)
    assert pitch_sequence(hour).shape == (MAX_FRAMES, 12)
    assert pitch_sequence(np.zeros(SAMPLE_RATE * 5, dtype=np.float32)).shape == (0, 12)


def test_sequence_follows_a_transposition_by_rotating() -> None:
    plain = pitch_sequence(chords(PROGRESSION_A)).astype(float)
    up_two = pitch_sequence(chords(PROGRESSION_A, transpose=2)).astype(float)
    rotated = np.roll(plain, 2, axis=1)
    assert cosine(rotated.ravel(), up_two.ravel()) > 0.9
    assert cosine(rotated.ravel(), up_two.ravel()) > cosine(plain.ravel(), up_two.ravel()) + 0.2


def test_track_level_block_is_invariant_to_key_and_close_under_tempo_change_within_bounds() -> None:
    reference = modulation_spectrum(pitch_sequence(chords(PROGRESSION_A)), 24)
    other_work = modulation_spectrum(pitch_sequence(chords(PROGRESSION_B)), 24)
    unrelated = cosine(reference, other_work)
    for transpose in (-2, -1, 1, 2):
        version = modulation_spectrum(pitch_sequence(chords(PROGRESSION_A, transpose)), 24)
        assert cosine(reference, version) > 0.98, transpose
    # A tempo change stretches the modulation axis, so it is only close, not
    # equal; still closer than another work with the same chord rhythm.
    for transpose, tempo in [(0, 1.15), (0, 0.87), (1, 1.1), (-2, 0.9)]:
        version = modulation_spectrum(pitch_sequence(chords(PROGRESSION_A, transpose, bar_s=1.2 / tempo)), 24)
        assert cosine(reference, version) > unrelated, (transpose, tempo)


def test_dsp_track_vector_has_the_declared_dimension_and_unit_length_even_for_a_short_clip() -> None:
    backend = DspBackend()
    pooled = np.ones(backend.chunk_dim, dtype=np.float32)
    for seconds in (3.0, 10.0, 60.0):
        vector = backend.track_vector(pooled, pitch_sequence(chords(PROGRESSION_A, seconds=seconds)))
        assert vector.shape == (backend.dim,) and vector.dtype == np.float32
        assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
