"""Settings of the ingest service (environment prefix `MESS_INGEST_`).

Every knob of the service lives here; bad values fail at start-up, not on the
first request that happens to need them.
"""

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mess.runtime.endpoints import StackSettings

# The key `make up` works with out of the box. It is public (it is in the
# README), so production mode refuses it.
DEVELOPMENT_API_KEY = "mess-dev-key"
_PLACEHOLDER_KEYS = frozenset({DEVELOPMENT_API_KEY, "changeme", "change-me", "secret", "password", "test", "dev"})
_MIN_PRODUCTION_KEY_CHARS = 16
# One CopyObject call moves at most 5 GiB; larger audio would need a multipart copy.
_MAX_COPYABLE_BYTES = 5 * 1024**3
_S3_MIN_PART_BYTES = 5 * 1024**2
DEFAULT_STATUS_GROUP = "mess-ingest-status"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESS_INGEST_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8001, ge=1, le=65535)
    log_level: str = "INFO"
    stack: StackSettings = Field(default_factory=StackSettings)
    shutdown_grace_s: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="after SIGTERM, in-flight uploads, drops and status updates get this long to finish and "
        "commit, and the relay to publish them; then what is left is cancelled (Kubernetes gives 45 s, "
        "10 of them taken by the preStop sleep)",
    )

    # --- access ----------------------------------------------------------------
    environment: Literal["development", "production"] = Field(
        default="development", description="production refuses an empty or placeholder API key"
    )
    api_keys: SecretStr = Field(
        default=SecretStr(DEVELOPMENT_API_KEY),
        description="comma-separated keys accepted in the X-API-Key header of writes",
    )

    # --- what an upload may be ------------------------------------------------
    max_upload_bytes: int = Field(default=200 * 1024**2, gt=0, le=_MAX_COPYABLE_BYTES)
    max_drop_bytes: int = Field(
        default=1024**3,
        gt=0,
        le=_MAX_COPYABLE_BYTES,
        description="largest dropped object ingested (dataset WAVs outgrow the upload limit)",
    )
    min_duration_s: float = Field(default=1.0, ge=0)
    max_duration_s: float = Field(default=3600.0, gt=0)
    silence_peak: float = Field(
        default=1e-4, ge=0, lt=1, description="audio whose absolute peak stays below this (~-80 dBFS) is silent"
    )
    max_field_chars: int = Field(default=2000, ge=1, description="longest metadata form field accepted")
    upload_concurrency: int = Field(
        default=8, ge=1, le=1024, description="uploads received at once; more wait (their bodies stay in TCP buffers)"
    )
    spool_memory_bytes: int = Field(
        default=1024**2, ge=0, description="an upload is kept in memory up to this size, then spooled to disk"
    )
    s3_part_bytes: int = Field(default=8 * 1024**2, ge=_S3_MIN_PART_BYTES, description="multipart upload part size")

    # --- Postgres -------------------------------------------------------------
    pg_pool_min: int = Field(default=1, ge=0)
    pg_pool_max: int = Field(default=10, ge=1, le=1000)
    pg_acquire_timeout_s: float = Field(default=5.0, gt=0, description="503 when no connection frees up in time")
    pg_command_timeout_s: float = Field(default=30.0, gt=0)

    # --- the outbox relay -----------------------------------------------------
    relay_enabled: bool = True
    relay_poll_s: float = Field(default=1.0, gt=0, description="backstop poll when no NOTIFY arrives")
    relay_batch: int = Field(default=200, ge=1, le=10_000, description="outbox rows published per round")
    relay_retry_max_s: float = Field(
        default=5.0, gt=0, description="longest wait between attempts while the broker is down"
    )
    kafka_timeout_ms: int = Field(default=5000, ge=100, description="broker request timeout")
    outbox_retention_h: float = Field(default=168.0, gt=0, description="published outbox rows are deleted after this")

    # --- S3 auto-ingest -------------------------------------------------------
    drop_worker_enabled: bool = True
    drop_concurrency: int = Field(default=2, ge=1, le=64, description="dropped objects validated at once")
    sqs_wait_s: int = Field(default=10, ge=0, le=20, description="SQS long-poll wait")
    sqs_visibility_s: int = Field(default=300, ge=1, le=43200, description="how long a notice is hidden while handled")
    sqs_max_receives: int = Field(
        default=5, ge=1, description="a notice that failed for transient reasons this often is dead-lettered"
    )
    drop_scan_interval_s: float = Field(
        default=300.0, ge=0, description="reconcile scan of the drop prefix for missed notices; 0 turns it off"
    )

    # --- track status (TrackEmbedded, TrackFailed, SnapshotPublished) -------
    status_enabled: bool = True
    status_group_id: str | None = Field(
        default=None,
        min_length=1,
        description="status consumer group, used as given; unset: the topic prefix + mess-ingest-status",
    )
    status_attempts: int = Field(default=4, ge=1, description="tries per event before it is dead-lettered")

    # --- reconciler -----------------------------------------------------------
    reconciler_enabled: bool = True
    reconcile_interval_s: float = Field(default=60.0, gt=0)
    reconcile_grace_s: float = Field(default=900.0, ge=0, description="how long a track may stay unindexed")
    reconcile_batch: int = Field(default=100, ge=1, description="most tracks re-announced per interval")

    @model_validator(mode="after")
    def _consistent(self) -> "Settings":
        if self.pg_pool_min > self.pg_pool_max:
            raise ValueError(f"pg_pool_min ({self.pg_pool_min}) exceeds pg_pool_max ({self.pg_pool_max})")
        if self.min_duration_s >= self.max_duration_s:
            raise ValueError(
                f"min_duration_s ({self.min_duration_s}) must be below max_duration_s ({self.max_duration_s})"
            )
        if self.environment == "production":
            keys = self.api_key_list()
            if not keys:
                raise ValueError("MESS_INGEST_API_KEYS is empty; production mode needs at least one key")
            weak = [k for k in keys if k.lower() in _PLACEHOLDER_KEYS or len(k) < _MIN_PRODUCTION_KEY_CHARS]
            if weak:
                raise ValueError(
                    f"MESS_INGEST_API_KEYS holds {len(weak)} placeholder or short key(s); production mode needs "
                    f"keys of at least {_MIN_PRODUCTION_KEY_CHARS} characters that are not a known default"
                )
        return self

    def api_key_list(self) -> list[str]:
        return [key.strip() for key in self.api_keys.get_secret_value().split(",") if key.strip()]

    @property
    def status_consumer_group(self) -> str:
        """The status consumer's group; by default it carries the topic prefix, so tests and tenants never share one."""
        return self.status_group_id or f"{self.stack.topic_prefix}{DEFAULT_STATUS_GROUP}"
