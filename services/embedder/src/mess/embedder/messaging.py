"""The embedder's channels on the bus (``python -m mess.embedder.messaging`` prints its AsyncAPI document)."""

from mess.contracts.topics import TRACKS_ADDED, TRACKS_EMBEDDED, TRACKS_FAILED
from mess.runtime.channels import Channels, Consumed, Published, main

CHANNELS = Channels(
    "embedder",
    publishes=(
        Published(TRACKS_EMBEDDED, "A track's vector, pitch sequence and the model that made them."),
        Published(TRACKS_FAILED, "Dead letters: audio that cannot be decoded or embedded, poison messages."),
    ),
    consumes=(Consumed(TRACKS_ADDED, "mess-embedder", "Tracks to embed, one poll batch at a time."),),
)

if __name__ == "__main__":
    main(CHANNELS)
