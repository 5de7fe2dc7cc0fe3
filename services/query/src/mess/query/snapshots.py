"""Turning a published snapshot into a checked ``SnapshotSearcher``.

Steps, each of which can refuse the snapshot: read ``manifest.json``; fetch
every shard file into the local cache (named by its sha256, so a shard that
later snapshots reuse is downloaded once) and verify its size and sha256; load
the FAISS indexes and memory-map the vector matrices (and the pitch
sequences, where the snapshot has them); check shapes and ids against the
manifest; and run the canary: stored vectors must find their own
track among the first results, per shard and through the merged search.

A refusal (``SnapshotRefusedError``) is final for that version: the bytes are
wrong and retrying will not fix them. An I/O failure (``SnapshotUnavailableError``)
is retried at the next announcement or poll.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import faiss
import numpy as np
from botocore.exceptions import BotoCoreError, ClientError

from mess.contracts.ids import is_track_id
from mess.contracts.storage import (
    LATEST_KEY,
    ShardManifest,
    SnapshotCheckError,
    SnapshotManifest,
    StoredFile,
    check_manifest,
    manifest_key,
    snapshot_number,
)
from mess.query.searcher import LoadedShard, SnapshotSearcher
from mess.query.sequences import ShardSequenceTable, open_sequence_table

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_CACHED_NAME = re.compile(r"[0-9a-f]{64}\.(faiss|json|npy)")


class SnapshotRefusedError(Exception):
    """The snapshot's content is wrong; the serving one stays."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SnapshotUnavailableError(Exception):
    """The snapshot could not be read now (network, S3); try again later."""


def version_order(version: str) -> int:
    """A snapshot's rank: the indexer's counter it spells (``mess.contracts.storage.snapshot_number``).

    Never its length or text, which anyone who can publish chooses: a version
    that is not in the indexer's format ranks below every snapshot, so it can
    never hold back a real one (the follower refuses it before ranking anyway).
    """
    number = snapshot_number(version)
    return -1 if number is None else number


def _is_missing(error: ClientError) -> bool:
    code = str(error.response.get("Error", {}).get("Code", ""))
    return code in ("NoSuchKey", "404", "NotFound")


@dataclass
class SnapshotStore:
    """Reads snapshot objects from S3 into the local cache directory."""

    s3: S3Client
    bucket: str
    cache_dir: Path

    async def read_latest(self) -> str | None:
        """The version LATEST points at, or None when nothing was published yet."""
        try:
            response = await self.s3.get_object(Bucket=self.bucket, Key=LATEST_KEY)
            async with response["Body"] as body:
                raw = await body.read()
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise SnapshotUnavailableError(f"reading {LATEST_KEY}: {exc}") from exc
        except (BotoCoreError, OSError) as exc:
            raise SnapshotUnavailableError(f"reading {LATEST_KEY}: {exc}") from exc
        version = raw.decode("utf-8", errors="replace").strip()
        return version or None

    async def read_manifest(self, version: str) -> SnapshotManifest:
        """The manifest of ``version``, read from the one place the indexer writes it and checked
        (``check_manifest``) as every service checks it."""
        key = manifest_key(version)
        manifest_uri = f"s3://{self.bucket}/{key}"
        try:
            response = await self.s3.get_object(Bucket=self.bucket, Key=key)
            async with response["Body"] as body:
                raw = await body.read()
        except ClientError as exc:
            if _is_missing(exc):
                raise SnapshotRefusedError("manifest", f"{manifest_uri} does not exist") from exc
            raise SnapshotUnavailableError(f"reading {manifest_uri}: {exc}") from exc
        except (BotoCoreError, OSError) as exc:
            raise SnapshotUnavailableError(f"reading {manifest_uri}: {exc}") from exc
        try:
            return check_manifest(raw, version)
        except SnapshotCheckError as exc:
            raise SnapshotRefusedError("manifest", f"{manifest_uri}: {exc.detail}") from exc

    def cached_path(self, stored: StoredFile, suffix: str) -> Path:
        return self.cache_dir / f"{stored.sha256}{suffix}"

    async def fetch(self, bucket: str, stored: StoredFile, suffix: str) -> Path:
        """The verified local copy of one snapshot file, downloading it if needed."""
        path = self.cached_path(stored, suffix)
        if path.exists() and path.stat().st_size == stored.size_bytes:
            # Only files whose sha256 matched are ever renamed into place.
            return path
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        partial = self.cache_dir / f".{stored.sha256}.{uuid.uuid4().hex}.part"
        digest = hashlib.sha256()
        size = 0

        def keep(out: BinaryIO, chunk: bytes) -> None:
            digest.update(chunk)
            out.write(chunk)

        try:
            response = await self.s3.get_object(Bucket=bucket, Key=stored.key)
            async with response["Body"] as body:
                with partial.open("wb") as out:
                    while chunk := await body.read(_CHUNK):
                        # Hashing and writing a megabyte takes milliseconds: off the event loop,
                        # so requests keep flowing while a large snapshot downloads.
                        await asyncio.to_thread(keep, out, chunk)
                        size += len(chunk)
        except ClientError as exc:
            partial.unlink(missing_ok=True)
            if _is_missing(exc):
                raise SnapshotRefusedError("missing_file", f"s3://{bucket}/{stored.key} does not exist") from exc
            raise SnapshotUnavailableError(f"downloading {stored.key}: {exc}") from exc
        except (BotoCoreError, OSError) as exc:
            partial.unlink(missing_ok=True)
            raise SnapshotUnavailableError(f"downloading {stored.key}: {exc}") from exc
        if size != stored.size_bytes or digest.hexdigest() != stored.sha256:
            partial.unlink(missing_ok=True)
            raise SnapshotRefusedError(
                "checksum",
                f"{stored.key}: got {size} bytes with sha256 {digest.hexdigest()}, "
                f"manifest says {stored.size_bytes} bytes with sha256 {stored.sha256}",
            )
        os.replace(partial, path)
        return path

    def forget_except(self, keep: set[Path]) -> int:
        """Delete cached files no longer needed. Memory maps of deleted files stay valid
        (the inode lives until the last map closes), so in-flight requests are safe."""
        removed = 0
        if not self.cache_dir.exists():
            return 0
        for path in self.cache_dir.iterdir():
            # Only files this store named (sha256 + suffix): the folder may hold other things.
            if path.is_file() and path not in keep and _CACHED_NAME.fullmatch(path.name):
                path.unlink(missing_ok=True)
                removed += 1
        return removed


@dataclass(frozen=True)
class ShardFiles:
    manifest: ShardManifest
    index: Path
    ids: Path
    vectors: Path
    # (frames, offsets) of the pitch sequences, when the shard has them
    sequences: tuple[Path, Path] | None = None

    def paths(self) -> tuple[Path, ...]:
        """Every local file the loaded shard uses (what the cache must keep while it is served)."""
        return (self.index, self.ids, self.vectors, *(self.sequences or ()))


def shard_reuse_key(shard: ShardManifest) -> tuple[str, ...]:
    params = json.dumps(shard.search_params, sort_keys=True)
    sequences = (shard.sequences.frames.sha256, shard.sequences.offsets.sha256) if shard.sequences else ()
    return (shard.index.sha256, shard.ids.sha256, shard.vectors.sha256, params, *sequences)


async def fetch_shards(store: SnapshotStore, manifest: SnapshotManifest, manifest_bucket: str) -> list[ShardFiles]:
    files = []
    for shard in manifest.shards:
        index = await store.fetch(manifest_bucket, shard.index, ".faiss")
        ids = await store.fetch(manifest_bucket, shard.ids, ".json")
        vectors = await store.fetch(manifest_bucket, shard.vectors, ".npy")
        sequences = None
        if shard.sequences is not None:
            sequences = (
                await store.fetch(manifest_bucket, shard.sequences.frames, ".npy"),
                await store.fetch(manifest_bucket, shard.sequences.offsets, ".npy"),
            )
        files.append(ShardFiles(shard, index, ids, vectors, sequences))
    return files


def _load_shard(files: ShardFiles, dim: int | None) -> LoadedShard:
    shard = files.manifest
    where = f"shard {shard.shard}"
    try:
        raw_ids = json.loads(files.ids.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SnapshotRefusedError("ids", f"{where}: ids file is not JSON: {exc}") from exc
    if not isinstance(raw_ids, list) or not all(isinstance(i, str) and is_track_id(i) for i in raw_ids):
        raise SnapshotRefusedError("ids", f"{where}: ids must be a JSON array of track ids")
    try:
        index = faiss.read_index(str(files.index))
    except RuntimeError as exc:
        raise SnapshotRefusedError("index", f"{where}: FAISS cannot read the index: {exc}") from exc
    try:
        if shard.count == 0:
            vectors = np.load(files.vectors, allow_pickle=False)
        else:
            # Memory-mapped: the page cache holds the matrix once, however many snapshots share it.
            vectors = np.load(files.vectors, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise SnapshotRefusedError("vectors", f"{where}: vectors file is not a .npy matrix: {exc}") from exc
    if vectors.dtype != np.float32 or vectors.ndim != 2:
        raise SnapshotRefusedError(
            "vectors", f"{where}: vectors must be a float32 matrix, got {vectors.dtype} {vectors.shape}"
        )
    counts = {"manifest": shard.count, "index": int(index.ntotal), "ids": len(raw_ids), "vectors": vectors.shape[0]}
    if len(set(counts.values())) != 1:
        raise SnapshotRefusedError("shape", f"{where}: row counts disagree: {counts}")
    if shard.count and dim is not None and (index.d != dim or vectors.shape[1] != dim):
        raise SnapshotRefusedError(
            "shape", f"{where}: manifest dim {dim}, index dim {index.d}, vectors dim {vectors.shape[1]}"
        )
    for name, value in shard.search_params.items():
        try:
            faiss.ParameterSpace().set_index_parameter(index, name, value)
        except RuntimeError as exc:
            raise SnapshotRefusedError("index", f"{where}: cannot set search parameter {name}={value}: {exc}") from exc
    return LoadedShard(
        shard=shard.shard,
        index=index,
        ids=tuple(raw_ids),
        vectors=vectors,
        reuse_key=shard_reuse_key(shard),
        sequences=_load_sequences(files, where),
    )


def _load_sequences(files: ShardFiles, where: str) -> ShardSequenceTable | None:
    if files.sequences is None:
        return None
    try:
        return open_sequence_table(*files.sequences, rows=files.manifest.count)
    except (ValueError, OSError) as exc:
        raise SnapshotRefusedError("sequences", f"{where}: pitch sequences are malformed: {exc}") from exc


def build_searcher(
    manifest: SnapshotManifest,
    files: list[ShardFiles],
    previous: SnapshotSearcher | None,
    canary_rows: int,
    canary_k: int,
) -> SnapshotSearcher:
    """Load, validate and canary-check a snapshot (blocking: run it in a thread)."""
    if manifest.vector_count > 0 and (manifest.dim is None or manifest.model is None):
        raise SnapshotRefusedError("manifest", "a non-empty snapshot must name its model and dim")
    if manifest.model is not None and manifest.dim is not None and manifest.model.dim != manifest.dim:
        raise SnapshotRefusedError(
            "manifest", f"model dim {manifest.model.dim} differs from manifest dim {manifest.dim}"
        )
    numbers = [s.shard for s in manifest.shards]
    if len(set(numbers)) != len(numbers):
        raise SnapshotRefusedError("manifest", f"shard numbers repeat: {numbers}")
    if sum(s.count for s in manifest.shards) != manifest.vector_count:
        raise SnapshotRefusedError("manifest", "vector_count differs from the sum of the shard counts")
    reusable = {s.reuse_key: s for s in previous.shards} if previous is not None else {}
    shards = []
    for shard_files in files:
        reused = reusable.get(shard_reuse_key(shard_files.manifest))
        if reused is not None and reused.shard == shard_files.manifest.shard:
            shards.append(reused)
        else:
            shards.append(_load_shard(shard_files, manifest.dim))
    try:
        searcher = SnapshotSearcher(manifest=manifest, shards=tuple(shards))
    except ValueError as exc:
        raise SnapshotRefusedError("ids", str(exc)) from exc
    canary(searcher, canary_rows, canary_k)
    return searcher


def _canary_rows(count: int, wanted: int) -> list[int]:
    if count == 0:
        return []
    picks = np.linspace(0, count - 1, num=min(wanted, count)).round().astype(int)
    return sorted({int(p) for p in picks})


def canary(searcher: SnapshotSearcher, rows_per_shard: int, k: int) -> None:
    """Stored vectors must find their own track: proof that the index and the vector
    file line up row for row and that the index searches at all (a vector file written
    in another order, or an index built from other vectors, fails here). The id file
    cannot be checked this way: it is trusted by its sha256."""
    checked: list[tuple[str, Any]] = []
    for shard in searcher.shards:
        for row in _canary_rows(shard.count, rows_per_shard):
            vector = np.ascontiguousarray(shard.vectors[row : row + 1], dtype=np.float32)
            if not np.all(np.isfinite(vector)):
                raise SnapshotRefusedError("canary", f"shard {shard.shard} row {row} holds NaN or infinite values")
            _, found = shard.index.search(vector, min(k, shard.count))
            names = [shard.ids[int(i)] for i in found[0] if i >= 0]
            if shard.ids[row] not in names:
                raise SnapshotRefusedError(
                    "canary", f"shard {shard.shard}: {shard.ids[row]} (row {row}) is not among its own top {k}: {names}"
                )
            checked.append((shard.ids[row], vector))
    if checked:
        track_id, vector = checked[len(checked) // 2]
        merged = [n.track_id for n in searcher.search(vector[0], k)]
        if track_id not in merged:
            raise SnapshotRefusedError("canary", f"{track_id} is not among its own top {k} across shards: {merged}")
