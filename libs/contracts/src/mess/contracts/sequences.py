"""Pitch-content sequences on the wire: (frames, 12) uint8 chroma, base64 in JSON.

The embedder computes one per track (mess.embedder.pitch_sequence) and the
query service aligns them to recognise versions of a work. Small by design:
12 bytes a frame at ~1.35 frames a second, at most ``MAX_SEQUENCE_FRAMES``
frames, so a sequence rides in TrackEmbedded (at most ~4.6 kB of base64)
rather than needing an object of its own.
"""

import base64
import binascii
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from pydantic import PlainSerializer, PlainValidator, WithJsonSchema

PITCH_CLASSES = 12
# What the embedder keeps (mess.embedder.pitch_sequence.MAX_FRAMES); a larger
# one is refused, so no producer can make the indexer or a query hold more.
MAX_SEQUENCE_FRAMES = 288

PitchSequenceArray = npt.NDArray[np.uint8]


def encode_sequence(sequence: npt.ArrayLike) -> str:
    array = np.ascontiguousarray(np.asarray(sequence), dtype=np.uint8)
    if array.ndim != 2 or array.shape[1] != PITCH_CLASSES:
        raise ValueError(f"a pitch sequence is (frames, 12), got shape {array.shape}")
    return base64.b64encode(array.tobytes()).decode("ascii")


def decode_sequence(encoded: str) -> PitchSequenceArray:
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"pitch sequence is not valid base64: {exc}") from exc
    if len(raw) % PITCH_CLASSES:
        raise ValueError(f"pitch sequence byte length {len(raw)} is not a multiple of 12")
    frames = len(raw) // PITCH_CLASSES
    if frames > MAX_SEQUENCE_FRAMES:
        raise ValueError(f"pitch sequence has {frames} frames; at most {MAX_SEQUENCE_FRAMES} are accepted")
    return np.frombuffer(raw, dtype=np.uint8).reshape(frames, PITCH_CLASSES).copy()


def _validate(value: Any) -> PitchSequenceArray:
    if isinstance(value, str):
        return decode_sequence(value)
    if isinstance(value, (bytes, bytearray)):
        return decode_sequence(value.decode("ascii"))
    array = np.asarray(value)
    if array.ndim != 2 or array.shape[1] != PITCH_CLASSES or array.shape[0] > MAX_SEQUENCE_FRAMES:
        raise ValueError(f"a pitch sequence is (frames <= {MAX_SEQUENCE_FRAMES}, 12), got shape {array.shape}")
    if array.dtype != np.uint8 and (np.any(array < 0) or np.any(array > 255)):
        raise ValueError("pitch sequence values must be 0..255")
    return array.astype(np.uint8)


PitchSequence = Annotated[
    PitchSequenceArray,
    PlainValidator(_validate),
    PlainSerializer(encode_sequence, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "contentEncoding": "base64",
            "description": "uint8 (frames, 12) chroma, row-major, base64-encoded; at most 288 frames",
        }
    ),
]


# --- in a snapshot shard (mess.contracts.storage.ShardSequences) ---------------------

SequenceFrames = npt.NDArray[np.uint8]
SequenceOffsets = npt.NDArray[np.int64]


def pack_sequences(sequences: list[PitchSequenceArray | None]) -> tuple[SequenceFrames, SequenceOffsets]:
    """A shard's rows as (frames, offsets): row r is ``frames[offsets[r]:offsets[r + 1]]``, empty for None.

    Two flat arrays rather than one padded to the longest row: the file holds
    each track's own length, and both arrays memory-map as they are."""
    lengths = np.array([0 if s is None else s.shape[0] for s in sequences], dtype=np.int64)
    offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    present = [s for s in sequences if s is not None and s.shape[0] > 0]
    frames = (
        np.ascontiguousarray(np.concatenate(present), dtype=np.uint8)
        if present
        else np.zeros((0, PITCH_CLASSES), dtype=np.uint8)
    )
    return frames, offsets


def check_sequence_table(frames: npt.NDArray[Any], offsets: npt.NDArray[Any], rows: int) -> None:
    """Refuse (ValueError) a table whose rows a reader could not slice safely: wrong types or shapes,
    offsets that do not start at 0, run backwards, overrun the frames, or give a row more than
    ``MAX_SEQUENCE_FRAMES`` (so no row can make a query align more than the cap)."""
    if frames.dtype != np.uint8 or frames.ndim != 2 or frames.shape[1] != PITCH_CLASSES:
        raise ValueError(f"sequence frames must be uint8 (n, 12), got {frames.dtype} {frames.shape}")
    if offsets.dtype != np.int64 or offsets.shape != (rows + 1,):
        raise ValueError(f"sequence offsets must be int64 ({rows + 1},), got {offsets.dtype} {offsets.shape}")
    lengths = np.diff(offsets)
    if int(offsets[0]) != 0 or int(offsets[-1]) != frames.shape[0]:
        raise ValueError(f"sequence offsets span {int(offsets[0])}..{int(offsets[-1])}, not 0..{frames.shape[0]}")
    if lengths.size and (int(lengths.min()) < 0 or int(lengths.max()) > MAX_SEQUENCE_FRAMES):
        raise ValueError(f"a row's sequence length lies outside 0..{MAX_SEQUENCE_FRAMES}")
