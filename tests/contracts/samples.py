"""One valid instance of every event, shared by the contract tests."""

import numpy as np

from mess.contracts import (
    ModelIdentity,
    RecommendationServed,
    RecommendedItem,
    RecommendRequestSummary,
    SnapshotCounts,
    SnapshotPublished,
    TrackAdded,
    TrackEmbedded,
    TrackFailed,
    TrackMetadata,
    TrackRemoved,
)
from mess.contracts.events import Event

SHA = "ab" * 32
MODEL = ModelIdentity(name="dsp", revision="v1", dim=4, pooling="mean-over-time")


def sample_events() -> list[Event]:
    return [
        TrackAdded(
            track_id="smd-bach-bwv849-01-0c4f2a",
            sha256=SHA,
            audio_uri="s3://mess-audio/tracks/smd/bach.wav",
            dataset="smd",
            metadata=TrackMetadata(title="Prelude", composer="Bach", year=2009, tags=["piano", "baroque"]),
            duration_s=93.5,
            sample_rate=44100,
            channels=2,
            size_bytes=16_000_000,
        ),
        TrackEmbedded(
            track_id="t1",
            sha256=SHA,
            model=MODEL,
            vector=np.array([0.5, -0.25, 1e-38, 3.4e38], dtype=np.float32),
            duration_s=12.0,
            chunks=3,
        ),
        TrackRemoved(track_id="t1", reason="deleted by user"),
        TrackFailed(
            track_id="t1",
            stage="embed",
            error_kind="decode",
            error="not an audio file",
            attempts=1,
            source_topic="mess.tracks.added.v1",
            source_partition=3,
            source_offset=42,
            original_key="t1",
            original_payload='{"track_id": "t1"}',
        ),
        SnapshotPublished(
            version="000000000042",
            manifest_uri="s3://mess-audio/snapshots/000000000042/manifest.json",
            counts=SnapshotCounts(vectors=100, shards=4, rebuilt_shards=1),
            model=MODEL,
        ),
        RecommendationServed(
            request_id="r-1",
            request=RecommendRequestSummary(track_id="t1", k=2, strategy="diverse", params={"lambda": 0.5}),
            results=[
                RecommendedItem(track_id="t2", score=0.9, rank=1),
                RecommendedItem(track_id="t3", score=0.8, rank=2),
            ],
            snapshot_version="000000000042",
            latency_ms=3.2,
            cached=False,
        ),
    ]
