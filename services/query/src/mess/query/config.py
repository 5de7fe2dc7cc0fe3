"""Settings of the query service (environment prefix `MESS_QUERY_`).

Every knob of the service lives here; bad values fail at start-up, not on the
first request that happens to need them.
"""

import tempfile
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mess.runtime.endpoints import StackSettings


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESS_QUERY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: str = "INFO"
    access_log: bool = Field(default=False, description="one log line per request (costly at high rates)")
    stack: StackSettings = Field(default_factory=StackSettings)
    shutdown_grace_s: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="after SIGTERM, requests in flight and then the analytics flush get this long in all "
        "(Kubernetes gives 45 s, 10 of them taken by the preStop sleep)",
    )

    # --- snapshots -----------------------------------------------------------
    snapshot_cache_dir: Path | None = Field(
        default=None,
        description="where downloaded snapshot files are kept (memory-mapped from there); "
        "default: a folder per port under the system temp dir",
    )
    snapshot_poll_s: float = Field(default=30.0, gt=0, description="how often LATEST is read as a backstop")
    snapshot_events: bool = Field(default=True, description="follow SnapshotPublished on the broker")
    canary_rows: int = Field(default=3, ge=1, le=100, description="stored vectors per shard that must find themselves")
    canary_k: int = Field(default=5, ge=1, le=100, description="...within this many results")

    # --- search --------------------------------------------------------------
    search_threads: int = Field(default=2, ge=1, le=64, description="threads that run FAISS searches")
    search_concurrency: int = Field(default=8, ge=1, le=1024, description="searches admitted at once")
    faiss_omp_threads: int = Field(default=1, ge=1, le=64, description="OpenMP threads per FAISS call")
    max_pool: int = Field(default=1000, ge=1, le=10000, description="largest candidate pool a strategy may ask for")

    # --- Postgres (the track registry, read only) ----------------------------
    pg_pool_min: int = Field(default=0, ge=0)
    pg_pool_max: int = Field(default=10, ge=1, le=1000)
    pg_acquire_timeout_s: float = Field(default=0.5, gt=0, description="503 when no connection frees up in time")
    pg_command_timeout_s: float = Field(default=5.0, gt=0)
    metadata_cache_size: int = Field(default=20_000, ge=0, description="tracks kept in the in-process cache")
    metadata_cache_ttl_s: float = Field(default=30.0, ge=0)

    # --- Redis (recommendation cache) ----------------------------------------
    cache_enabled: bool = True
    cache_ttl_s: int = Field(default=3600, ge=1, description="expiry of cached recommendations")
    redis_timeout_s: float = Field(default=0.25, gt=0, description="per-command timeout; slower means 'down'")
    redis_retry_s: float = Field(default=5.0, ge=0, description="after a Redis failure, skip it this long")

    # --- analytics (RecommendationServed) ------------------------------------
    analytics_enabled: bool = True
    analytics_queue_size: int = Field(default=10_000, ge=1, description="events waiting for the broker; more drop")
    broker_retry_s: float = Field(default=5.0, gt=0, description="wait between broker (re)connection attempts")
    kafka_timeout_ms: int = Field(default=5000, ge=100, description="broker request timeout")

    # --- audio and waveforms -------------------------------------------------
    audio_redirect: bool = Field(default=False, description="307 to a presigned S3 URL instead of streaming")
    audio_url_expiry_s: int = Field(default=60, ge=1, le=3600)
    audio_chunk_bytes: int = Field(default=256 * 1024, ge=4096)

    @model_validator(mode="after")
    def _pool_bounds(self) -> "Settings":
        if self.pg_pool_min > self.pg_pool_max:
            raise ValueError(f"pg_pool_min ({self.pg_pool_min}) exceeds pg_pool_max ({self.pg_pool_max})")
        return self

    @property
    def snapshot_dir(self) -> Path:
        if self.snapshot_cache_dir is not None:
            return self.snapshot_cache_dir
        return Path(tempfile.gettempdir()) / f"mess-query-snapshots-{self.port}"
