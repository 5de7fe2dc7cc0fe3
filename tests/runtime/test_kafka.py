"""The messaging layer's settings, security and token providers, without a broker."""

import asyncio
import base64
import ssl
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError
from faststream.security import BaseSecurity, SASLOAuthBearer, SASLScram512
from pydantic import SecretStr, ValidationError

from mess.contracts.events import TrackRemoved
from mess.dev.secure_front import make_certificates
from mess.runtime import kafka
from mess.runtime.endpoints import StackSettings
from mess.runtime.retry import Backoff, RetriesExhaustedError


def test_plaintext_is_the_default_and_adds_no_security() -> None:
    settings = StackSettings()
    assert kafka.security(settings) is None
    assert kafka.client_options(settings) == {"bootstrap_servers": ["127.0.0.1:9092"]}


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "needs MESS_KAFKA_SASL_MECHANISM"),
        ({"kafka_sasl_mechanism": "PLAIN"}, "has no SASL"),
        ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "SCRAM-SHA-512"}, "USERNAME"),
        (
            {
                "kafka_security_protocol": "SASL_SSL",
                "kafka_sasl_mechanism": "SCRAM-SHA-512",
                "kafka_sasl_username": "a",
            },
            "PASSWORD",
        ),
        ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "OAUTHBEARER"}, "TOKEN_FILE"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_cert_file": "/c.pem"}, "go together"),
    ],
)
def test_incomplete_security_settings_are_refused_at_start(fields: dict[str, str], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        StackSettings(**fields)  # type: ignore[arg-type]


def test_empty_variables_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # A manifest that lists every variable leaves the unused ones empty.
    monkeypatch.setenv("MESS_KAFKA_SASL_MECHANISM", "")
    monkeypatch.setenv("MESS_KAFKA_SSL_CA_FILE", "")
    settings = StackSettings()
    assert settings.kafka_sasl_mechanism is None
    assert settings.kafka_ssl_ca_file is None


def test_scram_over_tls_with_credentials_from_files(tmp_path: Path) -> None:
    ca_file, _, _ = make_certificates(tmp_path / "tls")
    (tmp_path / "user").write_text("mess-query\n")
    (tmp_path / "password").write_text("s3cret\n")
    settings = StackSettings(
        kafka_security_protocol="SASL_SSL",
        kafka_ssl_ca_file=ca_file,
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username_file=tmp_path / "user",
        kafka_sasl_password_file=tmp_path / "password",
        kafka_sasl_password=SecretStr("ignored: the file wins"),
    )
    security = kafka.security(settings)
    assert isinstance(security, SASLScram512)
    options = kafka.client_options(settings)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("mess-query", "s3cret")
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_ssl_only_and_a_missing_ca_file(tmp_path: Path) -> None:
    ca_file, _, _ = make_certificates(tmp_path / "tls")
    settings = StackSettings(kafka_security_protocol="SSL", kafka_ssl_ca_file=ca_file)
    security = kafka.security(settings)
    assert type(security) is BaseSecurity and security.use_ssl
    assert kafka.client_options(settings)["security_protocol"] == "SSL"
    missing = StackSettings(kafka_security_protocol="SSL", kafka_ssl_ca_file=tmp_path / "nope.pem")
    with pytest.raises(kafka.KafkaConfigError, match="TLS files"):
        kafka.client_options(missing)


def test_an_empty_password_file_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "password").write_text("\n")
    settings = StackSettings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="a",
        kafka_sasl_password_file=tmp_path / "password",
    )
    with pytest.raises(kafka.KafkaConfigError, match="empty"):
        kafka.security(settings)


def test_msk_iam_signs_a_kafka_connect_url_with_the_default_credential_chain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # botocore's credential chain, stubbed by its environment provider: no network, no IMDS.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSTUBBEDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "stubbed-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "stubbed-session")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    settings = StackSettings(
        kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="AWS_MSK_IAM", kafka_msk_region="eu-west-1"
    )
    assert isinstance(kafka.security(settings), SASLOAuthBearer)
    options = kafka.client_options(settings)
    assert options["sasl_mechanism"] == "OAUTHBEARER"
    provider = options["sasl_oauth_token_provider"]
    token = asyncio.run(provider.token())
    url = urlsplit(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode())
    query = parse_qs(url.query)
    assert url.hostname == "kafka.eu-west-1.amazonaws.com"
    assert query["Action"] == ["kafka-cluster:Connect"]
    assert query["X-Amz-Credential"][0].startswith("AKIDSTUBBEDEXAMPLE/")
    assert "/eu-west-1/kafka-cluster/" in query["X-Amz-Credential"][0]
    assert query["X-Amz-Security-Token"] == ["stubbed-session"]


def test_msk_iam_tokens_are_reused_until_near_expiry() -> None:
    calls: list[str] = []
    clock = {"expires_ms": 0}

    def sign(region: str) -> tuple[str, int]:
        calls.append(region)
        return f"token-{len(calls)}", clock["expires_ms"]

    import time

    clock["expires_ms"] = int((time.time() + 900) * 1000)
    provider = kafka.MskIamTokenProvider("us-east-1", sign)
    assert asyncio.run(provider.token()) == "token-1"
    assert asyncio.run(provider.token()) == "token-1"
    clock["expires_ms"] = int((time.time() + 60) * 1000)  # inside the refresh margin
    provider._expires_at = clock["expires_ms"] / 1000
    assert asyncio.run(provider.token()) == "token-2"


def test_a_token_file_is_read_at_every_connection(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    settings = StackSettings(
        kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="OAUTHBEARER", kafka_oauth_token_file=token
    )
    provider = kafka.client_options(settings)["sasl_oauth_token_provider"]
    assert asyncio.run(provider.token()) == "first"
    token.write_text("rotated\n")
    assert asyncio.run(provider.token()) == "rotated"


def test_publish_sends_key_and_standard_headers_and_retries_a_transient_failure() -> None:
    sent: list[tuple[str, bytes, bytes, dict[str, str]]] = []
    failures = [KafkaConnectionError("blip")]

    async def send(topic: str, value: bytes, key: bytes, headers: dict[str, str]) -> None:
        if failures:
            raise failures.pop()
        sent.append((topic, value, key, headers))

    event = TrackRemoved(track_id="some-track")
    asyncio.run(kafka.publish(send, "t", event, backoff=Backoff(3, 0.001, 0.001)))
    ((topic, value, key, headers),) = sent
    assert (topic, key) == ("t", b"some-track")
    assert TrackRemoved.from_bytes(value).event_id == event.event_id
    assert headers["mess-event-type"] == "TrackRemoved"
    assert headers["mess-schema-version"] == str(event.schema_version)
    assert headers["mess-event-id"] == str(event.event_id)


def test_publish_gives_up_at_once_on_a_message_the_broker_can_never_take() -> None:
    attempts = 0

    async def send(topic: str, value: bytes, key: bytes, headers: dict[str, str]) -> None:
        nonlocal attempts
        attempts += 1
        raise MessageSizeTooLargeError("too big")

    with pytest.raises(MessageSizeTooLargeError):
        asyncio.run(kafka.publish(send, "t", TrackRemoved(track_id="x"), backoff=Backoff(5, 0.001, 0.001)))
    assert attempts == 1


def test_publish_retries_are_bounded() -> None:
    attempts = 0

    async def send(topic: str, value: bytes, key: bytes, headers: dict[str, str]) -> None:
        nonlocal attempts
        attempts += 1
        raise KafkaConnectionError("down")

    with pytest.raises(RetriesExhaustedError):
        asyncio.run(kafka.publish(send, "t", TrackRemoved(track_id="x"), backoff=Backoff(3, 0.001, 0.001)))
    assert attempts == 3
