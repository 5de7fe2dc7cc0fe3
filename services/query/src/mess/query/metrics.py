"""The query service's Prometheus metrics.

Each app gets its own registry so that several apps in one process (tests,
benchmarks) never collide on a metric name.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class QueryMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Histogram(
            "mess_query_request_seconds",
            "HTTP request duration by route template and status",
            ["route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.recommendations = Counter(
            "mess_query_recommendations_total",
            "recommendations served, by strategy and whether the cache answered",
            ["strategy", "cached"],
            registry=r,
        )
        self.computed = Counter(
            "mess_query_recommendations_computed_total",
            "recommendations actually computed (cache misses after single-flight)",
            ["strategy"],
            registry=r,
        )
        self.degraded = Counter(
            "mess_query_recommendations_degraded_total",
            "recommendations answered from the snapshot alone because the catalog (Postgres) was unavailable",
            registry=r,
        )
        self.search_seconds = Histogram(
            "mess_query_search_seconds",
            "FAISS search over every shard plus the merge",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.strategy_refused = Counter(
            "mess_query_strategy_refused_total",
            "requests for an expensive strategy refused (503) because its bounded queue was full",
            registry=r,
        )
        self.rate_limited = Counter(
            "mess_query_rate_limited_total", "reads refused (429) by the per-client rate limit", registry=r
        )
        self.cache_rejected = Counter(
            "mess_query_cache_rejected_total",
            "cache entries ignored because their authentication tag did not verify",
            registry=r,
        )
        self.waveform_renders = Counter(
            "mess_query_waveform_renders_total", "PNG waveform renders, by outcome", ["outcome"], registry=r
        )
        self.snapshot_swaps = Counter("mess_query_snapshot_swaps_total", "snapshots swapped in", registry=r)
        self.snapshot_refused = Counter(
            "mess_query_snapshot_refused_total", "snapshots refused (old one kept serving)", ["reason"], registry=r
        )
        self.snapshot_load_errors = Counter(
            "mess_query_snapshot_load_errors_total", "snapshot loads that failed on I/O and will be retried", registry=r
        )
        self.snapshot_load_seconds = Histogram(
            "mess_query_snapshot_load_seconds",
            "download, verify, load and canary of one snapshot",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.snapshot_vectors = Gauge("mess_query_snapshot_vectors", "vectors in the serving snapshot", registry=r)
        self.snapshot_version = Gauge(
            "mess_query_snapshot_version", "serving snapshot version (as a number)", registry=r
        )
        # The time the serving snapshot was built, so "how stale is the index" is time() minus this,
        # whatever the indexer is doing (a stuck indexer shows as a growing age, not as silence).
        self.snapshot_created = Gauge(
            "mess_query_snapshot_created_timestamp_seconds",
            "when the serving snapshot was built (Unix time); its age is time() - this",
            registry=r,
        )
        self.snapshot_events_bad = Counter(
            "mess_query_snapshot_events_malformed_total", "SnapshotPublished messages that did not parse", registry=r
        )
        self.cache_errors = Counter(
            "mess_query_cache_errors_total", "Redis failures (requests answered uncached)", registry=r
        )
        self.metadata_cache = Counter(
            "mess_query_metadata_cache_total", "in-process track metadata cache lookups", ["result"], registry=r
        )
        self.pg_busy = Counter(
            "mess_query_postgres_busy_total", "requests refused because no Postgres connection freed up", registry=r
        )
        self.analytics_published = Counter(
            "mess_query_analytics_published_total", "RecommendationServed events handed to the broker", registry=r
        )
        self.analytics_dropped = Counter(
            "mess_query_analytics_dropped_total", "RecommendationServed events dropped", ["reason"], registry=r
        )
