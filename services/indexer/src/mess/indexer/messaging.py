"""The indexer's channels on the bus (``python -m mess.indexer.messaging`` prints its AsyncAPI document)."""

from mess.contracts.topics import INDEX_SNAPSHOTS, TRACKS_ADDED, TRACKS_EMBEDDED, TRACKS_FAILED, TRACKS_REMOVED
from mess.runtime.channels import Channels, Consumed, Published, main

# The indexer positions itself from its snapshot's offsets; the group only mirrors them for lag tools.
_WHY = "Read from the offsets in the serving snapshot (the snapshot is the checkpoint)."

CHANNELS = Channels(
    "indexer",
    publishes=(
        Published(INDEX_SNAPSHOTS, "A new index snapshot is in S3 and may be served."),
        Published(
            TRACKS_FAILED,
            "Dead letters: embeddings that cannot be indexed (another model, no direction, content the registry "
            "does not hold for the track, a track it never announced).",
        ),
    ),
    consumes=(
        Consumed(TRACKS_EMBEDDED, "mess-indexer", f"Vectors to index. {_WHY}"),
        Consumed(
            TRACKS_ADDED,
            "mess-indexer",
            "The registry's facts: which content each track holds, ordered by the mess-registry-sequence header; "
            f"an embedding is indexed only if it is of that content. {_WHY}",
        ),
        Consumed(TRACKS_REMOVED, "mess-indexer", f"Tracks to drop from the index. {_WHY}"),
    ),
)

if __name__ == "__main__":
    main(CHANNELS)
