"""The compact pitch-content sequence every track carries beside its vector, whatever the backend.

The query service aligns these sequences to recognise other versions of the
same work (mess.query.versions), so they have to survive exactly what makes
a version a version: another instrument, another tempo, another key. The
recipe is the CENS one (chroma energy normalised statistics, Mueller et al.
2005) on a CRP front end (Mueller & Ewert 2010):

* 60 semitone bands (G2..F#7) from a 2,048-point STFT at 11,025 Hz, hop 1,024
  (93 ms; coarser than the dsp backend's own front end on purpose: the
  sequence is smoothed to ~0.5 s anyway and this keeps it cheap);
* log compression, then the smooth part of the log-pitch spectrum (the
  spectral envelope, i.e. the instrument) is removed with a DCT before the
  bands are folded onto 12 pitch classes: timbre robustness;
* each frame is normalised, smoothed over ~3.1 s with a Hann window and
  downsampled to ``FRAME_RATE`` (~1.35 frames/s), then normalised again:
  local tempo wobble and ornaments average out, the harmony stays;
* quantised to uint8 (255 = the frame's strongest class): 12 bytes a frame.

The sequence is *not* transposed or time-normalised here: the aligner finds
the key shift (optimal transposition index) and follows tempo with its path.

Cost is bounded: at most ``MAX_FRAMES`` frames (~214 s) are kept, so a
3,600 s track costs as much to align as a 3.5-minute one; versions of a
work are recognised from their opening minutes.
"""

import numpy as np
import numpy.typing as npt
from scipy import fft as sfft
from scipy.signal import get_window

SAMPLE_RATE = 11025
N_FFT = 2048
HOP = 1024
SMOOTH_FRAMES = 33  # ~3.1 s of STFT frames
DOWNSAMPLE = 8
FRAME_RATE = SAMPLE_RATE / HOP / DOWNSAMPLE  # ~1.35 frames a second
MAX_FRAMES = 288
LOWEST_MIDI = 43
BANDS = 60
DROPPED_COEFFICIENTS = 12
LOG_GAIN = 100.0

PitchSequence = npt.NDArray[np.uint8]


def _pitch_bank() -> npt.NDArray[np.float64]:
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
    midi = np.full_like(freqs, -100.0)
    midi[1:] = 69.0 + 12.0 * np.log2(freqs[1:] / 440.0)
    centres = LOWEST_MIDI + np.arange(BANDS)
    bank = np.maximum(0.0, 1.0 - np.abs(midi[:, None] - centres[None, :]))
    bank /= np.maximum(bank.sum(axis=0, keepdims=True), 1e-9)
    return bank


_BANK = _pitch_bank()
_FOLD = np.zeros((BANDS, 12))
_FOLD[np.arange(BANDS), (LOWEST_MIDI + np.arange(BANDS)) % 12] = 1.0
_WINDOW = np.hanning(N_FFT + 1)[:-1]
_SMOOTHER = get_window("hann", SMOOTH_FRAMES + 2)[1:-1]


def empty_sequence() -> PitchSequence:
    return np.zeros((0, 12), dtype=np.uint8)


def pitch_sequence(signal: npt.NDArray[np.floating], sample_rate: int = SAMPLE_RATE) -> PitchSequence:
    """(frames, 12) uint8 CENS-like chroma of mono audio at 11,025 Hz; at most ``MAX_FRAMES`` frames."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"pitch sequences are computed at {SAMPLE_RATE} Hz, not {sample_rate} Hz")
    # Only what the kept frames need is analysed: a long track costs no more than the cap.
    needed = (MAX_FRAMES * DOWNSAMPLE + SMOOTH_FRAMES) * HOP + N_FFT
    x = np.asarray(signal[:needed], dtype=np.float64)
    if x.shape[0] < N_FFT:
        x = np.pad(x, (0, N_FFT - x.shape[0]))
    peak = float(np.max(np.abs(x)))
    if peak <= 0.0:
        return empty_sequence()
    count = 1 + (x.shape[0] - N_FFT) // HOP
    frames = np.lib.stride_tricks.sliding_window_view(x / peak, N_FFT)[::HOP][:count] * _WINDOW
    spectrum = np.fft.rfft(frames, axis=1)
    energy = (spectrum.real**2 + spectrum.imag**2) @ _BANK
    reference = float(energy.sum(axis=1).mean()) / BANDS + 1e-12
    log_pitch = np.log1p(LOG_GAIN * energy / reference)
    coefficients = sfft.dct(log_pitch, type=2, norm="ortho", axis=1)
    coefficients[:, :DROPPED_COEFFICIENTS] = 0.0
    reduced = sfft.idct(coefficients, type=2, norm="ortho", axis=1)
    # Negative CRP values say "less than the envelope predicts"; for alignment
    # only what sounds matters.
    chroma = np.maximum(reduced @ _FOLD, 0.0)
    chroma /= np.maximum(np.linalg.norm(chroma, axis=1, keepdims=True), 1e-9)
    # Smooth along time (per pitch class) and keep every DOWNSAMPLE-th frame.
    cumulative = np.stack([np.convolve(chroma[:, p], _SMOOTHER, mode="same") for p in range(12)], axis=1)[::DOWNSAMPLE][
        :MAX_FRAMES
    ]
    peaks = cumulative.max(axis=1, keepdims=True)
    scaled = np.where(peaks > 1e-9, cumulative / np.maximum(peaks, 1e-9), 0.0)
    quantised: PitchSequence = np.rint(scaled * 255.0).astype(np.uint8)
    return quantised


def modulation_dim(patch_frames: int) -> int:
    return 12 * (patch_frames // 2 + 1)


def modulation_spectrum(sequence: PitchSequence, patch_frames: int) -> npt.NDArray[np.float64]:
    """Mean 2D Fourier magnitude of ``patch_frames``-long patches (every 2 frames), centred, unit length.

    Invariant to transposition (a rotation of the pitch axis) and to where the
    music starts; see the dsp backend for why it is the track-level block."""
    frames = sequence.astype(np.float64) / 255.0
    if frames.shape[0] < patch_frames:
        frames = np.vstack([frames, np.zeros((patch_frames - frames.shape[0], 12))])
    patches = np.lib.stride_tricks.sliding_window_view(frames, patch_frames, axis=0)[::2]  # (n, 12, frames)
    magnitude = np.abs(np.fft.rfft2(patches, axes=(1, 2))).mean(axis=0)
    values = np.log1p(magnitude).ravel()
    values -= values.mean()
    norm = float(np.linalg.norm(values))
    unit: npt.NDArray[np.float64] = values / norm if norm > 1e-12 else np.zeros_like(values)
    return unit
