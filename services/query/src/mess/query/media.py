"""Audio and waveforms from S3: byte ranges for players, peaks for drawing.

Audio is streamed from S3 in chunks (never held whole in memory), honouring a
single HTTP byte range so that players can seek; or, by setting, answered with
a redirect to a short-lived presigned URL so the bytes bypass the service.
Waveform peaks are the embedder's JSON document; ``render_waveform_png``
draws them (one vertical line from min to max per pixel column).
"""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError
from PIL import Image, ImageDraw
from pydantic import ValidationError

from mess.contracts.storage import WaveformPeaks, split_s3_uri, waveform_key

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class MediaMissingError(Exception):
    """The object is not in S3 (yet)."""


class MediaUnavailableError(Exception):
    """S3 failed; try again later."""


class RangeNotSatisfiableError(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(f"range outside the {size} bytes of the object")
        self.size = size


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range asked for, or None for the whole object.

    One range only: a multi-range or malformed header is ignored (RFC 9110
    lets a server answer 200 with the whole content instead).
    """
    if not header:
        return None
    match = _RANGE.match(header.strip().replace(" ", ""))
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        length = int(last)
        if length == 0:
            raise RangeNotSatisfiableError(size)
        return max(size - length, 0), size - 1
    start = int(first)
    if start >= size:
        raise RangeNotSatisfiableError(size)
    end = int(last) if last else size - 1
    if end < start:
        return None
    return start, min(end, size - 1)


@dataclass(frozen=True)
class AudioObject:
    bucket: str
    key: str
    size: int
    content_type: str
    etag: str | None


_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "ogg": "audio/ogg", "m4a": "audio/mp4"}


def _missing(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code", "")) in ("NoSuchKey", "404", "NotFound")


class MediaStore:
    def __init__(self, s3: S3Client, bucket: str, chunk_bytes: int) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._chunk = chunk_bytes

    async def audio_object(self, audio_uri: str) -> AudioObject:
        bucket, key = split_s3_uri(audio_uri)
        try:
            head = await self._s3.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _missing(exc):
                raise MediaMissingError("the audio object of this track is missing from storage") from exc
            raise MediaUnavailableError("the audio store (S3) failed; try again") from exc
        except (BotoCoreError, OSError) as exc:
            raise MediaUnavailableError("the audio store (S3) failed; try again") from exc
        extension = key.rsplit(".", 1)[-1].lower()
        content_type = head.get("ContentType") or ""
        if not content_type or content_type in ("binary/octet-stream", "application/octet-stream"):
            content_type = _TYPES.get(extension, "application/octet-stream")
        return AudioObject(bucket, key, int(head["ContentLength"]), content_type, head.get("ETag"))

    async def stream(self, audio: AudioObject, byte_range: tuple[int, int] | None) -> AsyncIterator[bytes]:
        """Open the object (so S3 errors surface before the response starts) and return its chunks."""
        try:
            if byte_range is None:
                response = await self._s3.get_object(Bucket=audio.bucket, Key=audio.key)
            else:
                wanted = f"bytes={byte_range[0]}-{byte_range[1]}"
                response = await self._s3.get_object(Bucket=audio.bucket, Key=audio.key, Range=wanted)
        except ClientError as exc:
            if _missing(exc):
                raise MediaMissingError("the audio object of this track is missing from storage") from exc
            raise MediaUnavailableError("the audio store (S3) failed; try again") from exc
        except (BotoCoreError, OSError) as exc:
            raise MediaUnavailableError("the audio store (S3) failed; try again") from exc
        body = response["Body"]

        async def chunks() -> AsyncIterator[bytes]:
            async with body:
                while chunk := await body.read(self._chunk):
                    yield chunk

        return chunks()

    async def presigned_url(self, audio: AudioObject, expiry_s: int) -> str:
        return await self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": audio.bucket, "Key": audio.key}, ExpiresIn=expiry_s
        )

    async def waveform(self, track_id: str) -> WaveformPeaks:
        key = waveform_key(track_id)
        try:
            response = await self._s3.get_object(Bucket=self._bucket, Key=key)
            async with response["Body"] as body:
                raw = await body.read()
        except ClientError as exc:
            if _missing(exc):
                raise MediaMissingError(f"no waveform for track {track_id} yet") from exc
            raise MediaUnavailableError("the audio store (S3) failed; try again") from exc
        except (BotoCoreError, OSError) as exc:
            raise MediaUnavailableError("the audio store (S3) failed; try again") from exc
        try:
            return WaveformPeaks.model_validate_json(raw)
        except ValidationError as exc:
            raise MediaUnavailableError(f"the stored waveform of {track_id} is not a valid peaks document") from exc


def render_waveform_png(peaks: WaveformPeaks, width: int, height: int) -> bytes:
    """Min/max peaks resampled to ``width`` columns, drawn around the centre line."""
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    middle = (height - 1) / 2
    count = min(len(peaks.mins), len(peaks.maxs))
    scale = max((max(abs(v) for v in (*peaks.mins[:count], *peaks.maxs[:count])) if count else 0.0), 1e-9)
    draw.line([(0, middle), (width - 1, middle)], fill=(200, 200, 200))
    for column in range(width if count else 0):
        first = column * count // width
        last = max(first + 1, (column + 1) * count // width)
        low = min(peaks.mins[first:last]) / scale
        high = max(peaks.maxs[first:last]) / scale
        draw.line([(column, middle - high * middle), (column, middle - low * middle)], fill=(40, 90, 160))
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()
