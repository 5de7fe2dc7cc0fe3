from pathlib import Path

import pytest
from pydantic import ValidationError

from mess.runtime.endpoints import StackSettings


def test_local_defaults_name_the_loopback_stack() -> None:
    kwargs = StackSettings().s3_client_kwargs()
    assert kwargs["endpoint_url"] == "http://127.0.0.1:5000"
    assert kwargs["aws_access_key_id"] == "mess-local"


def test_empty_endpoint_and_keys_fall_back_to_aws_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """On EKS the manifests leave these empty so IAM roles for service accounts apply."""
    monkeypatch.setenv("MESS_S3_ENDPOINT_URL", "")
    monkeypatch.setenv("MESS_AWS_ACCESS_KEY_ID", "")
    monkeypatch.setenv("MESS_AWS_SECRET_ACCESS_KEY", " ")
    settings = StackSettings()
    assert settings.s3_endpoint_url is None
    assert settings.s3_client_kwargs() == {"region_name": "us-east-1"}


def test_topics_and_servers_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESS_KAFKA_BOOTSTRAP", "k1:9092, k2:9092")
    monkeypatch.setenv("MESS_TOPIC_PREFIX", "staging.")
    settings = StackSettings()
    assert settings.kafka_servers == ["k1:9092", "k2:9092"]
    assert settings.topics.tracks_added == "staging.mess.tracks.added.v1"


def test_the_database_and_cache_urls_can_come_from_secret_files(tmp_path: Path) -> None:
    (tmp_path / "dsn").write_text("postgresql://mess:s3cret@db.internal:5432/mess?sslmode=verify-full\n")
    (tmp_path / "redis").write_text("rediss://:s3cret@cache.internal:6379/0\n")
    settings = StackSettings(postgres_dsn_file=tmp_path / "dsn", redis_url_file=tmp_path / "redis")
    assert settings.postgres_dsn == "postgresql://mess:s3cret@db.internal:5432/mess?sslmode=verify-full"
    assert settings.redis_url == "rediss://:s3cret@cache.internal:6379/0"
    with pytest.raises(ValidationError, match="MESS_POSTGRES_DSN_FILE cannot be read"):
        StackSettings(postgres_dsn_file=tmp_path / "missing")
