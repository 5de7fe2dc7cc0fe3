"""Fixtures of the ingest service tests (the importers' own live in importers/conftest.py)."""

from collections.abc import AsyncIterator

import pytest

from mess.runtime.endpoints import StackSettings

from .service_harness import RunningIngest, ingest_settings, running_ingest


@pytest.fixture
async def ingest(stack: StackSettings) -> AsyncIterator[RunningIngest]:
    """The ingest service with its relay and SQS worker, on this test's slice of the real stack."""
    async with running_ingest(ingest_settings(stack)) as service:
        yield service
