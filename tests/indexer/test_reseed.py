"""Re-seeding the embeddings topic from the latest snapshot (a lost Kafka cluster), through the real broker and S3."""

import numpy as np

from mess.contracts.events import TrackEmbedded
from mess.dev.stack import create_topics, delete_topics
from mess.indexer.reseed import reseed
from mess.runtime.endpoints import StackSettings

from .indexer_harness import (
    embedded,
    indexer_settings,
    producer,
    read_back,
    read_topic,
    removed,
    running,
    snapshot_store,
    wait_for_snapshot,
)


async def test_reseed_publishes_every_served_vector_back_with_its_registered_content(stack: StackSettings) -> None:
    store = snapshot_store(stack)
    settings = indexer_settings(stack, shard_count=2)
    async with running(settings), producer(stack) as send:
        for n in range(12):
            await send(embedded(f"track-{n:02d}", n))
        await send(removed("track-11"))
        stored = await wait_for_snapshot(
            store, lambda s: s.manifest.vector_count == 11, "a snapshot of the eleven tracks left"
        )
    # The cluster is lost: the embeddings topic comes back empty.
    await delete_topics(stack)
    await create_topics(stack)

    report = await reseed(settings)
    assert report.version == stored.version and report.published == 11 and not report.skipped

    events: list[TrackEmbedded] = await read_topic(stack, stack.topics.tracks_embedded, TrackEmbedded, 11)
    served = read_back(store, stored.version)
    assert sorted(e.track_id for e in events) == sorted(served.track_ids())
    for event in events:
        assert event.model == stored.manifest.model
        assert event.sha256 == embedded(event.track_id, 0).sha256  # the content the registry announced
        np.testing.assert_array_equal(event.vector, served.vector(event.track_id))
