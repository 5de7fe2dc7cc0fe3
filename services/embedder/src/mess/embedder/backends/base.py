"""The one interface every embedding backend implements.

A backend turns a batch of equally long, zero-padded mono chunks at its own
sample rate into one vector per chunk. Everything around it (decoding,
resampling, chunking, batching across tracks, pooling over chunks) is the
same for every backend, so a backend only owns its model and its own pooling
over layers and frames.
"""

from abc import ABC, abstractmethod

import numpy as np
import numpy.typing as npt

ChunkBatch = npt.NDArray[np.float32]
ChunkLengths = npt.NDArray[np.int64]
ChunkVectors = npt.NDArray[np.float32]


class ModelLoadError(RuntimeError):
    """The configured model cannot be used; the service must not start."""


class EmbeddingBackend(ABC):
    """A model that embeds fixed-length audio chunks."""

    #: e.g. ``m-a-p/MERT-v1-95M`` or ``dsp``
    name: str
    #: weights sha256 prefix (MERT) or feature-set version (DSP)
    revision: str
    #: length of every vector this backend returns
    dim: int
    #: how this backend pools inside a chunk (layers, frames, feature blocks)
    pooling: str
    #: rate the chunks must be resampled to
    sample_rate: int
    #: chunk length used when the settings leave it open
    default_chunk_seconds: float
    #: a final short chunk with fewer valid samples than this is dropped; it
    #: carries too little audio for even one analysis frame of the model
    min_chunk_samples: int
    #: what the backend runs on, for logs and the README's benchmark table
    device: str = "cpu"

    @property
    def chunk_dim(self) -> int:
        """Length of each chunk vector; differs from ``dim`` when ``track_vector`` adds a track-level part."""
        return self.dim

    def track_vector(self, pooled: ChunkVectors, sequence: npt.NDArray[np.uint8]) -> ChunkVectors:
        """The track vector from the pooled chunk vector and the track's pitch sequence
        (mess.embedder.pitch_sequence); the default is the pooled vector itself."""
        return pooled

    @abstractmethod
    def embed_chunks(self, chunks: ChunkBatch, lengths: ChunkLengths) -> ChunkVectors:
        """``chunks`` is (batch, samples) float32 zero-padded after ``lengths[i]``
        valid samples; returns (batch, dim) float32. Must be deterministic: a
        chunk's vector may not depend on the other chunks in its batch."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release what the backend holds (GPU memory); the default holds nothing."""
