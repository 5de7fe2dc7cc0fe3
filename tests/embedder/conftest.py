"""Fixtures of the embedder tests."""

from pathlib import Path

import pytest

from .samples import write_mert_dir


@pytest.fixture
def tiny_mert_dir(tmp_path: Path) -> Path:
    """A randomly initialised, MERT-shaped checkpoint with MERT's file names and keys."""
    return write_mert_dir(tmp_path / "MERT-v1-95M-tiny")
