"""Audio bytes to one track vector: decode, resample, chunk, batch, pool.

The CPU-heavy steps run in a thread pool and the model in its own thread
(through the batcher), so the event loop only orchestrates.
"""

import asyncio
import hashlib
import math
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from mess.contracts.events import ModelIdentity
from mess.contracts.storage import WaveformPeaks
from mess.embedder.audio import (
    AudioLimits,
    AudioRejectedError,
    Chunks,
    DecodedAudio,
    chunk,
    decode,
    pool_chunks,
    resample,
    waveform_peaks,
)
from mess.embedder.backends.base import EmbeddingBackend
from mess.embedder.batching import ChunkBatcher, Lane
from mess.embedder.pitch_sequence import SAMPLE_RATE as SEQUENCE_RATE
from mess.embedder.pitch_sequence import PitchSequence, empty_sequence, pitch_sequence


@dataclass(frozen=True)
class ChunkPlan:
    seconds: float
    hop_seconds: float

    def describe(self) -> str:
        return f"chunks={self.seconds:g}s/hop={self.hop_seconds:g}s, duration-weighted mean, l2"


@dataclass(frozen=True)
class PreparedTrack:
    chunks: Chunks
    duration_s: float
    peaks: WaveformPeaks
    # The pitch-content sequence the query service aligns to recognise versions
    # (mess.embedder.pitch_sequence); the same for every backend.
    pitch_sequence: PitchSequence = field(default_factory=empty_sequence)


@dataclass(frozen=True)
class PreparedClip:
    chunks: Chunks
    duration_s: float
    pitch_sequence: PitchSequence


@dataclass(frozen=True)
class EmbeddedClipVector:
    vector: npt.NDArray[np.float32]
    chunks: int
    duration_s: float
    pitch_sequence: PitchSequence


@dataclass(frozen=True)
class EmbeddedTrack:
    vector: npt.NDArray[np.float32]
    chunks: int
    duration_s: float
    peaks: WaveformPeaks
    pitch_sequence: PitchSequence = field(default_factory=empty_sequence)


def model_identity(backend: EmbeddingBackend, plan: ChunkPlan) -> ModelIdentity:
    """Everything that changes a vector is in the identity, so an index never mixes two kinds."""
    return ModelIdentity(
        name=backend.name, revision=backend.revision, dim=backend.dim, pooling=f"{backend.pooling}; {plan.describe()}"
    )


class ChecksumMismatchError(AudioRejectedError):
    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(
            "checksum_mismatch",
            f"the stored audio's sha256 is {actual}, the event says {expected}: the object changed after ingest",
        )


class TrackEmbedder:
    def __init__(
        self,
        backend: EmbeddingBackend,
        batcher: ChunkBatcher,
        prepare_executor: Executor,
        plan: ChunkPlan,
        limits: AudioLimits,
        waveform_pairs: int = 2000,
        clip_limits: AudioLimits | None = None,
    ) -> None:
        self.backend = backend
        self.clip_limits = clip_limits or limits
        self.batcher = batcher
        self.prepare_executor = prepare_executor
        self.plan = plan
        self.limits = limits
        self.waveform_pairs = waveform_pairs
        self.identity = model_identity(backend, plan)
        self.chunk_samples = round(plan.seconds * backend.sample_rate)
        self.hop_samples = max(1, round(plan.hop_seconds * backend.sample_rate))

    def prepare(self, track_id: str, data: bytes, expected_sha256: str | None) -> PreparedTrack:
        """Blocking: checksum, decode, peaks, resample, chunk."""
        if expected_sha256 is not None:
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected_sha256:
                raise ChecksumMismatchError(expected_sha256, actual)
        decoded = decode(data, self.limits)
        peaks = waveform_peaks(track_id, decoded, self.waveform_pairs)
        chunks, sequence = self._chunks_and_sequence(decoded)
        return PreparedTrack(chunks=chunks, duration_s=decoded.duration_s, peaks=peaks, pitch_sequence=sequence)

    def prepare_clip(self, data: bytes, max_seconds: float) -> PreparedClip:
        """Blocking: decode a clip under the track bounds and at most ``max_seconds`` (the lower of the
        caller's and this service's); a longer clip is refused, not cut, so the answer is about what was sent.
        No waveform: nothing of a clip is kept or drawn."""
        limits = replace(self.clip_limits, max_seconds=min(max_seconds, self.clip_limits.max_seconds))
        decoded = decode(data, limits)
        if decoded.truncated:
            raise AudioRejectedError(
                "too_long", f"the clip lasts more than {limits.max_seconds:g} s; send at most that much"
            )
        chunks, sequence = self._chunks_and_sequence(decoded)
        return PreparedClip(chunks=chunks, duration_s=decoded.duration_s, pitch_sequence=sequence)

    def _chunks_and_sequence(self, decoded: DecodedAudio) -> tuple[Chunks, PitchSequence]:
        at_model_rate = resample(decoded.samples, decoded.sample_rate, self.backend.sample_rate)
        chunks = chunk(at_model_rate, self.chunk_samples, self.hop_samples, self.backend.min_chunk_samples)
        # The dsp backend already works at the sequence's rate; MERT's 24 kHz is resampled once more.
        at_sequence_rate = (
            at_model_rate
            if self.backend.sample_rate == SEQUENCE_RATE
            else resample(decoded.samples, decoded.sample_rate, SEQUENCE_RATE)
        )
        return chunks, pitch_sequence(at_sequence_rate)

    async def embed(self, track_id: str, data: bytes, expected_sha256: str | None) -> EmbeddedTrack:
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(self.prepare_executor, self.prepare, track_id, data, expected_sha256)
        vector = await self._vector(prepared.chunks, prepared.pitch_sequence, "track")
        return EmbeddedTrack(
            vector=vector,
            chunks=prepared.chunks.count,
            duration_s=prepared.duration_s,
            peaks=prepared.peaks,
            pitch_sequence=prepared.pitch_sequence,
        )

    async def embed_clip(self, data: bytes, max_seconds: float) -> EmbeddedClipVector:
        """A clip through the same decode bounds, threads, batcher and model as a track, in the clip lane."""
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(self.prepare_executor, self.prepare_clip, data, max_seconds)
        vector = await self._vector(prepared.chunks, prepared.pitch_sequence, "clip")
        return EmbeddedClipVector(
            vector=vector,
            chunks=prepared.chunks.count,
            duration_s=prepared.duration_s,
            pitch_sequence=prepared.pitch_sequence,
        )

    async def _vector(self, chunks: Chunks, sequence: PitchSequence, lane: Lane) -> npt.NDArray[np.float32]:
        vectors = await self.batcher.embed(chunks, lane)
        if not np.all(np.isfinite(vectors)):
            raise AudioRejectedError("model_error", "the model returned NaN or infinite values for this audio")
        try:
            vector = self.backend.track_vector(pool_chunks(vectors, chunks.weights), sequence)
        except ValueError as exc:
            raise AudioRejectedError("model_error", str(exc)) from exc
        if not math.isfinite(float(vector.sum())):
            raise AudioRejectedError("model_error", "the pooled vector is not finite")
        return vector
