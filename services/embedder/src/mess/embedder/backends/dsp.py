"""Hand-built music descriptors: the CPU backend with no weights.

Revision 2 (feature set "2"). The track vector has two parts:

* **track level, most of the weight**: the 2D Fourier magnitude of ~18 s
  patches of the track's pitch sequence (mess.embedder.pitch_sequence: CRP
  chroma, CENS-smoothed to ~1.35 frames/s), averaged over the patches, after
  Bertin-Mahieux & Ellis (2012). A transposition rotates the pitch axis and a
  later start shifts the time axis, and a Fourier magnitude sees neither; a
  tempo change within +-15 % moves the slow modulation bins by less than a
  bin. It sees whole phrases, which 5 s chunks cannot; on unseen renditions
  this alone lifted MAP@10 from ~0.4 to ~0.8 (bench/retrieval_quality.py).
  A clip shorter than one patch is zero-padded to one patch.
* **the pooled chunk blocks below, 10 % of the energy**: they keep a little
  of "sounds like" (timbre, rhythm) without letting the instrument decide.

Revision 1's vectors have another dimension and revision, so they never share
an index with these (the indexer keys shards by model identity).

The goal is "the same work sounds alike": renditions of one work (another
instrument, tempo within +-15 %, transposed by up to two semitones) should lie
near each other and different works apart. Every block below is therefore
built to be invariant to those three changes where it can be, and the blocks
that cannot be (timbre) get a small weight.

Front end (per chunk, at 11,025 Hz):

* a 2,048-point STFT (hop 512, 46 ms) mapped onto 60 semitone bands, G2..F#7;
  log-compressed and made timbre-robust the CRP way (chroma DCT-reduced log
  pitch, Mueller & Ewert 2010): the smooth part of the log-pitch spectrum
  across bands (the spectral envelope, i.e. the instrument) is removed with a
  DCT before the bands are folded onto 12 pitch classes;
* a 512-point STFT (hop 128, 12 ms) on 40 mel bands for timbre and onsets.

Key invariance uses a soft canonical key: the chunk's pitch-class profile is
correlated with a major-key template at all 12 rotations, the scores go
through a softmax, and every pitch-class feature is averaged over the
rotations with those weights. A transposition rotates the profile and the
scores alike, so the canonical features do not change at all; the softmax
keeps them smooth where two keys score alike (a hard arg-max would flip).

Blocks (dimension, what it captures):

====================  ====  ==============================================================
block                 dim   captures
====================  ====  ==============================================================
``pitch_classes``      18   key-relative pitch-class profile (12) and the magnitudes of its
                            DFT (6), which are transposition-invariant without any key guess
``intervals``           6   interval-class content of simultaneous notes (harmony colour:
                            thirds, fifths, tritones) from the chroma's circular autocorrelation
``progression``       192   harmony over time: key-relative 12x12 transition matrix of smoothed
                            chroma 0.74 s apart (144) and transposition-invariant circular
                            cross-correlations 0.19/0.37/0.74/1.5 s apart (4 x 12)
``melody``             24   notes as they enter: the interval of each newly sounding pitch
                            class to what sounded just before (12), and the key-relative scale
                            degrees new notes land on (12); counted per entry, not per second
``timbre``             26   MFCC-like cepstrum of a 40-band mel spectrum (coefficients 1..13:
                            mean and spread over frames)
``rhythm``             16   onset-strength autocorrelation read at multiples of the beat
                            period (tempo-normalised, 12), pulse clarity, onset density,
                            log tempo and its prior weight
====================  ====  ==============================================================

282 values in all. Each block is centred and L2-normalised on its own, then
scaled by the square root of its weight, so the cosine of two chunk vectors
is the weighted mean of the per-block correlations. The default weights were
chosen on a development set of 13 music21 works x 5 renditions (none of them
used by the tests): pitch and harmony over time separate works; timbre and
rhythm are kept but small, because renditions differ in instrument and tempo
by design and a 5 s chunk holds too few beats for a steady tempo estimate.
The weights are a setting; they are part of the revision, so vectors made
with other weights never meet these in one index.
"""

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import numpy.typing as npt
from scipy import fft as sfft

from mess.embedder.backends.base import ChunkBatch, ChunkLengths, ChunkVectors, EmbeddingBackend
from mess.embedder.pitch_sequence import PitchSequence, modulation_dim, modulation_spectrum

FloatArray = npt.NDArray[np.float64]

FEATURE_SET_VERSION = "2"
SAMPLE_RATE = 11025

# Krumhansl-Kessler major-key profile (C major), used only to pick a
# canonical rotation; its exact values barely matter, its shape does.
_MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])

BLOCK_DIMS: dict[str, int] = {
    "pitch_classes": 18,
    "intervals": 6,
    "progression": 192,
    "melody": 24,
    "timbre": 26,
    "rhythm": 16,
}

# See the module docstring for how these were chosen.
DEFAULT_WEIGHTS: dict[str, float] = {
    "pitch_classes": 0.5,
    "intervals": 0.25,
    "progression": 3.0,
    "melody": 1.0,
    "timbre": 0.1,
    "rhythm": 0.1,
}


@dataclass(frozen=True)
class DspParameters:
    """Everything that changes the vectors; its hash is part of the revision."""

    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    # Log compression of pitch energies relative to the chunk's mean energy.
    log_gain: float = 100.0
    # DCT coefficients (over the 60 pitch bands) dropped to remove the envelope.
    crp_dropped_coefficients: int = 15
    # Sharpness of the soft canonical key (softmax over standardised scores).
    key_sharpness: float = 2.0
    # Share of the track vector's energy that is the pooled chunk blocks; the
    # rest is the track-level 2D Fourier magnitude of the pitch sequence.
    chunk_share: float = 0.1
    # Patches of the pitch sequence for that transform, in sequence frames (~18 s).
    patch_frames: int = 24

    def fingerprint(self) -> str:
        raw = json.dumps(
            {
                "weights": {k: float(v) for k, v in sorted(self.weights.items())},
                "log_gain": self.log_gain,
                "crp": self.crp_dropped_coefficients,
                "key": self.key_sharpness,
                "chunk_share": self.chunk_share,
                "patch": self.patch_frames,
            },
            sort_keys=True,
        )
        return hashlib.sha256(raw.encode()).hexdigest()[:8]


def _frames(signal: FloatArray, n_fft: int, hop: int) -> FloatArray:
    """Hann-windowed frames, centred like librosa so frame t sits at t * hop."""
    padded = np.pad(signal, (n_fft // 2, n_fft // 2))
    if padded.shape[0] < n_fft:
        padded = np.pad(padded, (0, n_fft - padded.shape[0]))
    count = 1 + (padded.shape[0] - n_fft) // hop
    view = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:count]
    window: FloatArray = np.hanning(n_fft + 1)[:-1]
    return view * window


def _power_spectrogram(signal: FloatArray, n_fft: int, hop: int) -> FloatArray:
    spectrum = np.fft.rfft(_frames(signal, n_fft, hop), axis=1)
    power: FloatArray = spectrum.real**2 + spectrum.imag**2
    return power


def _pitch_filterbank(n_fft: int, sample_rate: int, lowest_midi: int, bands: int) -> FloatArray:
    """(bins, bands) triangular weights one semitone wide on each side."""
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    midi = np.full_like(freqs, -100.0)
    midi[1:] = 69.0 + 12.0 * np.log2(freqs[1:] / 440.0)
    centres = lowest_midi + np.arange(bands)
    bank = np.maximum(0.0, 1.0 - np.abs(midi[:, None] - centres[None, :]))
    # Low bands are narrower than an FFT bin; make each band's total weight
    # one so low notes are not under-counted against high ones.
    bank /= np.maximum(bank.sum(axis=0, keepdims=True), 1e-9)
    return bank


def _mel_filterbank(n_fft: int, sample_rate: int, bands: int, fmin: float, fmax: float) -> FloatArray:
    def to_mel(f: FloatArray) -> FloatArray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    edges_mel = np.linspace(to_mel(np.array(fmin)), to_mel(np.array(fmax)), bands + 2)
    edges = 700.0 * (10.0 ** (edges_mel / 2595.0) - 1.0)
    bank = np.zeros((freqs.shape[0], bands))
    for band in range(bands):
        low, centre, high = edges[band], edges[band + 1], edges[band + 2]
        rising = (freqs - low) / max(centre - low, 1e-9)
        falling = (high - freqs) / max(high - centre, 1e-9)
        bank[:, band] = np.maximum(0.0, np.minimum(rising, falling))
    bank /= np.maximum(bank.sum(axis=0, keepdims=True), 1e-9)
    return bank


def _unit(vector: FloatArray) -> FloatArray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 1e-12 else np.zeros_like(vector)


def _centred_unit(vector: FloatArray) -> FloatArray:
    return _unit(vector - vector.mean())


def _circular_correlation(a: FloatArray, b: FloatArray) -> FloatArray:
    """r[k] = sum_t sum_p a[t, p] * b[t, (p + k) % 12], averaged over t."""
    spectrum = np.conj(np.fft.rfft(a, axis=1)) * np.fft.rfft(b, axis=1)
    correlation: FloatArray = np.fft.irfft(spectrum, n=12, axis=1).mean(axis=0)
    return correlation


class DspBackend(EmbeddingBackend):
    """CPU-only music descriptors; see the module docstring for the blocks."""

    name = "dsp"
    sample_rate = SAMPLE_RATE
    default_chunk_seconds = 5.0
    device = "cpu"

    _PITCH_FFT = 2048
    _PITCH_HOP = 512
    _LOWEST_MIDI = 43  # G2: lower semitones are narrower than one FFT bin at this size
    _PITCH_BANDS = 60  # five octaves, so every pitch class has five bands
    _SPECTRAL_FFT = 512
    _SPECTRAL_HOP = 128
    _MEL_BANDS = 40
    # Smoothed chroma for the progression block: 8 frames (0.37 s) every 4 (0.19 s).
    _SMOOTH = 8
    _SMOOTH_HOP = 4
    _LAGS = (1, 2, 4, 8)
    _TRANSITION_LAG = 4
    _BEAT_MULTIPLES = np.array([0.25, 1 / 3, 0.5, 2 / 3, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0])

    min_chunk_samples = _PITCH_FFT

    def __init__(self, parameters: DspParameters | None = None) -> None:
        self.parameters = parameters or DspParameters()
        unknown = set(self.parameters.weights) - set(BLOCK_DIMS)
        if unknown:
            raise ValueError(f"unknown DSP blocks in weights: {sorted(unknown)}; known: {sorted(BLOCK_DIMS)}")
        if any(w < 0 for w in self.parameters.weights.values()):
            raise ValueError("DSP block weights must be >= 0")
        if not any(self.parameters.weights.get(b, 0.0) > 0 for b in BLOCK_DIMS):
            raise ValueError("at least one DSP block needs a positive weight")
        if not 0.0 <= self.parameters.chunk_share < 1.0:
            raise ValueError("chunk_share must be in [0, 1)")
        if self.parameters.patch_frames < 4:
            raise ValueError("patch_frames must be at least 4")
        self.revision = f"v{FEATURE_SET_VERSION}-{self.parameters.fingerprint()}"
        self.dim = modulation_dim(self.parameters.patch_frames) + self.chunk_dim
        weights = ",".join(f"{b}={self.parameters.weights.get(b, 0.0):g}" for b in BLOCK_DIMS)
        self.pooling = (
            f"[2D Fourier magnitude of pitch-sequence patches ({self.parameters.patch_frames} frames), "
            f"share {1 - self.parameters.chunk_share:g}] + [pooled chunks, share {self.parameters.chunk_share:g}: "
            f"dsp blocks centred+l2, weighted ({weights}); frames: mean/statistics]"
        )
        self._pitch_bank = _pitch_filterbank(self._PITCH_FFT, SAMPLE_RATE, self._LOWEST_MIDI, self._PITCH_BANDS)
        self._mel_bank = _mel_filterbank(self._SPECTRAL_FFT, SAMPLE_RATE, self._MEL_BANDS, 40.0, 5000.0)
        self._pitch_class_of_band = (self._LOWEST_MIDI + np.arange(self._PITCH_BANDS)) % 12
        template = _MAJOR_PROFILE - _MAJOR_PROFILE.mean()
        # _rotation_index[r, p] = (p + r) % 12: x[_rotation_index[r]] is x read from tonic r.
        self._rotation_index = (np.arange(12)[None, :] + np.arange(12)[:, None]) % 12
        self._template = template / np.linalg.norm(template)

    @property
    def chunk_dim(self) -> int:
        return sum(BLOCK_DIMS.values())

    @cached_property
    def block_slices(self) -> dict[str, slice]:
        slices, start = {}, 0
        for block, dim in BLOCK_DIMS.items():
            slices[block] = slice(start, start + dim)
            start += dim
        return slices

    def embed_chunks(self, chunks: ChunkBatch, lengths: ChunkLengths) -> ChunkVectors:
        # One chunk at a time on purpose: a chunk's vector then cannot depend
        # on its batch neighbours, and numpy's FFTs gain nothing from batching.
        out = np.zeros((chunks.shape[0], self.chunk_dim), dtype=np.float32)
        for row in range(chunks.shape[0]):
            valid = chunks[row, : int(lengths[row])].astype(np.float64)
            out[row] = self.embed_signal(valid).astype(np.float32)
        return out

    def track_vector(self, pooled: npt.NDArray[np.float32], sequence: PitchSequence) -> npt.NDArray[np.float32]:
        """The track-level block first, then the pooled chunk vector with a small share; unit length."""
        share = self.parameters.chunk_share
        track_level = modulation_spectrum(sequence, self.parameters.patch_frames)
        chunks = pooled.astype(np.float64)
        norm = float(np.linalg.norm(chunks))
        chunks = chunks / norm if norm > 1e-12 else chunks
        vector = np.concatenate([track_level * np.sqrt(1.0 - share), chunks * np.sqrt(share)])
        return _unit(vector).astype(np.float32)

    def embed_signal(self, signal: FloatArray) -> FloatArray:
        """All blocks for one mono chunk at 11,025 Hz, weighted and concatenated."""
        blocks = self.blocks(signal)
        parts = []
        for block, dim in BLOCK_DIMS.items():
            weight = float(self.parameters.weights.get(block, 0.0))
            values = blocks[block]
            assert values.shape == (dim,), (block, values.shape)
            parts.append(values * np.sqrt(weight))
        return np.concatenate(parts)

    # --- the blocks ---------------------------------------------------------

    def blocks(self, signal: FloatArray) -> dict[str, FloatArray]:
        peak = float(np.max(np.abs(signal))) if signal.size else 0.0
        if peak <= 0.0:
            return {block: np.zeros(dim) for block, dim in BLOCK_DIMS.items()}
        signal = signal / peak

        log_pitch, frame_weight = self._log_pitch(signal)
        chroma = self._crp_chroma(log_pitch)
        key_weights = self._key_weights(chroma, frame_weight)
        mel_log, onset = self._mel_and_onsets(signal)
        return {
            "pitch_classes": self._pitch_class_block(chroma, frame_weight, key_weights),
            "intervals": self._interval_block(chroma, frame_weight),
            "progression": self._progression_block(chroma, frame_weight, key_weights),
            "melody": self._melody_block(chroma, frame_weight, key_weights),
            "timbre": self._timbre_block(mel_log),
            "rhythm": self._rhythm_block(onset),
        }

    def _log_pitch(self, signal: FloatArray) -> tuple[FloatArray, FloatArray]:
        power = _power_spectrogram(signal, self._PITCH_FFT, self._PITCH_HOP)
        energy = power @ self._pitch_bank  # (frames, 60)
        frame_energy = energy.sum(axis=1)
        reference = float(frame_energy.mean()) / self._PITCH_BANDS + 1e-12
        log_pitch = np.log1p(self.parameters.log_gain * energy / reference)
        # Frames 40 dB below the loudest carry no pitch worth counting.
        frame_weight = (frame_energy > frame_energy.max() * 1e-4).astype(np.float64)
        return log_pitch, frame_weight

    def _crp_chroma(self, log_pitch: FloatArray) -> FloatArray:
        coefficients = sfft.dct(log_pitch, type=2, norm="ortho", axis=1)
        coefficients[:, : self.parameters.crp_dropped_coefficients] = 0.0
        reduced = sfft.idct(coefficients, type=2, norm="ortho", axis=1)
        chroma = np.zeros((log_pitch.shape[0], 12))
        np.add.at(chroma.T, self._pitch_class_of_band, reduced.T)
        norms = np.linalg.norm(chroma, axis=1, keepdims=True)
        normalised: FloatArray = np.where(norms > 1e-9, chroma / np.maximum(norms, 1e-9), 0.0)
        return normalised

    def _key_weights(self, chroma: FloatArray, frame_weight: FloatArray) -> FloatArray:
        profile = (chroma * frame_weight[:, None]).sum(axis=0)
        scores = profile[self._rotation_index] @ self._template  # score of each candidate tonic
        spread = float(scores.std())
        if spread < 1e-12:
            return np.full(12, 1.0 / 12.0)
        z = self.parameters.key_sharpness * (scores - scores.max()) / spread
        weights: FloatArray = np.exp(z) / np.exp(z).sum()
        return weights

    def _canonical_vector(self, vector: FloatArray, key_weights: FloatArray) -> FloatArray:
        """sum_r w[r] * x[(p + r) % 12]: the profile read from each candidate tonic, blended."""
        rotated: FloatArray = key_weights @ vector[self._rotation_index]
        return rotated

    def _canonical_matrix(self, matrix: FloatArray, key_weights: FloatArray) -> FloatArray:
        """sum_r w[r] * M[(p + r) % 12, (q + r) % 12]: both axes moved to each candidate tonic."""
        index = self._rotation_index
        stacked = matrix[index[:, :, None], index[:, None, :]]  # (12 rotations, 12, 12)
        rotated: FloatArray = np.tensordot(key_weights, stacked, axes=1)
        return rotated

    def _pitch_class_block(self, chroma: FloatArray, frame_weight: FloatArray, key_weights: FloatArray) -> FloatArray:
        total = max(float(frame_weight.sum()), 1.0)
        profile = (chroma * frame_weight[:, None]).sum(axis=0) / total
        canonical = self._canonical_vector(profile, key_weights)
        magnitudes = np.abs(np.fft.rfft(profile))[1:7]
        return _unit(np.concatenate([_centred_unit(canonical), _centred_unit(magnitudes) * 0.7]))

    def _interval_block(self, chroma: FloatArray, frame_weight: FloatArray) -> FloatArray:
        voiced = chroma[frame_weight > 0]
        if voiced.shape[0] == 0:
            return np.zeros(6)
        autocorrelation = _circular_correlation(voiced, voiced)
        return _centred_unit(autocorrelation[1:7])

    def _smoothed_chroma(self, chroma: FloatArray, frame_weight: FloatArray) -> FloatArray:
        weighted = chroma * frame_weight[:, None]
        count = weighted.shape[0]
        if count < self._SMOOTH:
            smoothed = weighted.sum(axis=0, keepdims=True)
        else:
            cumulative = np.vstack([np.zeros((1, 12)), np.cumsum(weighted, axis=0)])
            starts = np.arange(0, count - self._SMOOTH + 1, self._SMOOTH_HOP)
            smoothed = cumulative[starts + self._SMOOTH] - cumulative[starts]
        norms = np.linalg.norm(smoothed, axis=1, keepdims=True)
        unit: FloatArray = np.where(norms > 1e-9, smoothed / np.maximum(norms, 1e-9), 0.0)
        return unit

    def _progression_block(self, chroma: FloatArray, frame_weight: FloatArray, key_weights: FloatArray) -> FloatArray:
        smoothed = self._smoothed_chroma(chroma, frame_weight)
        steps = smoothed.shape[0]
        lag = min(self._TRANSITION_LAG, max(steps - 1, 0))
        if lag > 0:
            transition = smoothed[:-lag].T @ smoothed[lag:] / (steps - lag)
        else:
            transition = np.outer(smoothed[0], smoothed[0])
        canonical = self._canonical_matrix(transition, key_weights).ravel()
        correlations = []
        for step in self._LAGS:
            if steps > step:
                correlations.append(_centred_unit(_circular_correlation(smoothed[:-step], smoothed[step:])))
            else:
                correlations.append(np.zeros(12))
        return _unit(np.concatenate([_centred_unit(canonical), np.concatenate(correlations) * 0.5]))

    def _melody_block(self, chroma: FloatArray, frame_weight: FloatArray, key_weights: FloatArray) -> FloatArray:
        # Notes that enter: the rise of each pitch class from one smoothed
        # step to the next. Their interval to what sounded just before is
        # how a line moves against its harmony (12, transposition-invariant);
        # the key-relative profile of entering notes says on which scale
        # degrees new notes land (12). Both count note entries, not time,
        # so tempo barely matters.
        smoothed = np.maximum(0.0, self._smoothed_chroma(chroma, frame_weight))
        if smoothed.shape[0] < 2:
            return np.zeros(24)
        entering = np.maximum(0.0, smoothed[1:] - smoothed[:-1])
        against_previous = _circular_correlation(smoothed[:-1], entering)
        degrees = self._canonical_vector(entering.sum(axis=0), key_weights)
        return _unit(np.concatenate([_centred_unit(against_previous), _centred_unit(degrees)]))

    def _mel_and_onsets(self, signal: FloatArray) -> tuple[FloatArray, FloatArray]:
        power = _power_spectrogram(signal, self._SPECTRAL_FFT, self._SPECTRAL_HOP)
        mel = power @ self._mel_bank
        reference = float(mel.mean()) + 1e-12
        mel_log = np.log(1e-4 + mel / reference)
        flux = np.maximum(0.0, np.diff(mel_log, axis=0)).mean(axis=1)
        onset = np.concatenate([[0.0], flux])
        return mel_log, onset

    def _timbre_block(self, mel_log: FloatArray) -> FloatArray:
        cepstrum = sfft.dct(mel_log, type=2, norm="ortho", axis=1)[:, 1:14]
        # Fixed scale so coefficients of every order count about alike.
        scale = 1.0 + np.arange(1, 14) * 0.5
        stats = np.concatenate([cepstrum.mean(axis=0) * scale, cepstrum.std(axis=0) * scale])
        return _centred_unit(stats)

    def _rhythm_block(self, onset: FloatArray) -> FloatArray:
        frame_rate = SAMPLE_RATE / self._SPECTRAL_HOP
        # Keep only peaks above the local mean (0.25 s), the usual onset detector.
        # Never wider than the chunk: np.convolve's "same" output takes the longer length.
        width = max(min(int(0.25 * frame_rate), onset.shape[0]), 1)
        local = np.convolve(onset, np.ones(width) / width, mode="same")
        novelty = np.maximum(0.0, onset - local)
        if novelty.sum() <= 1e-12 or novelty.shape[0] < 8:
            return np.zeros(16)
        size = sfft.next_fast_len(2 * novelty.shape[0])
        spectrum = np.fft.rfft(novelty - novelty.mean(), n=size)
        autocorrelation = np.fft.irfft(spectrum.real**2 + spectrum.imag**2, n=size)[: novelty.shape[0]]
        if autocorrelation[0] <= 1e-12:
            return np.zeros(16)
        autocorrelation = autocorrelation / autocorrelation[0]
        # Unbiased: later lags overlap fewer frames in a 5 s chunk.
        overlap = (novelty.shape[0] - np.arange(novelty.shape[0])) / novelty.shape[0]
        autocorrelation = autocorrelation / np.maximum(overlap, 0.25)
        lags = np.arange(autocorrelation.shape[0]) / frame_rate
        candidates = (lags >= 0.25) & (lags <= 1.5)
        if not candidates.any():
            return np.zeros(16)
        # Log-normal prior around 0.5 s (120 bpm), the usual tempo prior.
        prior = np.exp(-0.5 * (np.log2(np.maximum(lags, 1e-3) / 0.5) / 1.0) ** 2)
        scored = np.where(candidates, autocorrelation * prior, -np.inf)
        best = int(np.argmax(scored))
        beat = float(best)
        if 0 < best < autocorrelation.shape[0] - 1:
            a, b, c = autocorrelation[best - 1 : best + 2]
            denominator = a - 2 * b + c
            if abs(denominator) > 1e-12:
                beat = best + float(np.clip(0.5 * (a - c) / denominator, -0.5, 0.5))
        positions = beat * self._BEAT_MULTIPLES
        pattern = np.interp(positions, np.arange(autocorrelation.shape[0]), autocorrelation, right=0.0)
        clarity = float(autocorrelation[best])
        density = float(np.mean(novelty > novelty.mean() + novelty.std()))
        log_tempo = float(np.log2(0.5 / (beat / frame_rate)))
        extra = np.array([clarity, density * 4.0, log_tempo, float(prior[best])])
        return _unit(np.concatenate([_centred_unit(pattern), extra * 0.3]))
