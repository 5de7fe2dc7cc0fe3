"""A test-side snapshot writer: publishes snapshots the way the agreements say
the indexer does (shard files, then manifest.json, then LATEST, then the
SnapshotPublished event), so the query service can be tested without the
indexer. It is deliberately small and not the indexer's code.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import faiss
import numpy as np
import numpy.typing as npt
from aiokafka import AIOKafkaProducer

from mess.contracts.events import ModelIdentity, SnapshotCounts, SnapshotPublished
from mess.contracts.sequences import pack_sequences
from mess.contracts.storage import (
    LATEST_KEY,
    ShardManifest,
    ShardSequences,
    SnapshotManifest,
    StoredFile,
    manifest_key,
    snapshot_dir,
)
from mess.runtime.endpoints import StackSettings

FloatMatrix = npt.NDArray[np.float32]


def version_name(number: int) -> str:
    return f"{number:012d}"


def unit_rows(matrix: npt.ArrayLike) -> FloatMatrix:
    array = np.asarray(matrix, dtype=np.float32)
    unit: FloatMatrix = (array / np.linalg.norm(array, axis=1, keepdims=True)).astype(np.float32)
    return unit


def model_identity(dim: int) -> ModelIdentity:
    return ModelIdentity(name="test-vectors", revision="1", dim=dim, pooling="none")


@dataclass
class ShardInput:
    ids: list[str]
    vectors: FloatMatrix
    index_factory: str = "Flat"
    search_params: dict[str, int] = field(default_factory=dict)
    # pitch sequences aligned with ``ids`` (None: the shard has no sequence file, as before issue 15)
    sequences: list[npt.NDArray[np.uint8] | None] | None = None


@dataclass
class Tampering:
    """Ways to publish a broken snapshot on purpose."""

    corrupt_vectors_of_shard: int | None = None  # bytes differ from the manifest's sha256
    # Checksums fine, but the vector file's rows are rotated against the index's rows
    # (as a writer bug that reorders one file would leave them).
    rotate_vectors_of_shard: int | None = None
    corrupt_sequences_of_shard: int | None = None  # frames' bytes differ from the manifest's sha256
    # Checksums fine, but the last offset points past the frames (a writer bug, or a forged file).
    overrun_sequences_of_shard: int | None = None


def _npy_bytes(matrix: FloatMatrix) -> bytes:
    out = io.BytesIO()
    np.save(out, np.ascontiguousarray(matrix, dtype=np.float32), allow_pickle=False)
    return out.getvalue()


def _npy(array: npt.NDArray[Any]) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def _index_bytes(shard: ShardInput, dim: int) -> bytes:
    index = faiss.index_factory(dim, shard.index_factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained and len(shard.vectors):
        index.train(shard.vectors)
    if len(shard.vectors):
        index.add(shard.vectors)
    return bytes(faiss.serialize_index(index).tobytes())


class SnapshotWriter:
    def __init__(self, stack: StackSettings, local_copy: Path | None = None) -> None:
        self.stack = stack
        s3_kwargs: dict[str, Any] = stack.s3_client_kwargs()
        self.s3: Any = boto3.client("s3", **s3_kwargs)
        self.previous: SnapshotManifest | None = None
        self.local_copy = local_copy

    def _put(self, key: str, body: bytes) -> StoredFile:
        self.s3.put_object(Bucket=self.stack.bucket, Key=key, Body=body)
        return StoredFile(key=key, sha256=hashlib.sha256(body).hexdigest(), size_bytes=len(body))

    def write(
        self,
        number: int,
        shards: list[ShardInput],
        dim: int,
        tampering: Tampering | None = None,
        reuse: dict[int, ShardManifest] | None = None,
        update_latest: bool = True,
        model: ModelIdentity | None = None,
    ) -> SnapshotManifest:
        """Upload one snapshot; ``reuse`` maps a shard number to an earlier snapshot's shard entry."""
        version = version_name(number)
        folder = snapshot_dir(version)
        tampering = tampering or Tampering()
        entries = []
        for number_in, shard in enumerate(shards):
            if reuse and number_in in reuse:
                entries.append(reuse[number_in])
                continue
            ids = list(shard.ids)
            index = self._put(f"{folder}shard-{number_in:03d}.faiss", _index_bytes(shard, dim))
            ids_file = self._put(f"{folder}shard-{number_in:03d}.ids.json", json.dumps(ids).encode())
            rows = shard.vectors
            if tampering.rotate_vectors_of_shard == number_in:
                rows = np.roll(rows, 1, axis=0)
            vector_bytes = _npy_bytes(rows)
            vectors = self._put(f"{folder}shard-{number_in:03d}.vectors.npy", vector_bytes)
            if tampering.corrupt_vectors_of_shard == number_in:
                spoiled = bytearray(vector_bytes)
                spoiled[-1] ^= 0xFF
                self.s3.put_object(Bucket=self.stack.bucket, Key=vectors.key, Body=bytes(spoiled))
            sequences = None
            if shard.sequences is not None:
                frames, offsets = pack_sequences(shard.sequences)
                if tampering.overrun_sequences_of_shard == number_in:
                    offsets[-1] += 1
                frame_bytes = _npy(frames)
                stored_frames = self._put(f"{folder}shard-{number_in:03d}.sequences.npy", frame_bytes)
                if tampering.corrupt_sequences_of_shard == number_in:
                    spoiled = bytearray(frame_bytes)
                    spoiled[-1] ^= 0xFF
                    self.s3.put_object(Bucket=self.stack.bucket, Key=stored_frames.key, Body=bytes(spoiled))
                sequences = ShardSequences(
                    frames=stored_frames,
                    offsets=self._put(f"{folder}shard-{number_in:03d}.sequence-offsets.npy", _npy(offsets)),
                )
            entries.append(
                ShardManifest(
                    shard=number_in,
                    count=len(shard.ids),
                    index_factory=shard.index_factory,
                    index=index,
                    ids=ids_file,
                    vectors=vectors,
                    built_in=version,
                    search_params=shard.search_params,
                    sequences=sequences,
                )
            )
        count = sum(e.count for e in entries)
        manifest = SnapshotManifest(
            version=version,
            previous_version=self.previous.version if self.previous else None,
            created_at=datetime.now(UTC),
            model=(model or model_identity(dim)) if count else None,
            dim=dim if count else None,
            shard_count=max(len(entries), 1),
            vector_count=count,
            offsets={self.stack.topics.tracks_embedded: {"0": count}},
            shards=entries,
        )
        self.s3.put_object(
            Bucket=self.stack.bucket, Key=manifest_key(version), Body=manifest.model_dump_json().encode()
        )
        if update_latest:
            self.s3.put_object(Bucket=self.stack.bucket, Key=LATEST_KEY, Body=f"{version}\n".encode())
        self.previous = manifest
        return manifest

    def write_empty(self, number: int) -> SnapshotManifest:
        """The known-empty snapshot the indexer publishes on first start."""
        return self.write(number, [], dim=0)

    def event(self, manifest: SnapshotManifest) -> SnapshotPublished:
        return SnapshotPublished(
            version=manifest.version,
            manifest_uri=f"s3://{self.stack.bucket}/{manifest_key(manifest.version)}",
            counts=SnapshotCounts(vectors=manifest.vector_count, shards=len(manifest.shards)),
            model=manifest.model,
        )

    async def announce(self, manifest: SnapshotManifest) -> None:
        await self.send_raw(self.event(manifest).to_bytes(), manifest.version.encode())

    async def send_raw(self, value: bytes, key: bytes) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.stack.kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(self.stack.topics.index_snapshots, value, key=key)
        finally:
            await producer.stop()
