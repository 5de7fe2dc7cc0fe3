"""Settings of the embedder service (environment prefix `MESS_EMBEDDER_`)."""

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mess.runtime.endpoints import StackSettings

DEFAULT_GROUP = "mess-embedder"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESS_EMBEDDER_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8002
    log_level: str = "INFO"
    stack: StackSettings = Field(default_factory=StackSettings)

    # --- the model ----------------------------------------------------------
    backend: Literal["dsp", "mert"] = Field(default="dsp", description="dsp (CPU, no weights) or mert")
    model_dir: Path | None = Field(default=None, description="MERT model directory (config.json + weights)")
    model_name: str | None = Field(default=None, description="name in ModelIdentity; default: the checkpoint's")
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N (mert)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto: bfloat16 on CUDA, float32 on CPU (mert)"
    )
    layers: str = Field(default="all", description="mert layers to pool: all, last, 7, 4,5,6 or 4-8 (0 = CNN output)")
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

    @property
    def consumer_group(self) -> str:
        """By default the group carries the topic prefix, so tests and tenants never share one."""
        return self.group_id or f"{self.stack.topic_prefix}{DEFAULT_GROUP}"

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
        return self
