"""The indexer's objects in S3: LATEST, manifests, shard files, the publish lease.

Layout (``mess.contracts.storage``): ``snapshots/<version>/manifest.json`` and
the shard files next to it, ``snapshots/LATEST`` holding the current version.
Versions are counters spelled one way (``mess.contracts.storage``:
``format_snapshot_version``/``snapshot_number``), the same definition the
query service and ingest check announcements against; they are ordered by
their number.

Writers are kept apart by S3 conditional writes, which AWS, MinIO and moto
all honour: a manifest is created only if its key is free (``If-None-Match``),
and LATEST moves only from the value the writer read (``If-Match`` on its
ETag). The publish lease (``indexer/publish-lease.json``, outside the
snapshot layout) serialises whole publishes, so a live indexer and a rebuild
never upload at once; a lease whose holder died expires after its TTL, and a
restarted holder with the same writer id takes it back at once.

This module is synchronous (boto3): callers run it in a worker thread.
"""

import hashlib
import io
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError
from pydantic import ValidationError

from mess.contracts.storage import (
    LATEST_KEY,
    SNAPSHOT_PREFIX,
    SnapshotCheckError,
    SnapshotManifest,
    StoredFile,
    check_manifest,
    format_snapshot_version,
    manifest_key,
    snapshot_file_version,
    snapshot_number,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

log = logging.getLogger(__name__)

LEASE_KEY = "indexer/publish-lease.json"
# The per-shard facts file (the registry's latest fact about each track) is an
# indexer addition the shared manifest model does not know; it rides in the
# manifest JSON as an extra key of each shard, which readers built on
# ``SnapshotManifest`` ignore.
FACTS_FIELD = "facts"
# Snapshots written before the facts held a per-shard ``occurred_at`` clock
# file there instead; it is still listed (retention keeps it while such a
# snapshot is kept, for a rollback) but never read.
LEGACY_CLOCK_FIELD = "clock"
_TRANSFER = TransferConfig(multipart_threshold=64 * 1024 * 1024, multipart_chunksize=64 * 1024 * 1024)
_CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


class SnapshotIntegrityError(Exception):
    """A snapshot file is missing or differs from what its manifest says."""


class LatestMovedError(Exception):
    """LATEST changed since this writer read it: another writer published."""

    def __init__(self, version: str | None) -> None:
        super().__init__(f"LATEST moved to {version!r} under this writer")
        self.version = version


class LeaseHeldError(Exception):
    """Another writer holds the publish lease."""


class VersionTakenError(Exception):
    """A manifest already exists at the version this writer chose."""


def format_version(number: int) -> str:
    return format_snapshot_version(number)


def _number(version: str) -> int:
    """The number of a version this store wrote or LATEST holds; anything else is refused loudly, never guessed."""
    number = snapshot_number(version)
    if number is None:
        raise SnapshotIntegrityError(f"{version[:140]!r} is not a snapshot version")
    return number


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _is_conflict(error: ClientError) -> bool:
    return _code(error) in _CONFLICT_CODES


def _is_missing(error: ClientError) -> bool:
    return _code(error) in _MISSING_CODES


def sha256_hex(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@dataclass(frozen=True)
class LatestPointer:
    version: str
    etag: str


@dataclass(frozen=True)
class StoredManifest:
    """A manifest as read back, with the indexer's per-shard facts files."""

    manifest: SnapshotManifest
    facts: dict[int, StoredFile]
    legacy_clocks: dict[int, StoredFile] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.manifest.version

    def keys(self) -> set[str]:
        """Every object this snapshot needs, its manifest included."""
        keys = {manifest_key(self.manifest.version)}
        for shard in self.manifest.shards:
            keys.update(stored.key for stored in shard.files())  # pitch sequences included
        keys.update(facts.key for facts in self.facts.values())
        keys.update(clock.key for clock in self.legacy_clocks.values())
        return keys


@dataclass
class PublishLease:
    """The lease as last written; renewing updates it in place, so whoever
    releases it later holds the current ETag."""

    owner: str
    etag: str
    expires_at: float


class SnapshotStore:
    def __init__(self, s3: "S3Client", bucket: str) -> None:
        self.s3 = s3
        self.bucket = bucket

    def manifest_uri(self, version: str) -> str:
        return f"s3://{self.bucket}/{manifest_key(version)}"

    # --- LATEST -------------------------------------------------------------

    def read_latest(self) -> LatestPointer | None:
        try:
            response = self.s3.get_object(Bucket=self.bucket, Key=LATEST_KEY)
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise
        version = response["Body"].read().decode("utf-8").strip()
        return LatestPointer(version, response["ETag"]) if version else None

    def write_latest(self, version: str, expected: LatestPointer | None) -> LatestPointer:
        """Point LATEST at ``version`` only if it still holds ``expected``."""
        condition: dict[str, Any] = {"IfMatch": expected.etag} if expected else {"IfNoneMatch": "*"}
        try:
            response = self.s3.put_object(
                Bucket=self.bucket, Key=LATEST_KEY, Body=version.encode("utf-8"), ContentType="text/plain", **condition
            )
        except ClientError as exc:
            if _is_conflict(exc):
                current = self.read_latest()
                raise LatestMovedError(current.version if current else None) from exc
            raise
        return LatestPointer(version, response["ETag"])

    # --- versions -----------------------------------------------------------

    def existing_versions(self) -> list[str]:
        """Version folders under ``snapshots/``, published or not, in order."""
        versions = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=SNAPSHOT_PREFIX, Delimiter="/"):
            for prefix in page.get("CommonPrefixes", []):
                name = prefix.get("Prefix", "")[len(SNAPSHOT_PREFIX) :].rstrip("/")
                if snapshot_number(name) is not None:
                    versions.append(name)
        return sorted(versions, key=_number)

    def next_version(self, latest: LatestPointer | None) -> str:
        """One past every version seen, including folders of publishes that died
        before LATEST moved: a snapshot folder is never written twice."""
        highest = max([_number(v) for v in self.existing_versions()] + [_number(latest.version) if latest else 0])
        return format_version(highest + 1)

    # --- files --------------------------------------------------------------

    def put_file(self, key: str, body: bytes) -> StoredFile:
        self.s3.upload_fileobj(io.BytesIO(body), self.bucket, key, Config=_TRANSFER)
        return StoredFile(key=key, sha256=sha256_hex(body), size_bytes=len(body))

    def fetch_verified(self, stored: StoredFile) -> bytes:
        """The file's bytes, refused unless its size and sha256 match the manifest."""
        buffer = io.BytesIO()
        try:
            self.s3.download_fileobj(self.bucket, stored.key, buffer, Config=_TRANSFER)
        except ClientError as exc:
            if _is_missing(exc):
                raise SnapshotIntegrityError(f"s3://{self.bucket}/{stored.key} is missing") from exc
            raise
        body = buffer.getvalue()
        digest = sha256_hex(body)
        if len(body) != stored.size_bytes or digest != stored.sha256:
            raise SnapshotIntegrityError(
                f"s3://{self.bucket}/{stored.key} is corrupt: {len(body)} bytes with sha256 {digest}, "
                f"the manifest says {stored.size_bytes} bytes with sha256 {stored.sha256}"
            )
        return body

    # --- manifests ----------------------------------------------------------

    def put_manifest(self, manifest: SnapshotManifest, facts: dict[int, StoredFile]) -> None:
        document = manifest.model_dump(mode="json")
        for shard in document["shards"]:
            stored = facts.get(shard["shard"])
            if stored is not None:
                shard[FACTS_FIELD] = stored.model_dump(mode="json")
        body = json.dumps(document, indent=1, sort_keys=True).encode("utf-8")
        try:
            self.s3.put_object(
                Bucket=self.bucket,
                Key=manifest_key(manifest.version),
                Body=body,
                ContentType="application/json",
                IfNoneMatch="*",
            )
        except ClientError as exc:
            if _is_conflict(exc):
                raise VersionTakenError(f"snapshot {manifest.version} already has a manifest") from exc
            raise

    def read_manifest(self, version: str) -> StoredManifest:
        key = manifest_key(version)
        try:
            raw = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if _is_missing(exc):
                raise SnapshotIntegrityError(f"s3://{self.bucket}/{key} is missing") from exc
            raise
        try:
            manifest = check_manifest(raw, version)
            document = json.loads(raw)
            extras = [
                {
                    int(shard["shard"]): StoredFile.model_validate(shard[name])
                    for shard in document["shards"]
                    if shard.get(name) is not None
                }
                for name in (FACTS_FIELD, LEGACY_CLOCK_FIELD)
            ]
        except (SnapshotCheckError, ValidationError, ValueError, KeyError, TypeError) as exc:
            raise SnapshotIntegrityError(f"s3://{self.bucket}/{key} is not a valid manifest: {exc}") from exc
        for extra in extras:
            for stored in extra.values():
                folder = snapshot_file_version(stored.key)
                if folder is None or folder > _number(version):
                    raise SnapshotIntegrityError(f"s3://{self.bucket}/{key}: {stored.key} is not a snapshot's file")
        return StoredManifest(manifest, facts=extras[0], legacy_clocks=extras[1])

    # --- retention ----------------------------------------------------------

    def prune(self, keep: int) -> list[str]:
        """Delete what no kept snapshot needs; returns the deleted keys.

        Kept: LATEST and the ``keep - 1`` snapshots before it (following
        ``previous_version``). Only objects in folders older than LATEST are
        candidates (a newer folder is a publish in progress), and of those only
        objects no kept manifest references: an unchanged shard's files stay
        as long as any kept snapshot points at them. Manifests go first, so a
        crash halfway never leaves a manifest whose files are gone.
        """
        latest = self.read_latest()
        if latest is None:
            return []
        referenced: set[str] = set()
        version: str | None = latest.version
        for _ in range(keep):
            if version is None:
                break
            try:
                stored = self.read_manifest(version)
            except SnapshotIntegrityError:
                break
            referenced |= stored.keys()
            version = stored.manifest.previous_version
        doomed = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=SNAPSHOT_PREFIX):
            for item in page.get("Contents", []):
                key = item.get("Key", "")
                folder = snapshot_number(key[len(SNAPSHOT_PREFIX) :].split("/", 1)[0])
                if key == LATEST_KEY or folder is None or folder >= _number(latest.version):
                    continue
                if key not in referenced:
                    doomed.append(key)
        doomed.sort(key=lambda k: not k.endswith("/manifest.json"))
        for start in range(0, len(doomed), 1000):
            chunk: list[ObjectIdentifierTypeDef] = [{"Key": k} for k in doomed[start : start + 1000]]
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True})
        if doomed:
            log.info("retention deleted %d objects no kept snapshot references", len(doomed))
        return doomed

    # --- the publish lease --------------------------------------------------

    def acquire_lease(self, owner: str, ttl_seconds: float) -> PublishLease:
        try:
            response = self.s3.get_object(Bucket=self.bucket, Key=LEASE_KEY)
        except ClientError as exc:
            if not _is_missing(exc):
                raise
            return self._put_lease(owner, ttl_seconds, {"IfNoneMatch": "*"})
        held = json.loads(response["Body"].read())
        if held.get("owner") != owner and float(held.get("expires_at", 0)) > time.time():
            remaining = float(held["expires_at"]) - time.time()
            raise LeaseHeldError(f"{held.get('owner')} holds the publish lease for another {remaining:.0f}s")
        return self._put_lease(owner, ttl_seconds, {"IfMatch": response["ETag"]})

    def renew_lease(self, lease: PublishLease, ttl_seconds: float) -> None:
        renewed = self._put_lease(lease.owner, ttl_seconds, {"IfMatch": lease.etag})
        lease.etag, lease.expires_at = renewed.etag, renewed.expires_at

    def release_lease(self, lease: PublishLease) -> None:
        try:
            self._put_lease(lease.owner, 0.0, {"IfMatch": lease.etag})
        except LeaseHeldError:
            log.warning("the publish lease was taken over before %s released it", lease.owner)

    def _put_lease(self, owner: str, ttl_seconds: float, condition: dict[str, Any]) -> PublishLease:
        expires_at = time.time() + ttl_seconds
        # The nonce makes every lease body (and so its ETag) unique.
        body = json.dumps({"owner": owner, "expires_at": expires_at, "nonce": uuid.uuid4().hex}).encode()
        try:
            response = self.s3.put_object(Bucket=self.bucket, Key=LEASE_KEY, Body=body, **condition)
        except ClientError as exc:
            if _is_conflict(exc):
                raise LeaseHeldError(f"{owner} lost the race for the publish lease") from exc
            raise
        return PublishLease(owner, response["ETag"], expires_at)
