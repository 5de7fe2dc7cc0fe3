"""Snapshots: the indexer's checkpoint, written and read back.

Publishing, in this order, so that a crash at any point leaves either the old
snapshot or the new one current and never a half one:

1. ``before_upload``: the version is chosen; nothing is written yet.
2. the dirty shards are built and their files uploaded (index, ids,
   vectors, the registry facts, and the pitch sequences' frames and offsets when any
   track of the shard has one) under ``snapshots/<version>/``; clean shards are
   referenced from the previous manifest, not rebuilt or re-uploaded.
3. ``after_files``: then ``manifest.json`` (sha256 of every file, offsets,
   model, counts) is created, refusing to overwrite an existing one.
4. ``after_manifest``: then LATEST moves, only from the value read at step 1.
5. ``after_pointer``: the caller announces SnapshotPublished.

The offsets in the manifest are the next offsets to read after the events
the snapshot contains, so a restart from it neither loses nor re-applies an
event. The step names are also the hooks crash tests raise at.
"""

import io
import itertools
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

import numpy as np

from mess.contracts.events import ModelIdentity
from mess.contracts.ids import is_track_id
from mess.contracts.sequences import PitchSequenceArray, check_sequence_table, pack_sequences
from mess.contracts.storage import ShardManifest, ShardSequences, SnapshotManifest, StoredFile, snapshot_dir
from mess.indexer.shard_index import Matrix, build_shard_index, candidate_plans
from mess.indexer.sharding import shard_of
from mess.indexer.snapshot_store import (
    LatestMovedError,
    LatestPointer,
    PublishLease,
    SnapshotIntegrityError,
    SnapshotStore,
    StoredManifest,
)
from mess.indexer.track_vectors import Fact, ShardCapture, ShardContents, TrackVectors

log = logging.getLogger(__name__)


class PublishStep(StrEnum):
    BEFORE_UPLOAD = "before_upload"
    AFTER_FILES = "after_files"
    AFTER_MANIFEST = "after_manifest"
    AFTER_POINTER = "after_pointer"


StepHook = Callable[[PublishStep], None]
Offsets = dict[str, dict[str, int]]


def _no_hook(step: PublishStep) -> None:
    del step


@dataclass(frozen=True)
class BuildOptions:
    flat_threshold: int
    approximate_index: str
    ef_construction: int
    tuning_recall: float


@dataclass(frozen=True)
class Checkpoint:
    """Everything a snapshot holds, captured between two Kafka batches."""

    offsets: Offsets
    model: ModelIdentity | None
    shard_count: int
    captures: list[ShardCapture]  # the shards to build; the others come from ``base``
    tuning_queries: Matrix
    base: StoredManifest | None
    # LATEST must still hold this (None: no LATEST yet) or the publish is
    # refused with LatestMovedError, unless replace_any_latest (a rebuild).
    expect_latest: str | None
    replace_any_latest: bool = False


@dataclass(frozen=True)
class PublishedSnapshot:
    stored: StoredManifest
    latest: LatestPointer
    rebuilt_shards: int
    uploaded_bytes: int
    build_seconds: float
    upload_seconds: float
    recalls: dict[int, float] = field(default_factory=dict)


def encode_ids(ids: list[str]) -> bytes:
    return json.dumps(ids, separators=(",", ":")).encode("utf-8")


def encode_vectors(vectors: Matrix) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def encode_sequences(sequences: list[PitchSequenceArray | None]) -> tuple[bytes, bytes]:
    """The shard's (frames, offsets) as two .npy files: plain arrays, so the query service memory-maps them."""
    frames, offsets = pack_sequences(sequences)
    files = []
    for array in (frames, offsets):
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        files.append(buffer.getvalue())
    return files[0], files[1]


def encode_facts(contents: ShardContents) -> bytes:
    """``{"facts": {track id: [sha256 or null (removed), registry sequence or null]}}``."""
    facts = {track_id: [fact.sha256, fact.registry_sequence] for track_id, fact in contents.facts.items()}
    return json.dumps({"facts": facts}, separators=(",", ":"), sort_keys=True).encode("utf-8")


def publish_snapshot(
    store: SnapshotStore,
    checkpoint: Checkpoint,
    options: BuildOptions,
    lease: PublishLease,
    lease_ttl_seconds: float,
    hook: StepHook = _no_hook,
) -> PublishedSnapshot:
    """Build and publish one snapshot (blocking; run it in a worker thread while
    holding the publish lease)."""
    latest = store.read_latest()
    current = latest.version if latest else None
    if not checkpoint.replace_any_latest and current != checkpoint.expect_latest:
        raise LatestMovedError(current)
    version = store.next_version(latest)
    folder = snapshot_dir(version)
    hook(PublishStep.BEFORE_UPLOAD)

    shards: dict[int, ShardManifest] = {}
    facts: dict[int, StoredFile] = {}
    recalls: dict[int, float] = {}
    uploaded = 0
    build_seconds = upload_seconds = 0.0
    for capture in checkpoint.captures:
        contents = capture.freeze()
        plans = candidate_plans(
            len(contents.ids),
            flat_threshold=options.flat_threshold,
            approximate_factory=options.approximate_index,
            previous=_previous_choice(checkpoint.base, contents.shard),
        )
        built = build_shard_index(
            contents.vectors,
            plans,
            tuning_queries=checkpoint.tuning_queries,
            target_recall=options.tuning_recall,
            ef_construction=options.ef_construction,
        )
        build_seconds += built.build_seconds
        if built.recall_at_10 is not None:
            recalls[contents.shard] = built.recall_at_10
        started = time.perf_counter()
        name = f"{folder}shard-{contents.shard:04d}"
        files = [
            store.put_file(f"{name}.index", built.index_bytes),
            store.put_file(f"{name}.ids.json", encode_ids(contents.ids)),
            store.put_file(f"{name}.vectors.npy", encode_vectors(contents.vectors)),
            store.put_file(f"{name}.facts.json", encode_facts(contents)),
        ]
        sequences = None
        if any(sequence is not None for sequence in contents.sequences):
            frames_bytes, offsets_bytes = encode_sequences(contents.sequences)
            sequences = ShardSequences(
                frames=store.put_file(f"{name}.sequences.npy", frames_bytes),
                offsets=store.put_file(f"{name}.sequence-offsets.npy", offsets_bytes),
            )
            files.extend((sequences.frames, sequences.offsets))
        upload_seconds += time.perf_counter() - started
        uploaded += sum(f.size_bytes for f in files)
        shards[contents.shard] = ShardManifest(
            shard=contents.shard,
            count=len(contents.ids),
            index_factory=built.factory,
            index=files[0],
            ids=files[1],
            vectors=files[2],
            built_in=version,
            search_params=built.search_params,
            sequences=sequences,
        )
        facts[contents.shard] = files[3]
        # A long build must not let the lease lapse under us.
        store.renew_lease(lease, lease_ttl_seconds)

    if checkpoint.model is not None:
        base = checkpoint.base
        for number in range(checkpoint.shard_count):
            if number in shards:
                continue
            reused = _reusable_shard(base, number, checkpoint.shard_count)
            shards[number] = reused
            if base is not None and number in base.facts:
                facts[number] = base.facts[number]
    hook(PublishStep.AFTER_FILES)

    ordered = [shards[n] for n in sorted(shards)]
    manifest = SnapshotManifest(
        version=version,
        previous_version=current,
        created_at=datetime.now(UTC),
        model=checkpoint.model,
        dim=checkpoint.model.dim if checkpoint.model else None,
        shard_count=checkpoint.shard_count,
        vector_count=sum(s.count for s in ordered),
        offsets=checkpoint.offsets,
        shards=ordered,
    )
    started = time.perf_counter()
    store.put_manifest(manifest, facts)
    hook(PublishStep.AFTER_MANIFEST)
    pointer = store.write_latest(version, latest)
    upload_seconds += time.perf_counter() - started
    hook(PublishStep.AFTER_POINTER)
    return PublishedSnapshot(
        stored=StoredManifest(manifest, facts),
        latest=pointer,
        rebuilt_shards=len(checkpoint.captures),
        uploaded_bytes=uploaded,
        build_seconds=build_seconds,
        upload_seconds=upload_seconds,
        recalls=recalls,
    )


def _previous_choice(base: StoredManifest | None, number: int) -> tuple[str, int] | None:
    if base is None:
        return None
    for shard in base.manifest.shards:
        if shard.shard == number:
            return shard.index_factory, shard.count
    return None


def _reusable_shard(base: StoredManifest | None, number: int, shard_count: int) -> ShardManifest:
    if base is None or base.manifest.shard_count != shard_count:
        raise ValueError(f"shard {number} is clean but the previous snapshot cannot supply it")
    for shard in base.manifest.shards:
        if shard.shard == number:
            return shard
    raise ValueError(f"shard {number} is clean but missing from snapshot {base.version}")


def load_snapshot(store: SnapshotStore, version: str, vectors: TrackVectors) -> StoredManifest:
    """Read snapshot ``version`` into ``vectors``, verifying every file.

    Refuses (SnapshotIntegrityError) a missing or corrupt file, and shard
    contents that disagree with the manifest. Shards end up dirty when the
    snapshot's shard count differs from ``vectors``' (they are re-sharded).
    """
    stored = store.read_manifest(version)
    manifest = stored.manifest
    if stored.legacy_clocks:
        # Their values are producers' occurred_at times, not registry
        # sequences, so they order nothing; the added and removed topics,
        # read from the beginning (this snapshot has no offsets for added),
        # bring the facts back.
        log.warning(
            "snapshot %s holds occurred_at clock files from before registry facts; they are dropped, and the "
            "facts are rebuilt from the tracks topics (tracks announced before their retention need announcing again)",
            version,
        )
    for shard in manifest.shards:
        where = f"snapshot {version} shard {shard.shard}"
        store.fetch_verified(shard.index)  # only checked: a restart rebuilds from the vectors
        ids = _decode_ids(store.fetch_verified(shard.ids), where)
        matrix = _decode_vectors(store.fetch_verified(shard.vectors), where)
        facts: dict[str, Fact] = {}
        if shard.shard in stored.facts:
            facts = _decode_facts(store.fetch_verified(stored.facts[shard.shard]), where)
        sequences: list[PitchSequenceArray | None] = []
        if shard.sequences is not None:
            sequences = _decode_sequences(
                store.fetch_verified(shard.sequences.frames),
                store.fetch_verified(shard.sequences.offsets),
                len(ids),
                where,
            )
        if not len(ids) == shard.count == matrix.shape[0]:
            raise SnapshotIntegrityError(
                f"{where}: the manifest says {shard.count} rows, ids hold {len(ids)}, vectors {matrix.shape[0]}"
            )
        if shard.count and manifest.dim is not None and matrix.shape[1] != manifest.dim:
            raise SnapshotIntegrityError(f"{where}: vectors have {matrix.shape[1]} columns, not {manifest.dim}")
        if len(set(ids)) != len(ids):
            raise SnapshotIntegrityError(f"{where}: a track id appears twice")
        misplaced = [t for t in [*ids, *facts] if shard_of(t, manifest.shard_count) != shard.shard]
        if misplaced:
            raise SnapshotIntegrityError(f"{where}: {len(misplaced)} ids belong to other shards, e.g. {misplaced[0]}")
        vectors.load_shard(
            ShardContents(shard.shard, ids, matrix, facts, sequences),
        )
    if manifest.shard_count != vectors.shard_count:
        vectors.mark_dirty(range(vectors.shard_count))
    return stored


def load_facts(store: SnapshotStore, version: str) -> dict[str, Fact]:
    """Only the registry facts of snapshot ``version`` (verified), without its vectors."""
    stored = store.read_manifest(version)
    facts: dict[str, Fact] = {}
    for shard, file in sorted(stored.facts.items()):
        facts.update(_decode_facts(store.fetch_verified(file), f"snapshot {version} shard {shard}"))
    return facts


def _decode_ids(raw: bytes, where: str) -> list[str]:
    try:
        ids = json.loads(raw)
    except ValueError as exc:
        raise SnapshotIntegrityError(f"{where}: ids file is not JSON: {exc}") from exc
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise SnapshotIntegrityError(f"{where}: ids file is not a JSON array of strings")
    return ids


def _decode_vectors(raw: bytes, where: str) -> Matrix:
    try:
        matrix = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise SnapshotIntegrityError(f"{where}: vectors file is not a .npy matrix: {exc}") from exc
    if matrix.dtype != np.float32 or matrix.ndim != 2:
        raise SnapshotIntegrityError(f"{where}: vectors are {matrix.dtype} {matrix.shape}, not a float32 matrix")
    return np.asarray(matrix, dtype=np.float32)


def _decode_sequences(frames_raw: bytes, offsets_raw: bytes, rows: int, where: str) -> list[PitchSequenceArray | None]:
    try:
        frames = np.load(io.BytesIO(frames_raw), allow_pickle=False)
        offsets = np.load(io.BytesIO(offsets_raw), allow_pickle=False)
        check_sequence_table(frames, offsets, rows)
    except (ValueError, OSError) as exc:
        raise SnapshotIntegrityError(f"{where}: pitch sequences are malformed: {exc}") from exc
    bounds = offsets.tolist()
    return [frames[start:end] if end > start else None for start, end in itertools.pairwise(bounds)]


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _decode_facts(raw: bytes, where: str) -> dict[str, Fact]:
    try:
        document = json.loads(raw)["facts"]
        facts = {}
        for track_id, (sha256, sequence) in document.items():
            if not is_track_id(track_id):
                raise ValueError(f"{track_id[:140]!r} is not a track id")
            if sha256 is not None and not (isinstance(sha256, str) and _SHA256.match(sha256)):
                raise ValueError(f"{track_id}: {sha256!r} is not a sha256")
            if sequence is not None and not (type(sequence) is int and sequence >= 0):
                raise ValueError(f"{track_id}: {sequence!r} is not a registry sequence")
            facts[track_id] = Fact(sha256, sequence)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SnapshotIntegrityError(f"{where}: facts file is malformed: {exc}") from exc
    return facts
