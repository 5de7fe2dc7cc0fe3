"""Settings of the query service (environment prefix `MESS_QUERY_`).

Every knob of the service lives here; bad values fail at start-up, not on the
first request that happens to need them.
"""

import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mess.contracts.clips import DEVELOPMENT_TOKEN, shared_token, token_problem
from mess.query.filters import FilterLimits
from mess.query.strategies import Limits
from mess.runtime.access import KeyEntry, parse_entries, parse_origins
from mess.runtime.endpoints import StackSettings
from mess.runtime.guards import ClientLimits

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
    # Cost bounds (issue 14): a request's strategy is estimated in floating-point
    # operations before it runs; k-means at k=100 over 1000 MERT vectors is ~2e9 per run.
    max_strategy_work: float = Field(
        default=1e9, gt=0, description="estimated operations one recommendation's strategy may cost; more is a 422"
    )
    strategy_threads: int = Field(
        default=1,
        ge=1,
        le=64,
        description="threads for expensive strategies (diverse, complementary), apart "
        "from the search threads so they never starve plain searches",
    )
    strategy_queue: int = Field(
        default=4, ge=1, le=1024, description="expensive strategies running at once; others wait up to strategy_wait_s"
    )
    strategy_wait_s: float = Field(
        default=1.0, ge=0, description="how long an expensive strategy may wait for a slot before a 503"
    )
    max_batch_work: float = Field(
        default=4e9, gt=0, description="estimated operations one /recommend/batch may cost in all; more is a 422"
    )
    batch_deadline_s: float = Field(
        default=10.0, gt=0, description="a batch's items not answered by then get status 503 (budget spent)"
    )
    batch_concurrency: int = Field(default=4, ge=1, le=100, description="items of one batch computed at once")
    # The second stage (issue 15): versions of the reference's work among FAISS's top K come first.
    version_rerank: bool = Field(
        default=True, description="align pitch sequences of the top candidates so versions of the work come first"
    )
    version_candidates: int = Field(
        default=50, ge=1, le=200, description="K: candidates aligned per recommendation (cost grows with it)"
    )

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
    cache_hmac_key: SecretStr | None = Field(
        default=None,
        description="key that authenticates cache entries (HMAC-SHA256); an entry whose tag does not verify "
        "is ignored and recomputed. Unset: entries are still checked to be recommendation bodies, but anyone "
        "who can write Redis chooses the answers (see the README's trust model)",
    )

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
    media_s3_connections: int = Field(
        default=32, ge=1, le=1000, description="S3 connections for /audio and /waveform, apart from snapshot loading"
    )
    waveform_render_concurrency: int = Field(
        default=2, ge=1, le=64, description="PNG waveforms drawn at once, off the event loop; more wait"
    )
    waveform_render_cache: int = Field(default=256, ge=0, description="rendered PNG waveforms kept in memory")

    # --- search by example (POST /search) -------------------------------------
    environment: Literal["development", "production"] = Field(
        default="development",
        description="production refuses to start without the embedder token, and refuses the development one",
    )
    embedder_url: str = Field(
        default="http://127.0.0.1:8002",
        description="the embedder's base URL, for clips (its internal embed endpoint); empty: clip search is off",
    )
    embedder_token: SecretStr | None = Field(
        default=None,
        description="the bearer token the embedder checks (MESS_EMBEDDER_INTERNAL_TOKEN's value); unset with no "
        "file: the public development token (development only)",
    )
    embedder_token_file: Path | None = Field(default=None, description="a file holding the token (a mounted Secret)")
    embedder_timeout_s: float = Field(
        default=30.0, gt=0, description="longest wait for the embedder's answer to one clip; then a 503"
    )
    embedder_concurrency: int = Field(
        default=4, ge=1, le=256, description="clips sent to the embedder at once from this replica; one more is a 503"
    )
    clip_max_bytes: int = Field(default=32 * 1024**2, gt=0, description="largest clip upload; more is a 413")
    clip_max_seconds: float = Field(default=60.0, gt=0, description="longest clip searched by; longer is a 422")
    search_json_max_bytes: int = Field(default=1024**2, gt=0, description="largest JSON body of POST /search")
    filter_max_ids: int = Field(
        default=20_000,
        ge=1,
        le=1_000_000,
        description="a filter matching at most this many tracks is searched exactly over them; a broader one "
        "by over-fetching",
    )
    filter_max_fetch: int = Field(
        default=20_000,
        ge=1,
        le=1_000_000,
        description="most candidates a broad filter's over-fetch looks at before answering with fewer than k",
    )

    # --- slow and greedy clients (mess.runtime.guards) -------------------------
    header_timeout_s: float = Field(default=10.0, gt=0, description="from a request's first byte to its last header")
    body_idle_s: float = Field(default=10.0, gt=0, description="longest wait for the next piece of a request body")
    body_grace_s: float = Field(default=5.0, ge=0, description="before min_body_rate applies")
    min_body_rate: float = Field(default=8192.0, ge=0, description="bytes a second a request body must average")
    send_idle_s: float = Field(default=30.0, gt=0, description="longest a response chunk may wait for the client")
    connections_per_client: int = Field(default=64, ge=1, description="open connections from one address")
    requests_per_client: int = Field(default=32, ge=1, description="requests in flight from one address")

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
    read_rate_per_s: float = Field(
        default=0.0, ge=0, description="reads a second per client (API key, else address) on average; 0: no limit"
    )
    read_burst: int = Field(default=50, ge=1, description="reads a client may make at once before the rate applies")
    cors_origins: str = Field(
        default="", description="comma-separated browser origins allowed to call the API; empty: no CORS at all"
    )

    @model_validator(mode="after")
    def _pool_bounds(self) -> "Settings":
        if self.pg_pool_min > self.pg_pool_max:
            raise ValueError(f"pg_pool_min ({self.pg_pool_min}) exceeds pg_pool_max ({self.pg_pool_max})")
        if self.environment == "production" and self.embedder_url:
            # Read here so a missing or unreadable file stops the start, not the first clip.
            token = self._embedder_token()
            if token is None:
                raise ValueError(
                    "no embedder token: production needs MESS_QUERY_EMBEDDER_TOKEN or MESS_QUERY_EMBEDDER_TOKEN_FILE "
                    "(the embedder's MESS_EMBEDDER_INTERNAL_TOKEN), or an empty MESS_QUERY_EMBEDDER_URL"
                )
            problem = token_problem(token)
            if problem is not None:
                raise ValueError(f"production refuses this embedder token: {problem}")
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

    @field_validator("read_api_keys_file", "embedder_token_file", mode="before")
    @classmethod
    def _empty_path_means_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    def _embedder_token(self) -> str | None:
        value = self.embedder_token.get_secret_value() if self.embedder_token is not None else None
        return shared_token(value, self.embedder_token_file)

    def clip_token(self) -> str:
        """The token presented to the embedder (read at start-up; production has refused a missing one)."""
        return self._embedder_token() or DEVELOPMENT_TOKEN

    def filter_limits(self) -> FilterLimits:
        return FilterLimits(max_ids=self.filter_max_ids, max_fetch=self.filter_max_fetch)

    def read_key_entries(self) -> tuple[KeyEntry, ...]:
        return parse_entries(self.read_api_key_hashes, "MESS_QUERY_READ_API_KEY_HASHES")

    def client_limits(self) -> ClientLimits:
        return ClientLimits(
            header_timeout_s=self.header_timeout_s,
            body_idle_s=self.body_idle_s,
            body_grace_s=self.body_grace_s,
            min_body_rate=self.min_body_rate,
            send_idle_s=self.send_idle_s,
            connections_per_client=self.connections_per_client,
            requests_per_client=self.requests_per_client,
        )

    def strategy_limits(self) -> Limits:
        return Limits(max_pool=self.max_pool, max_work=self.max_strategy_work)

    @property
    def cors_origin_list(self) -> list[str]:
        return parse_origins(self.cors_origins)

    @property
    def snapshot_dir(self) -> Path:
        if self.snapshot_cache_dir is not None:
            return self.snapshot_cache_dir
        return Path(tempfile.gettempdir()) / f"mess-query-snapshots-{self.port}"
