"""The ingest service's channels on the bus (``python -m mess.ingest.messaging`` prints its AsyncAPI document)."""

from mess.contracts.topics import INDEX_SNAPSHOTS, TRACKS_ADDED, TRACKS_EMBEDDED, TRACKS_FAILED, TRACKS_REMOVED
from mess.runtime.channels import Channels, Consumed, Published, main

CHANNELS = Channels(
    "ingest",
    publishes=(
        Published(TRACKS_ADDED, "A track was registered (or re-announced by the reconciler) and needs embedding."),
        Published(TRACKS_REMOVED, "A track was deleted (tombstone)."),
        Published(TRACKS_FAILED, "Dead letters of the status consumer, drops and imports."),
    ),
    consumes=(
        Consumed(TRACKS_EMBEDDED, "mess-ingest-status", "Moves a track to embedded."),
        Consumed(TRACKS_FAILED, "mess-ingest-status", "Moves a track to failed, with a public reason."),
        Consumed(INDEX_SNAPSHOTS, "mess-ingest-status", "Moves every track of a verified snapshot to indexed."),
    ),
)

if __name__ == "__main__":
    main(CHANNELS)
