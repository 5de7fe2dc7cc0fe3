"""Audio bytes to one track vector: decode, resample, chunk, batch, pool.

The CPU-heavy steps run in a thread pool and the model in its own thread
(through the batcher), so the event loop only orchestrates.
"""

import asyncio
import hashlib
import math
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mess.contracts.events import ModelIdentity
from mess.contracts.storage import WaveformPeaks
from mess.embedder.audio import (
    AudioLimits,
    AudioRejectedError,
    Chunks,
    chunk,
    decode,
    pool_chunks,
    resample,
    waveform_peaks,
)
from mess.embedder.backends.base import EmbeddingBackend
from mess.embedder.batching import ChunkBatcher


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


@dataclass(frozen=True)
class EmbeddedTrack:
    vector: npt.NDArray[np.float32]
    chunks: int
    duration_s: float
    peaks: WaveformPeaks


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
    ) -> None:
        self.backend = backend
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
        at_model_rate = resample(decoded.samples, decoded.sample_rate, self.backend.sample_rate)
        chunks = chunk(at_model_rate, self.chunk_samples, self.hop_samples, self.backend.min_chunk_samples)
        return PreparedTrack(chunks=chunks, duration_s=decoded.duration_s, peaks=peaks)

    async def embed(self, track_id: str, data: bytes, expected_sha256: str | None) -> EmbeddedTrack:
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(self.prepare_executor, self.prepare, track_id, data, expected_sha256)
        vectors = await self.batcher.embed(prepared.chunks)
        if not np.all(np.isfinite(vectors)):
            raise AudioRejectedError("model_error", "the model returned NaN or infinite values for this audio")
        try:
            vector = pool_chunks(vectors, prepared.chunks.weights)
        except ValueError as exc:
            raise AudioRejectedError("model_error", str(exc)) from exc
        if not math.isfinite(float(vector.sum())):
            raise AudioRejectedError("model_error", "the pooled vector is not finite")
        return EmbeddedTrack(
            vector=vector, chunks=prepared.chunks.count, duration_s=prepared.duration_s, peaks=prepared.peaks
        )
