"""Where the backing services are.

Every service embeds one ``StackSettings`` in its own settings class, so the
broker, Postgres, Redis and S3 URLs are read from the same ``MESS_*``
variables everywhere and never copied. The defaults are the local stack's
loopback ports; nothing in a service hard-codes a URL.
"""

from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mess.contracts.topics import Topics


class StackSettings(BaseSettings):
    # Errors name the setting, never echo its value: the DSN and the S3 secret are among them.
    model_config = SettingsConfigDict(env_prefix="MESS_", extra="ignore", hide_input_in_errors=True)

    kafka_bootstrap: str = Field(default="127.0.0.1:9092", description="comma-separated host:port list")
    topic_prefix: str = Field(default="", description="prepended to every topic name")
    topic_partitions: int = Field(default=8, ge=1)

    postgres_dsn: str = "postgresql://postgres@127.0.0.1:5432/mess"
    postgres_schema: str = Field(default="mess", pattern=r"^[a-z_][a-z0-9_]{0,62}$")

    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "mess:"

    s3_endpoint_url: str | None = Field(
        default="http://127.0.0.1:5000", description="unset for AWS itself; MinIO or moto otherwise"
    )
    s3_region: str = "us-east-1"
    # Static keys for MinIO or moto. Set both empty on AWS so the default
    # credential chain (IAM roles for service accounts, instance profiles) applies.
    aws_access_key_id: str | None = "mess-local"
    aws_secret_access_key: SecretStr | None = SecretStr("mess-local-secret")
    bucket: str = Field(default="mess-audio", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    sqs_queue: str = Field(default="mess-audio-events", description="queue name for S3 ObjectCreated notices")
    drop_prefix: str = Field(default="drop/", description="objects under this prefix are auto-ingested")

    @field_validator("s3_endpoint_url", "aws_access_key_id", "aws_secret_access_key", mode="before")
    @classmethod
    def _empty_means_unset(cls, value: object) -> object:
        # An empty variable in a manifest means "not set", not "the empty string".
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    @property
    def kafka_servers(self) -> list[str]:
        return [server.strip() for server in self.kafka_bootstrap.split(",") if server.strip()]

    def s3_client_kwargs(self) -> dict[str, str | None]:
        """Keyword arguments for a botocore S3 or SQS client; unset parts are left
        out so botocore falls back to AWS itself and its credential chain."""
        kwargs: dict[str, str | None] = {"region_name": self.s3_region}
        if self.s3_endpoint_url:
            kwargs["endpoint_url"] = self.s3_endpoint_url
        if self.aws_access_key_id and self.aws_secret_access_key:
            kwargs["aws_access_key_id"] = self.aws_access_key_id
            kwargs["aws_secret_access_key"] = self.aws_secret_access_key.get_secret_value()
        return kwargs


def host_port(url: str, default_port: int) -> tuple[str, int]:
    """(host, port) of a URL or a bare host:port."""
    parsed = urlsplit(url if "//" in url else f"//{url}")
    return parsed.hostname or "127.0.0.1", parsed.port or default_port
