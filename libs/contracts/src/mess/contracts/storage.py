"""The S3 layout and the objects services hand each other through it.

Events travel on Kafka; bulky things travel through the bucket. This module
names every key and defines the two documents that cross service lines there:
the snapshot manifest (indexer -> query) and the waveform peaks
(embedder -> query).
"""

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

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


# The indexer's snapshot versions: a counter from 1, written as 12 digits
# (``000000000042``), wider only past 10^12 snapshots. Exactly one spelling
# per number, so a version names one folder and two spellings can never rank
# apart; the bound keeps a number (and its folder name) small whatever an
# event claims.
SNAPSHOT_VERSION_DIGITS = 12
MAX_SNAPSHOT_NUMBER = 10**18 - 1


def format_snapshot_version(number: int) -> str:
    """The version of the ``number``-th snapshot, as the indexer names its folder."""
    if not 1 <= number <= MAX_SNAPSHOT_NUMBER:
        raise ValueError(f"a snapshot number lies in 1..{MAX_SNAPSHOT_NUMBER}, not {number}")
    return f"{number:0{SNAPSHOT_VERSION_DIGITS}d}"


def snapshot_number(version: str) -> int | None:
    """The counter a snapshot version spells, or None for anything the indexer would not have written.

    Versions compare by this number, never as text or by length: a version
    that is not in the indexer's one spelling (padding, sign, spaces, other
    digits, too long) has no number and so no rank at all.
    """
    if not (version.isascii() and version.isdigit()) or len(version) > len(str(MAX_SNAPSHOT_NUMBER)):
        return None
    number = int(version)
    if number < 1 or format_snapshot_version(number) != version:
        return None
    return number


class SnapshotCheckError(ValueError):
    """What an event or a bucket object says about a snapshot is not what the indexer writes.

    ``reason`` is a short code (a metric label), ``detail`` says what was wrong.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def check_snapshot_location(version: str, manifest_uri: str, bucket: str) -> int:
    """The version's number, if ``manifest_uri`` is exactly where the indexer puts that version's
    manifest in ``bucket``; else SnapshotCheckError. Nothing anywhere else is ever read as a snapshot."""
    number = snapshot_number(version)
    if number is None:
        raise SnapshotCheckError("version", f"{version[:140]!r} is not a snapshot version of the indexer")
    expected = f"s3://{bucket}/{manifest_key(version)}"
    if manifest_uri != expected:
        raise SnapshotCheckError("location", f"the manifest of {version} is {expected}, not {manifest_uri[:300]}")
    return number


class LatestAgreement(StrEnum):
    """How a snapshot stands to ``snapshots/LATEST`` (which the indexer moves before it announces)."""

    CURRENT = "current"  # LATEST names it
    SUPERSEDED = "superseded"  # LATEST has moved past it: a late event, nothing wrong with it
    REFUSED = "refused"  # newer than LATEST, or LATEST names no version at all


def agreement_with_latest(version: str, latest: str | None) -> LatestAgreement:
    """Where ``version`` stands against ``latest`` (LATEST's text, None when absent).

    The indexer writes the manifest, then moves LATEST, then announces; so a
    genuine announcement is never ahead of LATEST, and a snapshot LATEST
    never reached is one nobody published.
    """
    number = snapshot_number(version)
    latest_number = snapshot_number(latest.strip()) if latest is not None else None
    if number is None or latest_number is None or number > latest_number:
        return LatestAgreement.REFUSED
    return LatestAgreement.CURRENT if number == latest_number else LatestAgreement.SUPERSEDED


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


class ShardSequences(BaseModel):
    """A shard's pitch sequences as two memory-mappable arrays, rows in the index's row order.

    Concatenated rather than padded to the longest: a 60 s track costs its
    ~81 frames, not the 288-frame cap (``mess.contracts.sequences.check_sequence_table``
    says what a reader must verify)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    frames: StoredFile = Field(description=".npy uint8 (total frames, 12): every row's sequence, one after another")
    offsets: StoredFile = Field(
        description=".npy int64 (count + 1): row r's frames are frames[offsets[r]:offsets[r + 1]]; empty = none"
    )


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
    # Added for version-aware similarity; absent from snapshots written before
    # the indexer kept sequences, and from shards none of whose tracks has one.
    sequences: ShardSequences | None = Field(
        default=None, description="the rows' pitch sequences (mess.contracts.sequences), aligned by the query service"
    )

    def files(self) -> tuple[StoredFile, ...]:
        """Every file of the shard the manifest lists (the indexer's clock rides beside it)."""
        extra = (self.sequences.frames, self.sequences.offsets) if self.sequences is not None else ()
        return (self.index, self.ids, self.vectors, *extra)


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


def check_manifest(raw: bytes, version: str) -> SnapshotManifest:
    """The one reading of a manifest every service shares: it parses, names ``version``, and every
    file it lists lies in a snapshot folder of the indexer no newer than this one (unchanged shards
    are referenced from earlier snapshots, never from later ones or from anywhere else in the bucket).
    Raises SnapshotCheckError (``manifest``)."""
    number = snapshot_number(version)
    if number is None:
        raise SnapshotCheckError("version", f"{version[:140]!r} is not a snapshot version of the indexer")
    try:
        manifest = SnapshotManifest.model_validate_json(raw)
    except ValidationError as exc:
        raise SnapshotCheckError("manifest", f"not a valid manifest: {exc}") from exc
    if manifest.version != version:
        raise SnapshotCheckError("manifest", f"the manifest of {version} names version {manifest.version[:140]!r}")
    if manifest.previous_version is not None:
        previous = snapshot_number(manifest.previous_version)
        if previous is None or previous >= number:
            raise SnapshotCheckError(
                "manifest", f"previous version {manifest.previous_version[:140]!r} does not precede {version}"
            )
    for shard in manifest.shards:
        built_in = snapshot_number(shard.built_in)
        if built_in is None or built_in > number:
            raise SnapshotCheckError("manifest", f"shard {shard.shard} claims to be built in {shard.built_in[:140]!r}")
        for stored in shard.files():
            folder = snapshot_file_version(stored.key)
            if folder is None or folder > number:
                raise SnapshotCheckError(
                    "manifest",
                    f"shard {shard.shard} file {stored.key[:300]!r} is not in a snapshot folder up to {version}",
                )
    return manifest


def snapshot_file_version(key: str) -> int | None:
    """The number of the snapshot folder ``key`` lies directly in (``snapshots/<version>/<name>``), or None."""
    if not key.startswith(SNAPSHOT_PREFIX):
        return None
    folder, slash, name = key[len(SNAPSHOT_PREFIX) :].partition("/")
    if not slash or not name or "/" in name or name in (".", ".."):
        return None
    return snapshot_number(folder)


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
