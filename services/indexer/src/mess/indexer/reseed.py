"""Re-seed the embeddings topic from the snapshot that ``LATEST`` names.

The embeddings topic is the source of truth for vectors, and the snapshots
in S3 hold a verified copy of every vector, its registry fact (the content's
sha256) and its pitch sequence. After losing the Kafka cluster (or the
topic), ``python -m mess.indexer reseed`` publishes one TrackEmbedded per
track of that snapshot back to the (new, empty) topic, so no track has to be
embedded again on GPUs. The events are exactly what the indexer accepts:
keyed by track id, the snapshot's model, the registered sha256. The snapshot's
registry facts travel with the indexer's own restart (they are in the
snapshot), so the re-seeded embeddings are recognised as registered content.

Tracks whose fact lacks a sha256 (a snapshot from before registry facts)
cannot be re-seeded truthfully and are counted, not guessed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field

from mess.contracts.events import TrackEmbedded
from mess.indexer.config import Settings
from mess.indexer.publisher import s3_client
from mess.indexer.snapshot_store import SnapshotStore
from mess.indexer.snapshots import load_snapshot
from mess.indexer.track_vectors import ModelGuard, TrackVectors
from mess.runtime import kafka

log = logging.getLogger(__name__)

# Sends in flight before waiting for their acknowledgements: bounded memory, a steady pipeline.
_IN_FLIGHT = 500


@dataclass
class ReseedReport:
    version: str | None = None
    published: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def lines(self) -> list[str]:
        if self.version is None:
            return ["no snapshot: LATEST is missing, nothing to re-seed"]
        lines = [f"re-seeded {self.published} embeddings from snapshot {self.version}"]
        lines += [f"  skipped ({reason}): {count}" for reason, count in sorted(self.skipped.items())]
        return lines


async def reseed(settings: Settings) -> ReseedReport:
    store = SnapshotStore(await asyncio.to_thread(s3_client, settings), settings.stack.bucket)
    latest = await asyncio.to_thread(store.read_latest)
    report = ReseedReport()
    if latest is None:
        return report
    report.version = latest.version
    vectors = TrackVectors(settings.shard_count, ModelGuard(None, None))
    stored = await asyncio.to_thread(load_snapshot, store, latest.version, vectors)
    model = stored.manifest.model
    if model is None:
        return report  # a known-empty index: nothing to send
    producer = kafka.producer(settings.stack, client_id="mess-indexer-reseed", linger_ms=20)
    await producer.start()
    try:
        pending: list[asyncio.Future[object]] = []
        for track_id in sorted(vectors.track_ids()):
            fact = vectors.fact(track_id)
            vector = vectors.vector(track_id)
            if fact is None or fact.sha256 is None or vector is None:
                report.skipped["no registered content"] += 1
                continue
            event = TrackEmbedded(
                track_id=track_id,
                sha256=fact.sha256,
                model=model,
                vector=vector,
                pitch_sequence=vectors.sequence(track_id),
            )
            headers = [(name, value.encode()) for name, value in kafka.event_headers(event).items()]
            pending.append(
                await producer.send(
                    settings.stack.topics.tracks_embedded, event.to_bytes(), key=track_id.encode(), headers=headers
                )
            )
            if len(pending) >= _IN_FLIGHT:
                await asyncio.gather(*pending)
                report.published += len(pending)
                pending = []
        await asyncio.gather(*pending)
        report.published += len(pending)
    finally:
        await kafka.stop_quietly(producer)
    log.info("re-seeded %d embeddings from snapshot %s", report.published, latest.version)
    return report
