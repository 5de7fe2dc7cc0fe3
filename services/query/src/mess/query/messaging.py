"""The query service's channels on the bus (``python -m mess.query.messaging`` prints its AsyncAPI document)."""

from mess.contracts.topics import INDEX_SNAPSHOTS, RECOMMENDATIONS_SERVED, TRACKS_FAILED
from mess.runtime.channels import Channels, Consumed, Published, main

CHANNELS = Channels(
    "query",
    publishes=(
        Published(
            RECOMMENDATIONS_SERVED,
            "A recommendation was served (/recommend, or /search by tracks; query_kind says which): request, "
            "filters, results, snapshot, latency, cache. Searches by clip or vector publish nothing.",
        ),
        Published(TRACKS_FAILED, "Dead letters: snapshot announcements that were refused."),
    ),
    consumes=(Consumed(INDEX_SNAPSHOTS, None, "Every replica follows every announcement from the end of the topic."),),
)

if __name__ == "__main__":
    main(CHANNELS)
