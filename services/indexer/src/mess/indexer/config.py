"""Settings of the indexer service (environment prefix `MESS_INDEXER_`)."""

import socket
from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mess.indexer.shard_index import FLAT, IndexBuildError, templates_of, tuned_parameter_of
from mess.runtime.endpoints import StackSettings


def _default_writer_id() -> str:
    return f"indexer@{socket.gethostname()}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESS_INDEXER_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8003, ge=1, le=65535)
    log_level: str = "INFO"
    stack: StackSettings = Field(default_factory=StackSettings)

    group_id: str = Field(
        default="mess-indexer",
        description="Kafka group the published offsets are copied to, for lag tools (the snapshot is the checkpoint)",
    )
    writer_id: str = Field(
        default_factory=_default_writer_id,
        description="who holds the publish lease; a restarted indexer with the same id takes its lease back at once",
    )
    model: str | None = Field(
        default=None,
        description="model fingerprint (name@revision/pooling/dim) the index must hold; unset: the first vector's",
    )

    shard_count: int = Field(default=8, ge=1, le=4096)
    snapshot_every_changes: int = Field(default=10_000, ge=1, description="snapshot after this many changes")
    snapshot_interval_s: float = Field(default=30.0, gt=0, description="or this long after the first pending change")
    keep_snapshots: int = Field(
        default=5, ge=2, description="snapshots kept in S3 (a query replica may still load one)"
    )

    flat_threshold: int = Field(default=5_000, ge=0, description="shards with fewer vectors get an exact Flat index")
    approximate_index: str = Field(
        default="HNSW32,SQ8|IVF{nlist},SQ8",
        description="FAISS factory strings for larger shards, '|' between candidates (the fastest reaching the "
        "recall target on the shard's own data is kept); {nlist} becomes about 4*sqrt(n)",
    )
    hnsw_ef_construction: int = Field(default=40, ge=8)
    tuning_recall: float = Field(
        default=0.97,
        gt=0,
        le=1,
        description="recall@10 the search knob is tuned to on the sample; the goal is 0.95, the rest is headroom "
        "for the sample's noise and for queries harder than stored tracks (see the README's figures)",
    )
    tuning_queries: int = Field(default=500, ge=10, le=10_000, description="stored vectors used as tuning queries")
    faiss_threads: int = Field(default=0, ge=0, description="OpenMP threads for builds; 0 keeps FAISS's default")

    poll_max_records: int = Field(default=2_000, ge=1)
    publish_lease_s: float = Field(
        default=600.0, gt=0, description="a crashed writer's publish lease expires after this long"
    )
    latest_check_s: float = Field(
        default=10.0, gt=0, description="how often LATEST is read to notice a snapshot another writer published"
    )
    retry_s: float = Field(default=5.0, gt=0, description="wait before retrying a failed snapshot")
    # Kubernetes gives the pod 90 s from the start of its 5 s preStop sleep
    # (deploy/k8s/base/indexer.yaml); 75 s leaves room to close the clients.
    shutdown_grace_s: int = Field(
        default=75,
        ge=1,
        description="after SIGTERM: how long finishing the snapshot in hand and publishing a final one may take",
    )

    @model_validator(mode="after")
    def _factories_are_tunable(self) -> Self:
        templates = templates_of(self.approximate_index)
        if not templates:
            raise ValueError("approximate_index names no factory string")
        for template in templates:
            if template != FLAT:
                try:
                    tuned_parameter_of(template.replace("{nlist}", "16"))
                except IndexBuildError as exc:
                    raise ValueError(str(exc)) from exc
        return self
