"""Fixtures for the importer tests: short real audio files and the test's bucket.

Audio is generated (a few seconds of tones written with soundfile) so every
dataset can be laid out on disk exactly as its download is, without the
download.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import soundfile as sf

from mess.ingest.importers.drop import DropBucket
from mess.runtime.endpoints import StackSettings

ToneWriter = Callable[..., Path]


@pytest.fixture
def write_tone() -> ToneWriter:
    """``write_tone(path, seconds=2.0, hz=440.0, rate=22050)``: a real audio file in the format its suffix names."""

    def write(path: Path, seconds: float = 2.0, hz: float = 440.0, rate: int = 22050, channels: int = 1) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(int(seconds * rate), dtype=np.float32) / rate
        tone = 0.3 * np.sin(2 * np.pi * hz * t) * (1.0 + 0.2 * np.sin(2 * np.pi * 3 * t))
        audio = np.repeat(tone[:, None], channels, axis=1) if channels > 1 else tone
        sf.write(str(path), audio.astype(np.float32), rate)
        return path

    return write


@pytest.fixture
def s3(stack: StackSettings) -> Any:
    kwargs: dict[str, Any] = stack.s3_client_kwargs()
    return boto3.client("s3", **kwargs)


@pytest.fixture
def drop(stack: StackSettings) -> DropBucket:
    return DropBucket.connect(stack)


@pytest.fixture
def importer_env(stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The test's endpoints as MESS_* variables, for running the command line in this process."""
    for name, value in stack_env.items():
        monkeypatch.setenv(name, value)
    return stack_env
