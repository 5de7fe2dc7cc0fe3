"""The S3 layout and the objects services hand each other through it.

Events travel on Kafka; bulky things travel through the bucket. This module
names every key and defines the two documents that cross service lines there:
the snapshot manifest (indexer -> query) and the waveform peaks
(embedder -> query).
"""

from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from mess.contracts.events import ModelIdentity

AUDIO_PREFIX = "audio/"
WAVEFORM_PREFIX = "waveforms/"
SNAPSHOT_PREFIX = "snapshots/"
LATEST_KEY = SNAPSHOT_PREFIX + "LATEST"


def audio_key(sha256: str, extension: str) -> str:
    """Audio is stored by content, so the same bytes are stored once."""
    return f"{AUDIO_PREFIX}{sha256[:2]}/{sha256}.{extension.lstrip('.').lower() or 'bin'}"


def waveform_key(track_id: str) -> str:
    return f"{WAVEFORM_PREFIX}{track_id}.json"


def snapshot_dir(version: str) -> str:
    return f"{SNAPSHOT_PREFIX}{version}/"


def manifest_key(version: str) -> str:
    return snapshot_dir(version) + "manifest.json"


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key)."""
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, key = uri[5:].split("/", 1)
    return bucket, key


class StoredFile(BaseModel):
    """One file of a snapshot. ``key`` may lie in an earlier snapshot's folder:
    unchanged shards are referenced, not copied."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    key: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)


class ShardManifest(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    shard: int = Field(ge=0)
    count: int = Field(ge=0)
    index_factory: str = Field(description="faiss index_factory string, e.g. Flat or HNSW32,SQ8")
    index: StoredFile = Field(description="faiss.write_index bytes")
    ids: StoredFile = Field(description="JSON array of track ids in the index's row order")
    vectors: StoredFile = Field(description=".npy float32 matrix, rows in the same order")
    built_in: str = Field(description="version of the snapshot that built this shard")
    search_params: dict[str, int] = Field(default_factory=dict, description="e.g. efSearch or nprobe")


class SnapshotManifest(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    version: str
    previous_version: str | None = None
    created_at: AwareDatetime
    model: ModelIdentity | None = Field(description="None for a known-empty index")
    dim: int | None
    metric: Literal["ip"] = "ip"
    shard_count: int = Field(ge=1)
    vector_count: int = Field(ge=0)
    # topic -> partition (as a string, JSON keys are strings) -> next offset to read.
    offsets: dict[str, dict[str, int]] = Field(default_factory=dict)
    shards: list[ShardManifest]


class WaveformPeaks(BaseModel):
    """About 2,000 (min, max) pairs over the whole track, for drawing it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    track_id: str
    duration_s: float = Field(ge=0)
    sample_rate: int = Field(gt=0, description="rate of the decoded audio the peaks were taken from")
    samples_per_peak: int = Field(gt=0)
    mins: list[float]
    maxs: list[float]
    created_at: datetime | None = None
