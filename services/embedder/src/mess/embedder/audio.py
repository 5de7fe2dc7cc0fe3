"""From stored bytes to model-ready chunks: decode, mono, checks, resample, chunk, peaks.

Everything here is plain CPU work on numpy arrays, deterministic, and free
of I/O, so the consumer runs it in a worker thread and the tests run it
directly on synthetic files.
"""

import io
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

from mess.contracts.limits import MAX_CHANNELS, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from mess.contracts.storage import WaveformPeaks

Mono = npt.NDArray[np.float32]

# Interleaved samples read per block (4 MB of float32), whatever the channel
# count: a block of frames is sized by samples, so 1024 channels cannot turn
# one read into gigabytes.
_DECODE_BLOCK_SAMPLES = 1 << 20
# Mono samples per resampler call: the resampler's own buffers stay small.
_RESAMPLE_BLOCK = 1 << 18


class AudioRejectedError(ValueError):
    """Audio that can never be embedded; ``kind`` is the dead letter's ``error_kind``."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True)
class AudioLimits:
    """What one file may cost. Memory is bounded by samples, channels and rate,
    never by seconds alone: a file's header chooses its rate, and 900 s at
    655,350 Hz is 2.4 GB of float32 before resampling."""

    min_seconds: float = 1.0
    max_seconds: float = 1800.0
    # Peak below this (about -80 dBFS) is treated as silence.
    silence_peak: float = 1e-4
    # Outside these no real recording lies; such a header is a decode error.
    # The bounds are ingest's too (mess.contracts.limits), so what ingest accepts the embedder takes.
    min_sample_rate: int = MIN_SAMPLE_RATE
    max_sample_rate: int = MAX_SAMPLE_RATE
    max_channels: int = MAX_CHANNELS
    # Mono samples kept at the file's own rate (900 s at 48 kHz: 173 MB of
    # float32). Longer audio is cut here, like audio over max_seconds.
    max_samples: int = 900 * 48_000

    def check_header(self, sample_rate: int, channels: int) -> None:
        """Raise ``AudioRejectedError("decode", ...)`` for a rate or channel count no audio has."""
        if not self.min_sample_rate <= sample_rate <= self.max_sample_rate:
            raise AudioRejectedError(
                "decode",
                f"implausible sample rate {sample_rate} Hz; "
                f"accepted: {self.min_sample_rate} to {self.max_sample_rate} Hz",
            )
        if not 1 <= channels <= self.max_channels:
            raise AudioRejectedError(
                "decode", f"implausible channel count {channels}; accepted: 1 to {self.max_channels}"
            )

    def max_frames(self, sample_rate: int) -> int:
        return max(1, min(int(self.max_seconds * sample_rate), self.max_samples))


@dataclass(frozen=True)
class DecodedAudio:
    """Mono float32 audio at its original rate, plus what the file said about itself."""

    samples: Mono
    sample_rate: int
    channels: int
    subtype: str
    truncated: bool

    @property
    def duration_s(self) -> float:
        return float(self.samples.shape[0] / self.sample_rate)


def _read_mono(handle: sf.SoundFile, channels: int, max_frames: int) -> Mono:
    """Up to ``max_frames + 1`` frames mixed to mono, block by block, into one growing buffer.

    The buffer starts at what the header declares (capped), so a short file
    costs little, and grows by doubling (still capped) when the header
    understated the length; no list of blocks is concatenated at the end,
    which would hold the audio twice.
    """
    cap = max_frames + 1
    declared = int(handle.frames) if handle.frames and handle.frames > 0 else 0
    out = np.empty(min(max(declared, 1), cap), dtype=np.float32)
    filled = 0
    block_frames = max(1, _DECODE_BLOCK_SAMPLES // channels)
    mix = np.full(channels, 1.0 / channels, dtype=np.float32)
    while filled < cap:
        block = handle.read(frames=min(block_frames, cap - filled), dtype="float32", always_2d=True)
        if block.shape[0] == 0:
            break
        # A matrix-vector product: numpy's mean over a 2-wide axis is several times slower.
        mono = block @ mix if channels > 1 else block[:, 0]
        if filled + mono.shape[0] > out.shape[0]:
            grown = np.empty(min(max(2 * out.shape[0], filled + mono.shape[0]), cap), dtype=np.float32)
            grown[:filled] = out[:filled]
            out = grown
        out[filled : filled + mono.shape[0]] = mono
        filled += mono.shape[0]
    return out[:filled]


def decode(data: bytes, limits: AudioLimits) -> DecodedAudio:
    """Decode any format libsndfile reads (WAV 8/16/24/32-bit, FLAC, OGG, MP3, AIFF, ...)
    and mix down to mono. Raises ``AudioRejectedError`` for undecodable, silent or too short audio,
    and for a header whose rate or channel count no real recording has."""
    if not data:
        raise AudioRejectedError("decode", "the audio object is empty (0 bytes)")
    try:
        with sf.SoundFile(io.BytesIO(data)) as handle:
            sample_rate = int(handle.samplerate)
            channels = int(handle.channels)
            subtype = str(handle.subtype)
            # Checked before a single frame is read: the rate sets how much
            # memory the seconds allowed would cost.
            limits.check_header(sample_rate, channels)
            # Over-long audio is embedded from its start: the vector is an
            # average anyway, and memory stays bounded.
            max_frames = limits.max_frames(sample_rate)
            mono = _read_mono(handle, channels, max_frames)
    except AudioRejectedError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, EOFError) as exc:
        raise AudioRejectedError("decode", f"cannot decode audio: {exc}") from exc
    truncated = mono.shape[0] > max_frames
    mono = np.ascontiguousarray(mono[:max_frames], dtype=np.float32)
    if not np.all(np.isfinite(mono)):
        raise AudioRejectedError("decode", "audio holds NaN or infinite samples")
    duration = mono.shape[0] / sample_rate
    if duration < limits.min_seconds:
        raise AudioRejectedError(
            "too_short", f"audio lasts {duration:.3f} s; at least {limits.min_seconds:g} s is needed to embed it"
        )
    peak = float(np.max(np.abs(mono)))
    if peak < limits.silence_peak:
        level = 20 * math.log10(peak) if peak > 0 else float("-inf")
        raise AudioRejectedError("silent", f"audio is silent (peak {level:.1f} dBFS over {duration:.1f} s)")
    return DecodedAudio(samples=mono, sample_rate=sample_rate, channels=channels, subtype=subtype, truncated=truncated)


def resample(samples: Mono, from_rate: int, to_rate: int) -> Mono:
    """soxr's high-quality resampler, fed in blocks; deterministic, and a no-op at equal rates.

    Streaming gives the same samples as one call (soxr keeps its state
    between blocks) while the resampler's working memory stays that of one
    block; the output goes into one array sized up front.
    """
    if from_rate == to_rate:
        return samples
    stream = soxr.ResampleStream(from_rate, to_rate, 1, dtype="float32", quality="HQ")
    expected = math.ceil(samples.shape[0] * to_rate / from_rate) + 16
    out = np.empty(expected, dtype=np.float32)
    filled = 0
    total = samples.shape[0]
    start = 0
    while True:
        end = min(start + _RESAMPLE_BLOCK, total)
        piece = stream.resample_chunk(samples[start:end], last=end >= total)
        if filled + piece.shape[0] > out.shape[0]:  # never expected; grow rather than fail
            out = np.concatenate([out[:filled], np.empty(piece.shape[0], dtype=np.float32)])
        out[filled : filled + piece.shape[0]] = piece
        filled += piece.shape[0]
        if end >= total:
            break
        start = end
    return np.ascontiguousarray(out[:filled], dtype=np.float32)


@dataclass(frozen=True)
class Chunks:
    """Zero-padded chunks of one track and how much real audio each holds."""

    audio: npt.NDArray[np.float32]  # (count, chunk_samples)
    lengths: npt.NDArray[np.int64]  # valid samples per chunk

    @property
    def count(self) -> int:
        return int(self.audio.shape[0])

    @property
    def weights(self) -> npt.NDArray[np.float64]:
        """Each chunk counts by the audio it holds, so a short tail counts little."""
        return self.lengths.astype(np.float64)


def chunk(samples: Mono, chunk_samples: int, hop_samples: int, min_samples: int) -> Chunks:
    """Cut into chunks of ``chunk_samples`` every ``hop_samples``.

    The last chunk may be short; it is kept (zero-padded, weighted by its
    length) unless it holds fewer than ``min_samples``, too few for the model
    to see one frame. Audio shorter than one chunk gives one short chunk.
    Chunks stop once one reaches the end, so overlapping hops add no chunk
    made only of audio already covered.
    """
    if chunk_samples <= 0 or hop_samples <= 0:
        raise ValueError("chunk and hop must be positive")
    total = samples.shape[0]
    starts: list[int] = []
    start = 0
    while start < total:
        length = min(chunk_samples, total - start)
        if length < min_samples and starts:
            break
        starts.append(start)
        if start + chunk_samples >= total:
            break
        start += hop_samples
    audio = np.zeros((len(starts), chunk_samples), dtype=np.float32)
    lengths = np.zeros(len(starts), dtype=np.int64)
    for row, begin in enumerate(starts):
        piece = samples[begin : begin + chunk_samples]
        audio[row, : piece.shape[0]] = piece
        lengths[row] = piece.shape[0]
    return Chunks(audio=audio, lengths=lengths)


def pool_chunks(vectors: npt.NDArray[np.float32], weights: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """Duration-weighted mean over chunks, then L2 normalisation (inner product = cosine)."""
    if vectors.shape[0] == 0:
        raise ValueError("no chunks to pool")
    mean = (vectors.astype(np.float64) * weights[:, None]).sum(axis=0) / weights.sum()
    norm = float(np.linalg.norm(mean))
    if not math.isfinite(norm) or norm <= 1e-12:
        raise ValueError("the pooled vector has no length; the model gave zero vectors")
    pooled: npt.NDArray[np.float32] = (mean / norm).astype(np.float32)
    return pooled


def waveform_peaks(track_id: str, audio: DecodedAudio, target_pairs: int = 2000) -> WaveformPeaks:
    """About ``target_pairs`` (min, max) pairs over the whole decoded track."""
    samples = audio.samples
    per_peak = max(1, math.ceil(samples.shape[0] / target_pairs))
    pairs = math.ceil(samples.shape[0] / per_peak)
    padded = np.zeros(pairs * per_peak, dtype=np.float32)
    padded[: samples.shape[0]] = samples
    # The padding of the last window must not invent a 0 the audio never had.
    if pairs * per_peak > samples.shape[0]:
        padded[samples.shape[0] :] = samples[-1]
    windows = padded.reshape(pairs, per_peak)
    return WaveformPeaks(
        track_id=track_id,
        duration_s=round(audio.duration_s, 6),
        sample_rate=audio.sample_rate,
        samples_per_peak=per_peak,
        mins=[round(float(v), 4) for v in windows.min(axis=1)],
        maxs=[round(float(v), 4) for v in windows.max(axis=1)],
    )
