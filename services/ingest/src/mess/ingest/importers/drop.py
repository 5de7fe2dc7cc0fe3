"""The bucket's drop prefix, as an importer sees it.

A dataset track is stored at ``{drop_prefix}{dataset}/{relative path}`` with
three S3 user-metadata entries the ingest service's S3 worker reads:
``mess-dataset``, ``mess-track-id`` and ``mess-metadata`` (the
``TrackMetadata`` as ASCII-escaped JSON). An object already there with the
same size and the same three entries is the same import done before, which
is what makes a re-run skip it (and a crashed run resume).
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from mess.contracts import TrackMetadata
from mess.ingest.importers.dataset import DatasetTrack, ImportSetupError
from mess.runtime.endpoints import StackSettings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

DATASET_KEY = "mess-dataset"
TRACK_ID_KEY = "mess-track-id"
METADATA_KEY = "mess-metadata"

# S3 allows 2 KB of user metadata, counted as the UTF-8 bytes of every key
# and value; stay clear of it so a proxy adding a byte does not tip it over.
USER_METADATA_BUDGET = 1900
# No single text field may take more than this many bytes of that budget.
LONGEST_TEXT = 300
# The free-text TrackMetadata fields (all but year and tags), the ones that may be shortened.
_TEXT_FIELDS = tuple(name for name in TrackMetadata.model_fields if name not in ("year", "tags"))

# Objects up to 64 MB go up in one PUT; larger ones (MAESTRO's WAVs reach
# 200 MB) in 16 MB parts streamed from disk, so memory stays flat and a
# failed part is retried alone.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 16 * 1024 * 1024


def metadata_json(metadata: TrackMetadata) -> str:
    """Compact, ASCII-only JSON: S3 metadata travels in HTTP headers, which are ASCII."""
    return json.dumps(metadata.model_dump(mode="json", exclude_defaults=True), ensure_ascii=True, separators=(",", ":"))


def _escaped_length(text: str) -> int:
    """Bytes ``text`` takes inside ASCII-escaped JSON (``é`` takes six)."""
    return len(json.dumps(text, ensure_ascii=True)) - 2


def shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` escaped bytes, ``...`` marking the cut."""
    if _escaped_length(text) <= limit:
        return text
    kept: list[str] = []
    used = 3
    for character in text:
        used += _escaped_length(character)
        if used > limit:
            break
        kept.append(character)
    return "".join(kept) + "..." if kept else ""


def fit_metadata(metadata: TrackMetadata, budget: int) -> str:
    """``metadata_json`` of the metadata cut to ``budget`` bytes: very long texts
    shortened first, then tags dropped from the end, then the longest text cut."""
    fields = metadata.model_dump()
    for name in _TEXT_FIELDS:
        if fields.get(name):
            fields[name] = shorten(fields[name], LONGEST_TEXT)
    current = TrackMetadata.model_validate(fields)
    encoded = metadata_json(current)
    while len(encoded) > budget:
        fields = current.model_dump()
        if fields["tags"]:
            fields["tags"] = fields["tags"][:-1]
        else:
            longest = max(_TEXT_FIELDS, key=lambda name: _escaped_length(fields.get(name) or ""))
            text = fields[longest] or ""
            if not text:
                raise ValueError(f"metadata cannot fit in {budget} bytes")
            fields[longest] = shorten(text, _escaped_length(text) - (len(encoded) - budget))
        current = TrackMetadata.model_validate(fields)
        encoded = metadata_json(current)
    return encoded


def user_metadata(track: DatasetTrack) -> dict[str, str]:
    """The agreed S3 user metadata of a dataset track."""
    entries = {DATASET_KEY: track.dataset, TRACK_ID_KEY: track.track_id}
    used = sum(len(key) + len(value) for key, value in entries.items()) + len(METADATA_KEY)
    entries[METADATA_KEY] = fit_metadata(track.metadata, USER_METADATA_BUDGET - used)
    return entries


class DropBucket:
    """Uploads dataset tracks under the drop prefix and tells which are already there."""

    def __init__(
        self,
        client: "S3Client",
        bucket: str,
        drop_prefix: str,
        *,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        multipart_chunk: int = MULTIPART_CHUNK,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.drop_prefix = drop_prefix
        self.transfer = TransferConfig(
            multipart_threshold=multipart_threshold, multipart_chunksize=multipart_chunk, max_concurrency=4
        )

    @classmethod
    def connect(
        cls,
        settings: StackSettings,
        *,
        bucket: str | None = None,
        drop_prefix: str | None = None,
        connections: int = 10,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        multipart_chunk: int = MULTIPART_CHUNK,
    ) -> "DropBucket":
        """A client for the configured endpoint, after checking the bucket answers."""
        kwargs: dict[str, Any] = settings.s3_client_kwargs()
        config = Config(max_pool_connections=connections, retries={"max_attempts": 5, "mode": "standard"})
        client = boto3.client("s3", config=config, **kwargs)
        drop = cls(
            client,
            bucket or settings.bucket,
            settings.drop_prefix if drop_prefix is None else drop_prefix,
            multipart_threshold=multipart_threshold,
            multipart_chunk=multipart_chunk,
        )
        drop.check(settings.s3_endpoint_url or "AWS S3")
        return drop

    def check(self, where: str) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in {"404", "NoSuchBucket", "NotFound"}:
                raise ImportSetupError(
                    f"bucket {self.bucket!r} does not exist at {where} (start the stack: make stack)"
                ) from None
            raise ImportSetupError(f"bucket {self.bucket!r} at {where}: {error}") from error
        except BotoCoreError as error:
            raise ImportSetupError(f"cannot reach S3 at {where}: {error}") from error

    def key(self, track: DatasetTrack) -> str:
        return f"{self.dataset_prefix(track.dataset)}{track.relative_path}"

    def dataset_prefix(self, dataset: str) -> str:
        return f"{self.drop_prefix}{dataset}/"

    def stored_sizes(self, dataset: str) -> dict[str, int]:
        """Key -> size of every object already under the dataset's folder: one
        listing instead of one request per file, so a fresh import asks nothing
        per file and a resumed one asks only about files that may be there."""
        sizes: dict[str, int] = {}
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.dataset_prefix(dataset)):
                for item in page.get("Contents", []):
                    if "Key" in item and "Size" in item:
                        sizes[item["Key"]] = item["Size"]
        except (BotoCoreError, ClientError) as error:
            # Without the listing nothing can be skipped safely: stop before uploading.
            raise ImportSetupError(f"cannot list s3://{self.bucket}/{self.dataset_prefix(dataset)}: {error}") from error
        return sizes

    def holds(self, key: str, metadata: dict[str, str], size: int | None = None) -> bool:
        """Whether the object at ``key`` carries exactly this metadata (and size, when given)."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code", "") in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise
        if size is not None and head.get("ContentLength") != size:
            return False
        stored = head.get("Metadata", {})
        return all(stored.get(name) == value for name, value in metadata.items())

    def upload(self, path: Path, track: DatasetTrack, metadata: dict[str, str]) -> None:
        """Streams the file from disk (multipart above the threshold); never reads it whole."""
        self.client.upload_file(
            str(path),
            self.bucket,
            self.key(track),
            ExtraArgs={"Metadata": metadata, "ContentType": track.content_type},
            Config=self.transfer,
        )
