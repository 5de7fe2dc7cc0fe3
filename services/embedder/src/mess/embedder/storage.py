"""The embedder's side of the bucket: read track audio, write waveform peaks.

Transient failures (connection refused or reset, timeouts, throttling, 5xx)
are retried with exponential backoff and jitter; botocore's own retries are
switched off so there is one retry policy, this one. Permanent failures
(no such key or bucket, access denied, too large) are not retried.
"""

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError

from mess.contracts.storage import WaveformPeaks, split_s3_uri, waveform_key
from mess.embedder import metrics
from mess.embedder.audio import AudioRejectedError
from mess.runtime.retry import Backoff, retrying

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = logging.getLogger(__name__)

T = TypeVar("T")

# Error codes that say "this will not get better by asking again".
_MISSING = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_DENIED = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}

CLIENT_CONFIG = AioConfig(
    retries={"max_attempts": 1, "mode": "standard"},
    connect_timeout=5,
    read_timeout=60,
)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _MISSING or code in _DENIED:
            return False
        return status >= 500 or status == 429 or code in {"SlowDown", "Throttling", "RequestTimeout", "InternalError"}
    return isinstance(exc, (BotoCoreError, aiohttp.ClientError, TimeoutError, ConnectionError))


async def with_retries(operation: str, call: Callable[[], Awaitable[T]], backoff: Backoff) -> T:
    """Run ``call``; retry transient S3 errors with backoff, raise RetriesExhaustedError at the end."""
    return await retrying(operation, call, backoff, is_transient, _count_retry)


def _count_retry(operation: str) -> None:
    metrics.RETRIES.labels(operation=operation).inc()


class AudioStore:
    def __init__(self, client: "S3Client", bucket: str, backoff: Backoff, max_bytes: int) -> None:
        self.client = client
        self.bucket = bucket
        self.backoff = backoff
        self.max_bytes = max_bytes

    async def fetch(self, audio_uri: str) -> bytes:
        """The audio object's bytes. Raises AudioRejectedError for permanent problems,
        RetriesExhaustedError when retries ran out."""
        bucket, key = split_s3_uri(audio_uri)
        if bucket != self.bucket:
            # Ingest keeps every track's audio in our bucket; an event pointing elsewhere would make the
            # embedder read (and publish the peaks of) objects it has no business with.
            raise AudioRejectedError("foreign_uri", f"{audio_uri} is not in the bucket {self.bucket}")

        async def read() -> bytes:
            response = await self.client.get_object(Bucket=bucket, Key=key)
            size = int(response.get("ContentLength", 0) or 0)
            body = response["Body"]
            if size > self.max_bytes:
                body.close()
                raise AudioRejectedError(
                    "too_large", f"{audio_uri} holds {size} bytes; the limit is {self.max_bytes} (max_audio_bytes)"
                )
            async with body as stream:
                data: bytes = await stream.read()
            return data

        try:
            return await with_retries("s3_get", read, self.backoff)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING:
                raise AudioRejectedError("missing_audio", f"{audio_uri} does not exist ({code})") from exc
            if code in _DENIED:
                raise AudioRejectedError("access_denied", f"{audio_uri} cannot be read ({code})") from exc
            raise AudioRejectedError("s3_error", f"{audio_uri}: {exc}") from exc

    async def put_waveform(self, peaks: WaveformPeaks) -> str:
        key = waveform_key(peaks.track_id)
        body = peaks.model_dump_json().encode("utf-8")

        async def write() -> Any:
            return await self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json")

        await with_retries("s3_put_waveform", write, self.backoff)
        return key
