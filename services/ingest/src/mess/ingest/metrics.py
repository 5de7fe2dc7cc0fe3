"""The ingest service's Prometheus metrics, served at ``/metrics``.

Declared once per process (the default registry refuses duplicates); label
values are small closed sets, never track ids.
"""

from prometheus_client import Counter, Gauge, Histogram

UPLOADS = Counter("mess_ingest_uploads_total", "POST /tracks answers", ["outcome"])
UPLOAD_BYTES = Counter("mess_ingest_upload_bytes_total", "bytes of accepted uploads")
UPLOAD_SECONDS = Histogram(
    "mess_ingest_upload_seconds",
    "time to receive, store, validate and register an upload",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
UPLOADS_IN_PROGRESS = Gauge("mess_ingest_uploads_in_progress", "uploads being received, validated or registered now")
DROPS_IN_PROGRESS = Gauge(
    "mess_ingest_drops_in_progress", "dropped objects being downloaded, validated or registered now"
)
DROPPED_OBJECTS = Counter("mess_ingest_dropped_objects_total", "objects under the drop prefix handled", ["outcome"])
SQS_NOTICES = Counter("mess_ingest_sqs_notices_total", "SQS messages handled", ["outcome"])
OUTBOX_PUBLISHED = Counter("mess_ingest_outbox_published_total", "outbox events published to the broker", ["topic"])
OUTBOX_PENDING = Gauge(
    "mess_ingest_outbox_pending", "outbox events not yet published (sampled by the active relay every few seconds)"
)
RELAY_FAILURES = Counter("mess_ingest_relay_failures_total", "relay rounds that failed", ["cause"])
STATUS_EVENTS = Counter("mess_ingest_status_events_total", "status events consumed", ["event", "outcome"])
ANNOUNCED_TO_INDEXED = Histogram(
    "mess_ingest_announced_to_indexed_seconds",
    "from a track's announcement (upload, drop or re-announcement) to its first snapshot",
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600),
)
INDEXED_BUT_MISSING = Counter(
    "mess_ingest_indexed_but_missing_total",
    "tracks marked indexed that the latest snapshot did not hold (moved back to registered, re-announced)",
)
REANNOUNCED = Counter("mess_ingest_reannounced_total", "tracks re-announced by the reconciler")
