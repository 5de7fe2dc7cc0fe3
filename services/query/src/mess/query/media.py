"""Audio and waveforms from S3: byte ranges for players, peaks for drawing.

Audio is streamed from S3 in chunks (never held whole in memory), honouring a
single HTTP byte range so that players can seek; or, by setting, answered with
a redirect to a short-lived presigned URL so the bytes bypass the service.
Waveform peaks are the embedder's JSON document; ``render_waveform_png``
draws them (one vertical line from min to max per pixel column).

What is served is never what the stored object claims. The bucket is
writable by more parties than the API (drops), so an object's ContentType
and key are an attacker's choice: the type comes from the object's own first
bytes (the container ingest decoded), from an allow-list of audio types, and
anything else is not served at all.
"""

from __future__ import annotations

import asyncio
import io
import re
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError
from PIL import Image, ImageDraw
from pydantic import ValidationError

from mess.contracts.storage import WaveformPeaks, split_s3_uri, waveform_key

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

# 18 digits: past any object size, and short enough that int() never refuses the text.
_RANGE = re.compile(r"^bytes=(\d{0,18})-(\d{0,18})$")
# Bytes read from the start of an object to recognise its container.
SNIFF_BYTES = 16


class MediaMissingError(Exception):
    """The object is not in S3 (yet)."""


class MediaUnavailableError(Exception):
    """S3 failed; try again later."""


class NotAudioError(Exception):
    """The stored object is not one of the audio containers ingest accepts; it is never served."""


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
    if size == 0:
        # Nothing can be selected from an empty object, a suffix range included (RFC 9110 14.1.2).
        raise RangeNotSatisfiableError(size)
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
    content_type: str  # from AUDIO_TYPES, by the object's own bytes
    etag: str | None
    extension: str


# The allow-list: container -> (media type, file extension). Only these are ever served.
AUDIO_TYPES: dict[str, tuple[str, str]] = {
    "wav": ("audio/wav", "wav"),
    "flac": ("audio/flac", "flac"),
    "ogg": ("audio/ogg", "ogg"),
    "mp3": ("audio/mpeg", "mp3"),
}


def sniff_audio(head: bytes) -> str | None:
    """The container of an object from its first bytes, or None when it is not one we serve."""
    if len(head) >= 12 and head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"OggS"):
        return "ogg"
    # An ID3 tag, or an MPEG audio frame sync (11 set bits, layer bits not 00).
    if head.startswith(b"ID3") or (len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0 and head[1] & 0x06):
        return "mp3"
    return None


def _missing(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code", "")) in ("NoSuchKey", "404", "NotFound")


_SNIFF_CACHE = 10_000


class MediaStore:
    def __init__(self, s3: S3Client, bucket: str, chunk_bytes: int) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._chunk = chunk_bytes
        # (bucket, key, etag) -> container: content-addressed objects never change under one etag.
        self._sniffed: dict[tuple[str, str, str], str | None] = {}

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
        size = int(head["ContentLength"])
        etag = head.get("ETag")
        container = await self._container(bucket, key, etag) if size else None
        if container is None:
            # An empty object, or one whose bytes are not audio (HTML named .wav, say): never served.
            raise NotAudioError("the stored object of this track is not audio")
        content_type, extension = AUDIO_TYPES[container]
        return AudioObject(bucket, key, size, content_type, etag, extension)

    async def _container(self, bucket: str, key: str, etag: str | None) -> str | None:
        cache_key = (bucket, key, etag or "")
        if cache_key in self._sniffed:
            return self._sniffed[cache_key]
        try:
            response = await self._s3.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{SNIFF_BYTES - 1}")
            async with response["Body"] as body:
                head = await body.read()
        except ClientError as exc:
            if _missing(exc):
                raise MediaMissingError("the audio object of this track is missing from storage") from exc
            raise MediaUnavailableError("the audio store (S3) failed; try again") from exc
        except (BotoCoreError, OSError) as exc:
            raise MediaUnavailableError("the audio store (S3) failed; try again") from exc
        container = sniff_audio(head)
        self._sniffed[cache_key] = container
        while len(self._sniffed) > _SNIFF_CACHE:
            del self._sniffed[next(iter(self._sniffed))]
        return container

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

    async def presigned_url(self, audio: AudioObject, expiry_s: int, filename: str) -> str:
        # S3 would answer with the stored ContentType; the signed URL overrides it with ours.
        params = {
            "Bucket": audio.bucket,
            "Key": audio.key,
            "ResponseContentType": audio.content_type,
            "ResponseContentDisposition": f'inline; filename="{filename}"',
        }
        return await self._s3.generate_presigned_url("get_object", Params=params, ExpiresIn=expiry_s)

    async def waveform(self, track_id: str) -> WaveformPeaks:
        return (await self.waveform_document(track_id))[0]

    async def waveform_document(self, track_id: str) -> tuple[WaveformPeaks, str]:
        """The peaks and the stored object's ETag (which names this version of them)."""
        key = waveform_key(track_id)
        try:
            response = await self._s3.get_object(Bucket=self._bucket, Key=key)
            etag = str(response.get("ETag") or "")
            async with response["Body"] as body:
                raw = await body.read()
        except ClientError as exc:
            if _missing(exc):
                raise MediaMissingError(f"no waveform for track {track_id} yet") from exc
            raise MediaUnavailableError("the audio store (S3) failed; try again") from exc
        except (BotoCoreError, OSError) as exc:
            raise MediaUnavailableError("the audio store (S3) failed; try again") from exc
        try:
            return WaveformPeaks.model_validate_json(raw), etag
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


class WaveformRenderer:
    """PNG waveforms drawn off the event loop, a bounded number at a time, and kept once drawn.

    Drawing is pure Python per pixel column (tens of milliseconds for a wide
    image): on the loop, a dozen of them stalled every other request, health
    probes included. Renders run on their own threads behind a semaphore; a
    finished PNG is kept (LRU, by track, peaks version and size), so a page
    that shows the same waveform to many listeners draws it once.
    """

    def __init__(self, concurrency: int, cache_entries: int) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="mess-waveform")
        self._cache: OrderedDict[tuple[str, str, int, int], bytes] = OrderedDict()
        self._cache_entries = cache_entries

    async def png(self, track_id: str, version: str, peaks: WaveformPeaks, width: int, height: int) -> bytes:
        key = (track_id, version, width, height)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        async with self._slots:
            loop = asyncio.get_running_loop()
            png = await loop.run_in_executor(self._executor, render_waveform_png, peaks, width, height)
        if self._cache_entries and version:
            self._cache[key] = png
            while len(self._cache) > self._cache_entries:
                self._cache.popitem(last=False)
        return png

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
