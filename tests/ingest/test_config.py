"""Settings fail loudly at start-up (unit)."""

import pytest
from pydantic import ValidationError

from mess.ingest.config import DEVELOPMENT_API_KEY, Settings


def test_development_mode_works_with_the_documented_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESS_INGEST_API_KEYS", raising=False)
    monkeypatch.delenv("MESS_INGEST_ENVIRONMENT", raising=False)
    assert Settings().api_key_list() == [DEVELOPMENT_API_KEY]


@pytest.mark.parametrize(
    "keys", ["", " , ", DEVELOPMENT_API_KEY, "changeme", "short-key", f"a-real-key-0123456789,{DEVELOPMENT_API_KEY}"]
)
def test_production_refuses_empty_placeholder_or_short_keys(keys: str) -> None:
    with pytest.raises(ValidationError, match="API_KEYS"):
        Settings(environment="production", api_keys=keys)


def test_production_accepts_real_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESS_INGEST_ENVIRONMENT", "production")
    monkeypatch.setenv("MESS_INGEST_API_KEYS", "first-key-0123456789abcd, second-key-0123456789abc")
    assert Settings().api_key_list() == ["first-key-0123456789abcd", "second-key-0123456789abc"]


def test_inconsistent_limits_are_refused() -> None:
    with pytest.raises(ValidationError, match="min_duration_s"):
        Settings(min_duration_s=20, max_duration_s=10)
    with pytest.raises(ValidationError, match="pg_pool_min"):
        Settings(pg_pool_min=5, pg_pool_max=2)
    with pytest.raises(ValidationError):
        Settings(s3_part_bytes=1024)  # S3 parts are at least 5 MiB


def test_status_group_carries_the_topic_prefix_unless_given() -> None:
    settings = Settings.model_validate({"stack": {"topic_prefix": "t123."}})
    assert settings.status_consumer_group == "t123.mess-ingest-status"
    given = Settings.model_validate({"stack": {"topic_prefix": "t123."}, "status_group_id": "analytics-copy"})
    assert given.status_consumer_group == "analytics-copy"
