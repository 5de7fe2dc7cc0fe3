"""The indexer's Prometheus metrics, on a registry of their own so that two
indexers in one process (tests) never collide."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BUILD_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class IndexerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.vectors = Gauge("mess_indexer_vectors", "Vectors held (all shards)", registry=r)
        self.shards = Gauge("mess_indexer_shards", "Shard count", registry=r)
        self.dirty_shards = Gauge("mess_indexer_dirty_shards", "Shards changed since the last snapshot", registry=r)
        self.pending_changes = Gauge(
            "mess_indexer_pending_changes", "Changes not yet in a published snapshot", registry=r
        )
        self.snapshot_version = Gauge(
            "mess_indexer_snapshot_version", "Version of the snapshot LATEST points at, as a number", registry=r
        )
        self.snapshot_build_seconds = Histogram(
            "mess_indexer_snapshot_build_seconds",
            "Time to build, tune and serialise the changed shards of one snapshot",
            buckets=_BUILD_BUCKETS,
            registry=r,
        )
        self.snapshot_upload_seconds = Histogram(
            "mess_indexer_snapshot_upload_seconds",
            "Time to upload one snapshot's files, manifest and pointer",
            buckets=_BUILD_BUCKETS,
            registry=r,
        )
        self.snapshot_uploaded_bytes = Counter(
            "mess_indexer_snapshot_uploaded_bytes", "Bytes of shard files uploaded", registry=r
        )
        self.snapshots_published = Counter(
            "mess_indexer_snapshots_published", "Snapshots published by this process", registry=r
        )
        self.snapshot_failures = Counter(
            "mess_indexer_snapshot_failures",
            "Snapshot publishes that failed (and were retried)",
            ["reason"],
            registry=r,
        )
        self.rebuilt_shards = Counter("mess_indexer_rebuilt_shards", "Shard indexes built", registry=r)
        self.shard_recall = Gauge(
            "mess_indexer_shard_recall_at_10",
            "recall@10 against exact search measured when the shard was last tuned",
            ["shard"],
            registry=r,
        )
        self.events = Counter(
            "mess_indexer_events",
            "Events consumed, by topic and what applying them did",
            ["topic", "outcome"],
            registry=r,
        )
        self.dead_letters = Counter(
            "mess_indexer_dead_letters", "Messages sent to the dead-letter topic", ["error_kind"], registry=r
        )
        self.lag = Gauge(
            "mess_indexer_consumer_lag", "Messages behind the end of each consumed topic", ["topic"], registry=r
        )
        self.adoptions = Counter(
            "mess_indexer_adopted_snapshots", "Snapshots published by another writer and loaded", registry=r
        )
        self.logs_rewound = Counter(
            "mess_indexer_logs_rewound",
            "partitions read again from their start because the log ended before our position (broker data lost)",
            registry=r,
        )
        self.registry_catch_ups = Counter(
            "mess_indexer_registry_catch_ups",
            "times the added topic was read to its end before judging an embedding its facts did not vouch for",
            registry=r,
        )
