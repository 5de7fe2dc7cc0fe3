"""The embedder's Prometheus metrics (served at /metrics from the default registry).

Declared once per process: prometheus-client refuses a second metric of the
same name, and every app built in one process (tests build several) shares
these.
"""

from prometheus_client import Counter, Gauge, Histogram

TRACKS = Counter("mess_embedder_tracks_total", "TrackAdded events settled, by outcome", ["outcome"])
FAILURES = Counter("mess_embedder_failures_total", "tracks dead-lettered, by error kind", ["kind"])
AUDIO_SECONDS = Counter(
    "mess_embedder_audio_seconds_total", "seconds of audio embedded (rate() of it is the throughput)"
)
CHUNKS = Counter("mess_embedder_chunks_total", "chunks embedded")
BATCH_CHUNKS = Histogram(
    "mess_embedder_batch_chunks", "chunks per model forward", buckets=(1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 256)
)
FORWARD_SECONDS = Histogram(
    "mess_embedder_forward_seconds",
    "wall time of one model forward",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
POLL_TRACKS = Histogram(
    "mess_embedder_poll_tracks", "TrackAdded events per poll batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128)
)
POLL_SECONDS = Histogram(
    "mess_embedder_poll_batch_seconds",
    "wall time from a poll batch's arrival to its commit (must stay under max_poll_interval_ms)",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
RETRIES = Counter("mess_embedder_retries_total", "transient errors retried, by operation", ["operation"])
LAG = Gauge("mess_embedder_consumer_lag", "messages behind the end of the partition", ["topic", "partition"])
MODEL = Gauge(
    "mess_embedder_model_info", "the loaded model (value 1)", ["name", "revision", "dim", "pooling", "device"]
)
CLIPS = Counter(
    "mess_embedder_clips_total",
    "POST /internal/embed answers (search by example), by outcome: embedded or the refusal's kind",
    ["outcome"],
)
