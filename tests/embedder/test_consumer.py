"""The poll-batch handler's offset discipline, with a fake message and fake collaborators.

The real broker path is covered in test_service.py; these cases need a broker
that refuses to take an event, which the shared test stack cannot be made to do.
"""

from typing import Any

import numpy as np
import pytest

from mess.contracts.events import Event, ModelIdentity, TrackAdded, TrackFailed
from mess.contracts.storage import WaveformPeaks
from mess.embedder.config import Settings
from mess.embedder.consumer import AddedTrackHandler, PublishFailedError
from mess.embedder.embedding import EmbeddedTrack


class FakeRecord:
    def __init__(self, offset: int, value: bytes, key: bytes | None = None) -> None:
        self.topic = "mess.tracks.added.v1"
        self.partition = 0
        self.offset = offset
        self.key = key
        self.value = value
        self.headers: list[tuple[str, bytes]] = []


class FakeBatchMessage:
    def __init__(self, records: list[FakeRecord]) -> None:
        self.raw_message = tuple(records)
        self.calls: list[str] = []

    async def ack(self) -> None:
        self.calls.append("ack")

    async def nack(self) -> None:
        self.calls.append("nack")


class FakeStore:
    async def fetch(self, audio_uri: str) -> bytes:
        return b"audio"

    async def put_waveform(self, peaks: WaveformPeaks) -> str:
        return "waveforms/x.json"


class FakeEmbedder:
    identity = ModelIdentity(name="fake", revision="0", dim=2, pooling="none")

    async def embed(self, track_id: str, data: bytes, expected_sha256: str | None) -> EmbeddedTrack:
        peaks = WaveformPeaks(track_id=track_id, duration_s=1.0, sample_rate=8000, samples_per_peak=4, mins=[], maxs=[])
        return EmbeddedTrack(vector=np.array([0.6, 0.8], dtype=np.float32), chunks=1, duration_s=1.0, peaks=peaks)


def _added(track_id: str) -> bytes:
    return TrackAdded(track_id=track_id, sha256="a" * 64, audio_uri="s3://b/k.wav", dataset="upload").to_bytes()


def _handler(publish: Any) -> AddedTrackHandler:
    return AddedTrackHandler(Settings(), publish, FakeStore(), FakeEmbedder())  # type: ignore[arg-type]


async def test_batch_is_committed_after_every_record_is_published_with_fake_message() -> None:
    published: list[tuple[str, Event]] = []

    async def publish(event: Event, topic: str) -> None:
        published.append((topic, event))

    message = FakeBatchMessage([FakeRecord(0, _added("t1")), FakeRecord(1, b"not json"), FakeRecord(2, _added("t2"))])
    await _handler(publish).handle_batch(message)  # type: ignore[arg-type]
    assert message.calls == ["ack"]
    topics = sorted(topic for topic, _ in published)
    assert topics == ["mess.tracks.embedded.v1", "mess.tracks.embedded.v1", "mess.tracks.failed.v1"]
    failed = next(event for _, event in published if isinstance(event, TrackFailed))
    assert failed.error_kind == "malformed_event" and failed.source_offset == 1


async def test_unpublishable_batch_is_nacked_and_never_committed_with_fake_message() -> None:
    async def publish(event: Event, topic: str) -> None:
        raise PublishFailedError("the broker is down")

    message = FakeBatchMessage([FakeRecord(0, _added("t1")), FakeRecord(1, _added("t2"))])
    with pytest.raises(PublishFailedError):
        await _handler(publish).handle_batch(message)  # type: ignore[arg-type]
    # nack seeks every partition back to the batch's first record: it is delivered again.
    assert message.calls == ["nack"]
