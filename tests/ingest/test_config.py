"""Settings fail loudly at start-up (unit)."""

import pytest
from pydantic import ValidationError

from mess.ingest.config import DEVELOPMENT_API_KEY, Settings
from mess.runtime.access import digest_key, key_line

REAL_ENTRY = key_line("ci", "mess_a-real-key-minted-with-32-random-bytes-0123")


def test_development_mode_works_with_the_documented_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("API_KEYS", "API_KEY_HASHES", "API_KEYS_FILE", "ENVIRONMENT"):
        monkeypatch.delenv(f"MESS_INGEST_{name}", raising=False)
    entries = Settings().write_key_entries()
    assert [(e.label, e.digest) for e in entries] == [("development", digest_key(DEVELOPMENT_API_KEY))]


def test_naming_any_key_source_retires_the_development_key() -> None:
    assert [e.label for e in Settings(api_key_hashes=REAL_ENTRY).write_key_entries()] == ["ci"]
    assert Settings(api_keys="").write_key_entries() == ()  # explicitly no key: every write is refused


def test_plaintext_keys_are_hashed_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESS_INGEST_API_KEYS", "first-key-0123456789abcd, second-key-0123456789abc")
    entries = Settings().write_key_entries()
    assert [e.digest for e in entries] == [
        digest_key("first-key-0123456789abcd"),
        digest_key("second-key-0123456789abc"),
    ]
    assert "first-key" not in repr(Settings())


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({}, "no API key"),
        ({"api_key_hashes": ""}, "no API key"),
        ({"api_keys": "a-real-key-0123456789abcdefgh"}, "production takes only their digests"),
        ({"api_key_hashes": key_line("dev", DEVELOPMENT_API_KEY)}, "development or placeholder"),
        ({"api_key_hashes": f"{REAL_ENTRY},{key_line('x', 'changeme')}"}, "development or placeholder"),
    ],
)
def test_production_refuses_no_key_plaintext_keys_and_public_keys(
    monkeypatch: pytest.MonkeyPatch, overrides: dict[str, str], complaint: str
) -> None:
    monkeypatch.delenv("MESS_INGEST_API_KEYS", raising=False)
    with pytest.raises(ValidationError, match=complaint) as refused:
        Settings(environment="production", **overrides)
    assert "a-real-key" not in str(refused.value)  # the error names settings, never echoes values


def test_production_accepts_digests_from_the_environment_or_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESS_INGEST_API_KEYS", raising=False)
    monkeypatch.setenv("MESS_INGEST_ENVIRONMENT", "production")
    monkeypatch.setenv("MESS_INGEST_API_KEY_HASHES", REAL_ENTRY)
    assert [e.label for e in Settings().write_key_entries()] == ["ci"]
    monkeypatch.delenv("MESS_INGEST_API_KEY_HASHES")
    monkeypatch.setenv("MESS_INGEST_API_KEYS_FILE", "/run/secrets/ingest-keys")  # read at start-up, not here
    assert Settings().write_key_entries() == ()


@pytest.mark.parametrize(
    "entries", ["ci", "ci:not-hex", "ci:" + "ab" * 31, "bad label:" + "ab" * 32, "mess_a-key-pasted-by-mistake"]
)
def test_malformed_digest_entries_are_refused_without_echoing_them(entries: str) -> None:
    with pytest.raises(ValidationError, match="MESS_INGEST_API_KEY_HASHES") as refused:
        Settings(api_key_hashes=entries)
    assert "pasted" not in str(refused.value) and "not-hex" not in str(refused.value)


@pytest.mark.parametrize(
    "origins", ["https://app.example.org/", "app.example.org", "https://a.org/path", "*,https://a.org"]
)
def test_cors_origins_that_could_never_match_are_refused(origins: str) -> None:
    with pytest.raises(ValidationError, match="cors_origins"):
        Settings(cors_origins=origins)


def test_read_keys_required_without_any_key_is_refused() -> None:
    with pytest.raises(ValidationError, match="REQUIRE_READ_KEY"):
        Settings(require_read_key=True, api_keys="")


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
