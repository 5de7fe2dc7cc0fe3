"""Where the backing services are.

Every service embeds one ``StackSettings`` in its own settings class, so the
broker, Postgres, Redis and S3 URLs are read from the same ``MESS_*``
variables everywhere and never copied. The defaults are the local stack's
loopback ports; nothing in a service hard-codes a URL.
"""

from pathlib import Path
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mess.contracts.topics import Topics


class StackSettings(BaseSettings):
    # Errors name the setting, never echo its value: the DSN and the S3 secret are among them.
    model_config = SettingsConfigDict(env_prefix="MESS_", extra="ignore", hide_input_in_errors=True)

    log_format: Literal["text", "json"] = Field(
        default="text", description="json: one object per line with service, request id and trace id"
    )

    kafka_bootstrap: str = Field(default="127.0.0.1:9092", description="comma-separated host:port list")
    topic_prefix: str = Field(default="", description="prepended to every topic name")
    topic_partitions: int = Field(default=8, ge=1)

    # How every Kafka client of every service authenticates and encrypts; read
    # by mess.runtime.kafka, the one place that builds Kafka clients.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_ssl_ca_file: Path | None = Field(default=None, description="PEM bundle of CAs; unset: the system's")
    kafka_ssl_cert_file: Path | None = Field(default=None, description="client certificate (mutual TLS)")
    kafka_ssl_key_file: Path | None = Field(default=None, description="client key (mutual TLS)")
    kafka_ssl_check_hostname: bool = True
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "AWS_MSK_IAM"] | None = (
        Field(default=None, description="AWS_MSK_IAM is OAUTHBEARER with tokens signed by the pod's AWS role")
    )
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    # Files win over the variables: a mounted Secret can rotate without a restart of the settings code.
    kafka_sasl_username_file: Path | None = None
    kafka_sasl_password_file: Path | None = None
    kafka_oauth_token_file: Path | None = Field(
        default=None, description="OAUTHBEARER: a file holding the current token, read again at every connection"
    )
    kafka_msk_region: str | None = Field(
        default=None, description="AWS_MSK_IAM: the cluster's region (default s3_region)"
    )

    postgres_dsn: str = "postgresql://postgres@127.0.0.1:5432/mess"
    postgres_schema: str = Field(default="mess", pattern=r"^[a-z_][a-z0-9_]{0,62}$")

    redis_url: str = "redis://127.0.0.1:6379/0"
    # A DSN or URL carrying a password belongs in a mounted Secret file, not in the environment
    # (which `kubectl describe`, crash dumps and child processes all see); the file wins.
    postgres_dsn_file: Path | None = None
    redis_url_file: Path | None = None
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

    @field_validator(
        "s3_endpoint_url",
        "aws_access_key_id",
        "aws_secret_access_key",
        "kafka_ssl_ca_file",
        "kafka_ssl_cert_file",
        "kafka_ssl_key_file",
        "kafka_sasl_mechanism",
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_sasl_username_file",
        "kafka_sasl_password_file",
        "kafka_oauth_token_file",
        "kafka_msk_region",
        "postgres_dsn_file",
        "redis_url_file",
        mode="before",
    )
    @classmethod
    def _empty_means_unset(cls, value: object) -> object:
        # An empty variable in a manifest means "not set", not "the empty string".
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _secrets_from_files(self) -> Self:
        for name in ("postgres_dsn", "redis_url"):
            path: Path | None = getattr(self, f"{name}_file")
            if path is None:
                continue
            try:
                value = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"MESS_{name.upper()}_FILE cannot be read: {exc.strerror}") from None
            if not value:
                raise ValueError(f"MESS_{name.upper()}_FILE is empty")
            object.__setattr__(self, name, value)
        return self

    @model_validator(mode="after")
    def _kafka_security_is_complete(self) -> Self:
        # Refused at start-up, loudly: a half-configured client would only fail later, per connection.
        sasl = self.kafka_security_protocol.startswith("SASL_")
        if sasl and self.kafka_sasl_mechanism is None:
            raise ValueError(
                f"MESS_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs MESS_KAFKA_SASL_MECHANISM"
            )
        if not sasl and self.kafka_sasl_mechanism is not None:
            raise ValueError("MESS_KAFKA_SASL_MECHANISM is set but the security protocol has no SASL")
        if self.kafka_sasl_mechanism in {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}:
            if not (self.kafka_sasl_username or self.kafka_sasl_username_file):
                raise ValueError(f"{self.kafka_sasl_mechanism} needs MESS_KAFKA_SASL_USERNAME(_FILE)")
            if not (self.kafka_sasl_password or self.kafka_sasl_password_file):
                raise ValueError(f"{self.kafka_sasl_mechanism} needs MESS_KAFKA_SASL_PASSWORD(_FILE)")
        if self.kafka_sasl_mechanism == "OAUTHBEARER" and self.kafka_oauth_token_file is None:
            raise ValueError("OAUTHBEARER needs MESS_KAFKA_OAUTH_TOKEN_FILE (or use AWS_MSK_IAM)")
        if (self.kafka_ssl_cert_file is None) != (self.kafka_ssl_key_file is None):
            raise ValueError("MESS_KAFKA_SSL_CERT_FILE and MESS_KAFKA_SSL_KEY_FILE go together")
        return self

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
