"""Event contracts shared by every mess service.

This package owns the wire format of the system: the event models, the topic
names, the track-id rule and the vector encoding. It is imported, never run,
and never imports a service.
"""

from mess.contracts.events import (
    EVENT_TYPES,
    Event,
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
from mess.contracts.ids import TRACK_ID_PATTERN, TrackId, is_track_id, track_id_from_parts
from mess.contracts.topics import TOPIC_EVENTS, Topics
from mess.contracts.vectors import Float32Vector, decode_vector, encode_vector

__all__ = [
    "EVENT_TYPES",
    "TOPIC_EVENTS",
    "TRACK_ID_PATTERN",
    "Event",
    "Float32Vector",
    "ModelIdentity",
    "RecommendRequestSummary",
    "RecommendationServed",
    "RecommendedItem",
    "SnapshotCounts",
    "SnapshotPublished",
    "Topics",
    "TrackAdded",
    "TrackEmbedded",
    "TrackFailed",
    "TrackId",
    "TrackMetadata",
    "TrackRemoved",
    "decode_vector",
    "encode_vector",
    "is_track_id",
    "track_id_from_parts",
]
