"""Settings of the ingest service (environment prefix `MESS_INGEST_`).

Every knob of the service lives here; bad values fail at start-up, not on the
first request that happens to need them.
"""

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mess.contracts.limits import MAX_AUDIO_BYTES, MAX_METADATA_BYTES, SILENCE_PEAK
from mess.runtime.access import KeyEntry, digest_key, parse_entries, parse_origins, plaintext_entries
from mess.runtime.endpoints import StackSettings

# The key `make up` works with out of the box. It is public (it is in the
# README), so production mode refuses it.
DEVELOPMENT_API_KEY = "mess-dev-key"
_PLACEHOLDER_KEYS = frozenset({DEVELOPMENT_API_KEY, "changeme", "change-me", "secret", "password", "test", "dev"})
# Production refuses these wherever they appear, by digest, so a keys file cannot bring them back either.
REFUSED_KEYS = {digest_key(key): "a public development or placeholder key" for key in _PLACEHOLDER_KEYS}
_S3_MIN_PART_BYTES = 5 * 1024**2
DEFAULT_STATUS_GROUP = "mess-ingest-status"


class Settings(BaseSettings):
    # Errors name the setting, never echo its value: a value may be a key or a DSN with a password.
    model_config = SettingsConfigDict(env_prefix="MESS_INGEST_", extra="ignore", hide_input_in_errors=True)

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
        default="development",
        description="production takes key digests only, refuses to start without one, and refuses placeholders",
    )
    api_keys: SecretStr | None = Field(
        default=None,
        description="development only: comma-separated keys for writes, hashed at start; unset with no other key "
        "source: the development key",
    )
    api_key_hashes: str = Field(
        default="", description="`label:sha256hex` entries (comma- or newline-separated) of the keys for writes"
    )
    api_keys_file: Path | None = Field(
        default=None, description="a file of `label:sha256hex` lines for writes, re-read when it changes"
    )
    api_keys_check_s: float = Field(
        default=1.0, ge=0, le=300, description="how often the keys files are checked for a change (0: every request)"
    )
    require_read_key: bool = Field(default=False, description="GET routes need a read or a write key too")
    read_api_key_hashes: str = Field(default="", description="`label:sha256hex` entries of keys for GET routes")
    read_api_keys_file: Path | None = Field(default=None, description="a keys file for GET routes")
    write_rate_per_s: float = Field(
        default=20.0, ge=0, description="writes per second per key, on average, in each replica; 0: no limit"
    )
    write_burst: int = Field(default=200, ge=1, description="writes per key accepted at once before the rate applies")
    cors_origins: str = Field(
        default="", description="comma-separated browser origins allowed to call the API; empty: no CORS at all"
    )

    # --- what an upload may be ------------------------------------------------
    # Neither may exceed what the embedder fetches (MAX_AUDIO_BYTES): a track accepted here and refused
    # there for its size would be registered only to fail.
    max_upload_bytes: int = Field(default=200 * 1024**2, gt=0, le=MAX_AUDIO_BYTES)
    max_drop_bytes: int = Field(
        default=MAX_AUDIO_BYTES,
        gt=0,
        le=MAX_AUDIO_BYTES,
        description="largest dropped object ingested (dataset WAVs outgrow the upload limit)",
    )
    min_duration_s: float = Field(default=1.0, ge=0)
    max_duration_s: float = Field(default=3600.0, gt=0)
    silence_peak: float = Field(
        default=SILENCE_PEAK,
        ge=0,
        lt=1,
        description="audio whose mono peak over its first 900 s stays below this (~-80 dBFS) is silent; keep it "
        "equal to the embedder's, or tracks pass here and fail there",
    )
    max_field_chars: int = Field(default=2000, ge=1, description="longest metadata form field accepted")
    max_metadata_bytes: int = Field(
        default=MAX_METADATA_BYTES,
        ge=1024,
        le=MAX_METADATA_BYTES,
        description="largest metadata (as JSON) of a track, all fields together, so every TrackAdded fits the bus",
    )
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
            if self.api_keys is not None and self.api_keys.get_secret_value().strip():
                raise ValueError(
                    "MESS_INGEST_API_KEYS holds keys themselves; production takes only their digests: "
                    "MESS_INGEST_API_KEYS_FILE or MESS_INGEST_API_KEY_HASHES (mint a key with `mess-dev keys new`)"
                )
            # The file is read at start-up (it may be mounted only in the pod); here it only has to be named.
            if not self.write_key_entries() and self.api_keys_file is None:
                raise ValueError("no API key: production needs MESS_INGEST_API_KEYS_FILE or MESS_INGEST_API_KEY_HASHES")
            refused = [e.label for e in self.write_key_entries() + self.read_key_entries() if e.digest in REFUSED_KEYS]
            if refused:
                raise ValueError(f"production refuses the public development or placeholder key(s) {refused}")
        if self.require_read_key and not (
            self.write_key_entries() or self.read_key_entries() or self.api_keys_file or self.read_api_keys_file
        ):
            raise ValueError("MESS_INGEST_REQUIRE_READ_KEY is on, but no key is configured that could read")
        return self

    @field_validator("api_key_hashes", "read_api_key_hashes")
    @classmethod
    def _digests(cls, value: str, info: ValidationInfo) -> str:
        # KeyConfigError is a ValueError, so pydantic reports it as this setting's error.
        parse_entries(value, f"MESS_INGEST_{(info.field_name or '').upper()}")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        parse_origins(value)
        return value

    @field_validator("api_keys_file", "read_api_keys_file", mode="before")
    @classmethod
    def _empty_path_means_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    def write_key_entries(self) -> tuple[KeyEntry, ...]:
        """The fixed write keys: digests given, plaintext keys hashed, or the development key when development
        mode names no key source at all."""
        entries = parse_entries(self.api_key_hashes, "MESS_INGEST_API_KEY_HASHES")
        if self.api_keys is not None:
            entries += plaintext_entries(self.api_keys.get_secret_value(), "MESS_INGEST_API_KEYS")
        if not entries and self.api_keys is None and self.api_keys_file is None and self.environment == "development":
            entries = (KeyEntry("development", digest_key(DEVELOPMENT_API_KEY)),)
        return entries

    def read_key_entries(self) -> tuple[KeyEntry, ...]:
        return parse_entries(self.read_api_key_hashes, "MESS_INGEST_READ_API_KEY_HASHES")

    @property
    def cors_origin_list(self) -> list[str]:
        return parse_origins(self.cors_origins)

    @property
    def status_consumer_group(self) -> str:
        """The status consumer's group; by default it carries the topic prefix, so tests and tenants never share one."""
        return self.status_group_id or f"{self.stack.topic_prefix}{DEFAULT_STATUS_GROUP}"
