"""Vector encoding on the wire: float32 little-endian bytes, base64 in JSON.

The round trip is bit-exact (no decimal formatting in between), so a vector
published once and replayed from the compacted topic is identical to the last
bit, which the indexer relies on to deduplicate.
"""

import base64
import binascii
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from pydantic import PlainSerializer, PlainValidator, WithJsonSchema

_LE_FLOAT32 = np.dtype("<f4")


def encode_vector(vector: npt.ArrayLike) -> str:
    array = np.ascontiguousarray(np.asarray(vector), dtype=_LE_FLOAT32)
    if array.ndim != 1:
        raise ValueError(f"a vector must be one-dimensional, got shape {array.shape}")
    return base64.b64encode(array.tobytes()).decode("ascii")


def decode_vector(encoded: str) -> npt.NDArray[np.float32]:
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"vector is not valid base64: {exc}") from exc
    if len(raw) == 0 or len(raw) % 4:
        raise ValueError(f"vector byte length {len(raw)} is not a positive multiple of 4")
    array = np.frombuffer(raw, dtype=_LE_FLOAT32).astype(np.float32)
    if not np.all(np.isfinite(array)):
        raise ValueError("vector holds NaN or infinite values")
    return array


def _validate(value: Any) -> npt.NDArray[np.float32]:
    if isinstance(value, str):
        return decode_vector(value)
    if isinstance(value, (bytes, bytearray)):
        return decode_vector(value.decode("ascii"))
    array = np.asarray(value, dtype=np.float32)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"a vector must be a non-empty 1-D array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("vector holds NaN or infinite values")
    return array


Float32Vector = Annotated[
    npt.NDArray[np.float32],
    PlainValidator(_validate),
    PlainSerializer(encode_vector, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "contentEncoding": "base64",
            "description": "float32 little-endian values, base64-encoded",
        }
    ),
]
