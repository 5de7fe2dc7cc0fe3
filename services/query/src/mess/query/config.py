"""Settings of the query service (environment prefix `MESS_QUERY_`).

Every knob of the service lives here; bad values fail at start-up, not on the
first request that happens to need them.
"""

import tempfile
from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mess.runtime.access import KeyEntry, parse_entries, parse_origins
from mess.runtime.endpoints import StackSettings

# A presigned URL works for anyone who holds it until it expires: keep that short.
MAX_AUDIO_URL_EXPIRY_S = 900


class Settings(BaseSettings):
    # Errors name the setting, never echo its value: a value may be a DSN with a password.
    model_config = SettingsConfigDict(env_prefix="MESS_QUERY_", extra="ignore", hide_input_in_errors=True)

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
    audio_url_expiry_s: int = Field(
        default=60, ge=1, le=MAX_AUDIO_URL_EXPIRY_S, description="lifetime of a presigned audio URL"
    )
    audio_chunk_bytes: int = Field(default=256 * 1024, ge=4096)

    # --- access --------------------------------------------------------------
    require_read_key: bool = Field(default=False, description="every route but health, metrics and docs needs a key")
    read_api_key_hashes: str = Field(
        default="", description="`label:sha256hex` entries (comma- or newline-separated) of the read keys"
    )
    read_api_keys_file: Path | None = Field(
        default=None, description="a file of `label:sha256hex` lines, re-read when it changes"
    )
    api_keys_check_s: float = Field(
        default=1.0, ge=0, le=300, description="how often the keys file is checked for a change (0: every request)"
    )
    cors_origins: str = Field(
        default="", description="comma-separated browser origins allowed to call the API; empty: no CORS at all"
    )

    @model_validator(mode="after")
    def _pool_bounds(self) -> "Settings":
        if self.pg_pool_min > self.pg_pool_max:
            raise ValueError(f"pg_pool_min ({self.pg_pool_min}) exceeds pg_pool_max ({self.pg_pool_max})")
        if self.require_read_key and not self.read_key_entries() and self.read_api_keys_file is None:
            raise ValueError(
                "MESS_QUERY_REQUIRE_READ_KEY is on, but neither MESS_QUERY_READ_API_KEY_HASHES "
                "nor MESS_QUERY_READ_API_KEYS_FILE names a key"
            )
        return self

    @field_validator("read_api_key_hashes")
    @classmethod
    def _digests(cls, value: str, info: ValidationInfo) -> str:
        # KeyConfigError is a ValueError, so pydantic reports it as this setting's error.
        parse_entries(value, f"MESS_QUERY_{(info.field_name or '').upper()}")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        parse_origins(value)
        return value

    @field_validator("read_api_keys_file", mode="before")
    @classmethod
    def _empty_path_means_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    def read_key_entries(self) -> tuple[KeyEntry, ...]:
        return parse_entries(self.read_api_key_hashes, "MESS_QUERY_READ_API_KEY_HASHES")

    @property
    def cors_origin_list(self) -> list[str]:
        return parse_origins(self.cors_origins)

    @property
    def snapshot_dir(self) -> Path:
        if self.snapshot_cache_dir is not None:
            return self.snapshot_cache_dir
        return Path(tempfile.gettempdir()) / f"mess-query-snapshots-{self.port}"
