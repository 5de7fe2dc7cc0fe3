"""Audio in S3: streamed in while it arrives, kept once per content.

An upload streams to a staging key with a multipart upload (never the whole
body in memory), because its content hash, and so its final key
(``mess.contracts.storage.audio_key``), is only known once the last byte has
arrived. Accepted audio is then copied to its content-addressed key inside
S3 and the staging object is deleted; rejected audio is just deleted.

A copy made for a registration that then failed is deleted again
(``forget``), and removing a track erases its audio and waveform objects
(``erase``): what ingest stored on a track's behalf never outlives it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from mess.contracts.storage import AUDIO_PREFIX, audio_key, split_s3_uri, waveform_key

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = logging.getLogger(__name__)

# Not under the drop prefix, so staging an upload never triggers auto-ingest.
# Objects left here by a crash are garbage: a lifecycle rule on the prefix may expire them.
STAGING_PREFIX = "uploads/incoming/"
_READ_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ObjectHead:
    key: str
    size_bytes: int
    etag: str | None
    metadata: dict[str, str]


def normalise_etag(etag: str | None) -> str | None:
    """S3 quotes ETags in HEAD and LIST answers but not in event notifications."""
    return etag.strip('"') if etag else None


def is_missing(exc: ClientError) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NotFound"}


class StagedUpload:
    """One upload on its way to S3: parts go out as soon as a part's worth has arrived."""

    def __init__(self, s3: S3Client, bucket: str, part_bytes: int) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._part_bytes = part_bytes
        self.key = f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[tuple[int, str]] = []
        self._stored = False

    async def write(self, chunk: bytes) -> None:
        self._buffer += chunk
        if len(self._buffer) >= self._part_bytes:
            await self._send_part()

    async def _send_part(self) -> None:
        if self._upload_id is None:
            created = await self._s3.create_multipart_upload(Bucket=self._bucket, Key=self.key)
            self._upload_id = created["UploadId"]
        number = len(self._parts) + 1
        answer = await self._s3.upload_part(
            Bucket=self._bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=bytes(self._buffer)
        )
        self._parts.append((number, answer["ETag"]))
        self._buffer.clear()

    async def finish(self) -> None:
        if self._upload_id is None:
            # Smaller than one part: a plain PUT is one request instead of three.
            await self._s3.put_object(Bucket=self._bucket, Key=self.key, Body=bytes(self._buffer))
        else:
            if self._buffer:
                await self._send_part()
            await self._s3.complete_multipart_upload(
                Bucket=self._bucket,
                Key=self.key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in self._parts]},
            )
        self._buffer.clear()
        self._stored = True

    async def discard(self) -> None:
        """Leave nothing behind: abort an unfinished multipart upload, delete a finished object."""
        try:
            if self._stored:
                await self._s3.delete_object(Bucket=self._bucket, Key=self.key)
            elif self._upload_id is not None:
                await self._s3.abort_multipart_upload(Bucket=self._bucket, Key=self.key, UploadId=self._upload_id)
        except (ClientError, BotoCoreError):
            log.warning("could not remove the staged upload %s; it is garbage now", self.key, exc_info=True)
        self._buffer.clear()


class AudioStore:
    def __init__(self, s3: S3Client, bucket: str, part_bytes: int) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.part_bytes = part_bytes

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def staged_upload(self) -> StagedUpload:
        return StagedUpload(self.s3, self.bucket, self.part_bytes)

    def audio_uri(self, sha256: str, extension: str) -> str:
        """Where ``keep`` puts this content: known before anything is written, so it can be checked first."""
        return self.uri(audio_key(sha256, extension))

    async def keep(self, source_key: str, sha256: str, extension: str) -> bool:
        """Copy an object to its content-addressed audio key (once per content); True when this call
        created the audio object (and so owns undoing it if the registration fails)."""
        key = audio_key(sha256, extension)
        if await self.head(key) is not None:
            return False
        await self.s3.copy_object(Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": source_key})
        return True

    async def forget(self, audio_uri: str) -> None:
        """Delete an audio object ``keep`` created for a registration that failed; a failure here is logged
        (the object is then garbage), never raised over the registration's own error."""
        try:
            bucket, key = split_s3_uri(audio_uri)
            if bucket == self.bucket and key.startswith(AUDIO_PREFIX):
                await self.s3.delete_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError, OSError, ValueError):
            log.warning("could not delete %s after a failed registration; it is garbage now", audio_uri)

    async def erase(self, track_id: str, audio_uri: str | None) -> None:
        """Delete a removed track's waveform and audio. Only objects ingest itself stores are touched: an
        audio URI outside ``audio/`` (a rejected drop's row points at the dropped object, which belongs to
        whoever dropped it) is left alone. Deleting what is already gone succeeds, so this repeats safely."""
        await self.s3.delete_object(Bucket=self.bucket, Key=waveform_key(track_id))
        if audio_uri is None:
            return
        bucket, key = split_s3_uri(audio_uri)
        if bucket == self.bucket and key.startswith(AUDIO_PREFIX):
            await self.s3.delete_object(Bucket=bucket, Key=key)

    async def head(self, key: str) -> ObjectHead | None:
        try:
            answer = await self.s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise
        return ObjectHead(
            key=key,
            size_bytes=int(answer.get("ContentLength", 0)),
            etag=normalise_etag(answer.get("ETag")),
            metadata={k.lower(): v for k, v in answer.get("Metadata", {}).items()},
        )

    async def download(self, key: str, sink: Callable[[bytes], None]) -> tuple[int, str | None]:
        """Stream an object into ``sink`` chunk by chunk; returns (bytes, etag of what was read)."""
        answer = await self.s3.get_object(Bucket=self.bucket, Key=key)
        total = 0
        async with answer["Body"] as body:
            while chunk := await body.read(_READ_CHUNK):
                sink(chunk)
                total += len(chunk)
        return total, normalise_etag(answer.get("ETag"))

    async def read_bytes(self, key: str) -> bytes:
        answer = await self.s3.get_object(Bucket=self.bucket, Key=key)
        async with answer["Body"] as body:
            return await body.read()

    async def delete(self, key: str) -> None:
        await self.s3.delete_object(Bucket=self.bucket, Key=key)

    async def answers(self) -> bool:
        try:
            await self.s3.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError, OSError):
            return False
        return True
