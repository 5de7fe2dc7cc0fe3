"""Reading audio from S3: transient errors are retried with backoff, permanent ones are not."""

from typing import Any

import pytest
from aiobotocore.session import get_session
from prometheus_client import REGISTRY

from mess.dev.stack import free_port
from mess.embedder.audio import AudioRejectedError
from mess.embedder.storage import CLIENT_CONFIG, AudioStore
from mess.runtime.endpoints import StackSettings
from mess.runtime.retry import Backoff, RetriesExhaustedError

QUICK = Backoff(attempts=3, base_s=0.01, max_s=0.05)


def _retries() -> float:
    return REGISTRY.get_sample_value("mess_embedder_retries_total", {"operation": "s3_get"}) or 0.0


async def test_unreachable_endpoint_is_retried_then_reported_as_exhausted() -> None:
    # A port nobody listens on: connection refused, the transient error of a restarting S3.
    settings = StackSettings(s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
    kwargs: dict[str, Any] = settings.s3_client_kwargs()
    before = _retries()
    async with get_session().create_client("s3", config=CLIENT_CONFIG, **kwargs) as client:
        store = AudioStore(client, settings.bucket, QUICK, max_bytes=1 << 20)
        with pytest.raises(RetriesExhaustedError) as caught:
            await store.fetch("s3://mess-audio/audio/ab/abc.wav")
    assert caught.value.attempts == 3
    assert _retries() - before == 2


async def test_missing_object_is_permanent_and_not_retried(stack: StackSettings) -> None:
    kwargs: dict[str, Any] = stack.s3_client_kwargs()
    before = _retries()
    async with get_session().create_client("s3", config=CLIENT_CONFIG, **kwargs) as client:
        store = AudioStore(client, stack.bucket, QUICK, max_bytes=1 << 20)
        with pytest.raises(AudioRejectedError) as missing:
            await store.fetch(f"s3://{stack.bucket}/audio/00/nothing.wav")
        await client.put_object(Bucket=stack.bucket, Key="audio/big.wav", Body=b"x" * 4096)
        small_store = AudioStore(client, stack.bucket, QUICK, max_bytes=1024)
        with pytest.raises(AudioRejectedError) as too_large:
            await small_store.fetch(f"s3://{stack.bucket}/audio/big.wav")
        assert await store.fetch(f"s3://{stack.bucket}/audio/big.wav") == b"x" * 4096
    assert missing.value.kind == "missing_audio"
    assert too_large.value.kind == "too_large"
    assert _retries() == before
