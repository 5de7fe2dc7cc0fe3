"""Settings of the embedder service (environment prefix `MESS_EMBEDDER_`)."""

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mess.contracts.clips import DEVELOPMENT_TOKEN, shared_token, token_problem
from mess.contracts.limits import MAX_CHANNELS, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from mess.embedder.audio import AudioLimits
from mess.runtime.endpoints import StackSettings

DEFAULT_GROUP = "mess-embedder"


class Settings(BaseSettings):
    # Errors name the setting, never echo its value: a value may be the internal token.
    model_config = SettingsConfigDict(env_prefix="MESS_EMBEDDER_", extra="ignore", hide_input_in_errors=True)

    host: str = "127.0.0.1"
    port: int = 8002
    log_level: str = "INFO"
    stack: StackSettings = Field(default_factory=StackSettings)
    environment: Literal["development", "production"] = Field(
        default="development",
        description="production refuses to start without an internal token, and refuses the development one",
    )

    # --- the model ----------------------------------------------------------
    backend: Literal["dsp", "mert"] = Field(default="dsp", description="dsp (CPU, no weights) or mert")
    model_dir: Path | None = Field(default=None, description="MERT model directory (config.json + weights)")
    model_name: str | None = Field(default=None, description="name in ModelIdentity; default: the checkpoint's")
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N (mert)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto: bfloat16 on CUDA, float32 on CPU (mert)"
    )
    layers: str = Field(
        default="all", description="mert layers to pool: all, last, 7, 4,5,6 or 4-8; 0 = transformer input"
    )
    layer_weights: list[float] | None = Field(default=None, description="weights for the chosen layers (mert)")
    dsp_weights: dict[str, float] | None = Field(default=None, description="DSP block weights, JSON")

    # --- chunking and batching ---------------------------------------------
    chunk_seconds: float | None = Field(default=None, gt=0, description="default: the backend's (5 s)")
    hop_seconds: float | None = Field(default=None, gt=0, description="default: the chunk length (no overlap)")
    batch_size: int = Field(default=32, ge=1, description="chunks per model forward")
    batch_wait_ms: int = Field(default=25, ge=0, description="how long a partial batch waits for more chunks")
    max_tracks_per_poll: int = Field(default=16, ge=1, description="TrackAdded events taken per poll")
    poll_wait_ms: int = Field(default=500, ge=1, description="how long a poll waits to fill up")
    track_concurrency: int = Field(default=4, ge=1, description="tracks fetched and decoded at once")
    decode_threads: int = Field(default=2, ge=1)

    # --- the consumer -------------------------------------------------------
    group_id: str | None = Field(
        default=None,
        description="consumer group, used as given; unset: the topic prefix + mess-embedder",
    )
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    # Must exceed the slowest poll batch: max_tracks_per_poll tracks of
    # max_audio_seconds each through the model. See the README's sizing note.
    max_poll_interval_ms: int = Field(default=900_000, ge=10_000)
    session_timeout_ms: int = Field(default=30_000, ge=6_000)
    heartbeat_interval_ms: int = Field(default=3_000, ge=500)

    # --- shutdown -------------------------------------------------------------
    # Kubernetes gives the pod 120 s from the start of its 5 s preStop sleep
    # (deploy/k8s/base/embedder.yaml); 100 s leaves the rest for closing the
    # clients before a SIGKILL could come.
    shutdown_grace_s: int = Field(
        default=100,
        ge=1,
        description="after SIGTERM: how long the in-flight poll batch may take to finish and commit",
    )

    # --- retries --------------------------------------------------------------
    fetch_attempts: int = Field(default=5, ge=1, description="S3 reads before a transient error is dead-lettered")
    publish_attempts: int = Field(default=5, ge=1, description="broker sends before the poll batch is retried")
    retry_base_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=10.0, gt=0)

    # --- input limits -------------------------------------------------------
    min_audio_seconds: float = Field(default=1.0, gt=0)
    max_audio_seconds: float = Field(default=900.0, gt=0, description="longer audio is embedded from its start")
    max_audio_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    waveform_pairs: int = Field(default=2000, ge=10)
    # Decoded memory is bounded by samples, channels and rate, not by seconds:
    # the header of a 2.8 MB FLAC can claim 655,350 Hz (see the README's sizing note).
    min_sample_rate: int = Field(default=MIN_SAMPLE_RATE, ge=1, description="lower rates are refused as a decode error")
    max_sample_rate: int = Field(
        default=MAX_SAMPLE_RATE, ge=1, description="higher rates are refused as a decode error"
    )
    max_channels: int = Field(
        default=MAX_CHANNELS, ge=1, le=1024, description="more channels are refused as a decode error"
    )
    max_decoded_samples: int = Field(
        default=900 * 48_000, ge=1, description="mono samples kept at the file's rate; longer audio is cut"
    )

    # --- clips: the internal embed endpoint (search by example) ------------------
    internal_token: SecretStr | None = Field(
        default=None,
        description="the bearer token the query service presents on POST /internal/embed; unset with no file: "
        "the public development token (development only)",
    )
    internal_token_file: Path | None = Field(default=None, description="a file holding the token (a mounted Secret)")
    clip_max_bytes: int = Field(default=32 * 1024**2, gt=0, description="largest clip body; more is a 413")
    clip_max_seconds: float = Field(
        default=120.0, gt=0, description="longest clip embedded; longer is a 422 (the caller may ask for less)"
    )
    clip_concurrency: int = Field(
        default=2, ge=1, le=64, description="clips decoded and embedded at once; one more is a 503 at once"
    )
    clip_batch_share: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description="share of each model batch clips may take while tracks from Kafka wait (all of it otherwise)",
    )

    # --- crash loops ------------------------------------------------------------
    attempts_file: Path | None = Field(
        default=None,
        description="where records in flight are noted, so a record that kills the process is recognised "
        "on its redelivery; keep it on a volume that outlives the container (an emptyDir); "
        "default: a file per consumer group under the system temp dir",
    )
    max_crashes: int = Field(
        default=2,
        ge=1,
        description="a record that was being processed when the process died this many times is dead-lettered",
    )

    @property
    def consumer_group(self) -> str:
        """By default the group carries the topic prefix, so tests and tenants never share one."""
        return self.group_id or f"{self.stack.topic_prefix}{DEFAULT_GROUP}"

    def audio_limits(self) -> AudioLimits:
        return AudioLimits(
            min_seconds=self.min_audio_seconds,
            max_seconds=self.max_audio_seconds,
            min_sample_rate=self.min_sample_rate,
            max_sample_rate=self.max_sample_rate,
            max_channels=self.max_channels,
            max_samples=self.max_decoded_samples,
        )

    @property
    def attempts_path(self) -> Path:
        if self.attempts_file is not None:
            return self.attempts_file
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in self.consumer_group)
        return Path(tempfile.gettempdir()) / f"mess-embedder-attempts-{safe}.sqlite"

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.backend == "mert" and self.model_dir is None:
            raise ValueError("MESS_EMBEDDER_BACKEND=mert needs MESS_EMBEDDER_MODEL_DIR (see the README)")
        if self.chunk_seconds is not None and self.hop_seconds is not None and self.hop_seconds > self.chunk_seconds:
            raise ValueError("hop_seconds may not exceed chunk_seconds: audio between chunks would be skipped")
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms should be at most a third of session_timeout_ms")
        if self.min_audio_seconds >= self.max_audio_seconds:
            raise ValueError("min_audio_seconds must be below max_audio_seconds")
        if self.min_sample_rate > self.max_sample_rate:
            raise ValueError("min_sample_rate must not exceed max_sample_rate")
        if self.clip_max_seconds > self.max_audio_seconds:
            raise ValueError("clip_max_seconds may not exceed max_audio_seconds")
        if self.environment == "production":
            # Read here so a missing or unreadable file stops the start, not the first clip.
            token = self._token()
            if token is None:
                raise ValueError(
                    "no internal token: production needs MESS_EMBEDDER_INTERNAL_TOKEN or "
                    "MESS_EMBEDDER_INTERNAL_TOKEN_FILE (the query service presents the same one)"
                )
            problem = token_problem(token)
            if problem is not None:
                raise ValueError(f"production refuses this internal token: {problem}")
        return self

    @field_validator("internal_token_file", mode="before")
    @classmethod
    def _empty_path_means_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    def _token(self) -> str | None:
        value = self.internal_token.get_secret_value() if self.internal_token is not None else None
        return shared_token(value, self.internal_token_file)

    def clip_token(self) -> str:
        """The token the internal endpoint checks (the file is read again at each start, never per request)."""
        token = self._token()
        if token is None:
            return DEVELOPMENT_TOKEN  # production never gets here (the validator refused it)
        return token

    def clip_limits(self) -> AudioLimits:
        """The track limits, with the clip's length: the same rate, channel and sample bounds as ingest's."""
        return replace(self.audio_limits(), max_seconds=self.clip_max_seconds)
