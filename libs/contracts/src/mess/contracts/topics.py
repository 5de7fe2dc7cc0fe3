"""The one place that names each topic.

Every name can carry a prefix so that tests (and tenants sharing a cluster)
get topics of their own without any service knowing about it.
"""

from dataclasses import dataclass

from mess.contracts.events import (
    Event,
    RecommendationServed,
    SnapshotPublished,
    TrackAdded,
    TrackEmbedded,
    TrackFailed,
    TrackRemoved,
)

TRACKS_ADDED = "mess.tracks.added.v1"
TRACKS_EMBEDDED = "mess.tracks.embedded.v1"
TRACKS_REMOVED = "mess.tracks.removed.v1"
TRACKS_FAILED = "mess.tracks.failed.v1"
INDEX_SNAPSHOTS = "mess.index.snapshots.v1"
RECOMMENDATIONS_SERVED = "mess.recommendations.served.v1"

TOPIC_EVENTS: dict[str, type[Event]] = {
    TRACKS_ADDED: TrackAdded,
    TRACKS_EMBEDDED: TrackEmbedded,
    TRACKS_REMOVED: TrackRemoved,
    TRACKS_FAILED: TrackFailed,
    INDEX_SNAPSHOTS: SnapshotPublished,
    RECOMMENDATIONS_SERVED: RecommendationServed,
}

# Topics whose latest value per key is the state: replaying them rebuilds it.
COMPACTED = frozenset({TRACKS_EMBEDDED})


@dataclass(frozen=True)
class Topics:
    prefix: str = ""

    @property
    def tracks_added(self) -> str:
        return self.prefix + TRACKS_ADDED

    @property
    def tracks_embedded(self) -> str:
        return self.prefix + TRACKS_EMBEDDED

    @property
    def tracks_removed(self) -> str:
        return self.prefix + TRACKS_REMOVED

    @property
    def tracks_failed(self) -> str:
        return self.prefix + TRACKS_FAILED

    @property
    def index_snapshots(self) -> str:
        return self.prefix + INDEX_SNAPSHOTS

    @property
    def recommendations_served(self) -> str:
        return self.prefix + RECOMMENDATIONS_SERVED

    def all(self) -> list[str]:
        return [self.prefix + name for name in TOPIC_EVENTS]

    def is_compacted(self, topic: str) -> bool:
        return topic.removeprefix(self.prefix) in COMPACTED


#: Kafka header on every TrackAdded and TrackRemoved the ingest registry
#: publishes: the registry's sequence number of the announcement (its outbox
#: row id), larger for every later fact about the same track. Consumers order
#: one track's facts across the two topics by it, never by ``occurred_at``.
REGISTRY_SEQUENCE_HEADER = "mess-registry-sequence"
