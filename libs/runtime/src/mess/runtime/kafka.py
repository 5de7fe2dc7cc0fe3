"""The messaging layer: every Kafka client of every service is built here.

One settings surface (``StackSettings.kafka_*``) says how to reach the bus:
PLAINTEXT, SSL (optionally mutual TLS), SASL_PLAINTEXT or SASL_SSL with
PLAIN, SCRAM-SHA-256/512, OAUTHBEARER from a token file, or AWS MSK IAM
(OAUTHBEARER tokens signed with the pod's IRSA role). The security is
expressed once, as faststream's security object, and the aiokafka keyword
arguments are derived from that same object, so the faststream brokers, the
raw producers and consumers, the admin and metadata clients and the
AsyncAPI document can never disagree about it.

Every event leaves through ``publish``: keyed by the event's key, with the
standard headers, ``acks=all``, and a bounded retry with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import AbstractTokenProvider
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import (
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnsupportedVersionError,
)
from faststream.kafka import KafkaBroker
from faststream.kafka.security import parse_security
from faststream.security import (
    BaseSecurity,
    SASLOAuthBearer,
    SASLPlaintext,
    SASLScram256,
    SASLScram512,
)

from mess.runtime.logging import TRACEPARENT
from mess.runtime.retry import Backoff, retrying

if TYPE_CHECKING:
    from mess.contracts.events import Event
    from mess.runtime.endpoints import StackSettings

log = logging.getLogger(__name__)

# Header names every event carries, so a consumer (ours or an analytics team's)
# can route and trace a message without parsing its body.
HEADER_CONTENT_TYPE = "content-type"
HEADER_EVENT_TYPE = "mess-event-type"
HEADER_SCHEMA_VERSION = "mess-schema-version"
HEADER_EVENT_ID = "mess-event-id"
HEADER_TRACEPARENT = "traceparent"

# Send errors that no retry can cure: the message itself (or our right to send it) is the problem.
PERMANENT_SEND_ERRORS: tuple[type[KafkaError], ...] = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    InvalidTopicError,
    TopicAuthorizationFailedError,
    UnsupportedVersionError,
)

# MSK IAM tokens live 15 minutes; a fresh one is signed this long before the old one ends.
_TOKEN_REFRESH_MARGIN_S = 120.0


class KafkaConfigError(ValueError):
    """The Kafka security settings cannot be turned into a client (a file is missing, a package absent)."""


def _read_secret_file(path: Path, what: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise KafkaConfigError(f"{what} file {path} cannot be read: {exc.strerror}") from exc
    if not value:
        raise KafkaConfigError(f"{what} file {path} is empty")
    return value


def ssl_context(stack: StackSettings) -> ssl.SSLContext | None:
    """The TLS context for SSL and SASL_SSL; None for the plaintext protocols."""
    if stack.kafka_security_protocol not in {"SSL", "SASL_SSL"}:
        return None
    try:
        context = ssl.create_default_context(
            purpose=ssl.Purpose.SERVER_AUTH,
            cafile=str(stack.kafka_ssl_ca_file) if stack.kafka_ssl_ca_file else None,
        )
        if stack.kafka_ssl_cert_file and stack.kafka_ssl_key_file:
            context.load_cert_chain(str(stack.kafka_ssl_cert_file), str(stack.kafka_ssl_key_file))
    except (OSError, ssl.SSLError) as exc:
        raise KafkaConfigError(f"the Kafka TLS files cannot be loaded: {exc}") from exc
    context.check_hostname = stack.kafka_ssl_check_hostname
    return context


def _credentials(stack: StackSettings) -> tuple[str, str]:
    username = (
        _read_secret_file(stack.kafka_sasl_username_file, "SASL username")
        if stack.kafka_sasl_username_file
        else stack.kafka_sasl_username or ""
    )
    if stack.kafka_sasl_password_file:
        password = _read_secret_file(stack.kafka_sasl_password_file, "SASL password")
    else:
        password = stack.kafka_sasl_password.get_secret_value() if stack.kafka_sasl_password else ""
    return username, password


def security(stack: StackSettings) -> BaseSecurity | None:
    """The one description of how to reach the bus (faststream's form, which also feeds AsyncAPI)."""
    context = ssl_context(stack)
    use_ssl = context is not None
    mechanism = stack.kafka_sasl_mechanism
    if mechanism is None:
        return BaseSecurity(ssl_context=context) if use_ssl else None
    if mechanism in {"OAUTHBEARER", "AWS_MSK_IAM"}:
        return SASLOAuthBearer(ssl_context=context, use_ssl=use_ssl)
    username, password = _credentials(stack)
    kinds: dict[str, type[SASLPlaintext | SASLScram256 | SASLScram512]] = {
        "PLAIN": SASLPlaintext,
        "SCRAM-SHA-256": SASLScram256,
        "SCRAM-SHA-512": SASLScram512,
    }
    return kinds[mechanism](username=username, password=password, ssl_context=context, use_ssl=use_ssl)


class FileTokenProvider(AbstractTokenProvider):  # type: ignore[misc]  # aiokafka ships no types
    """OAUTHBEARER tokens from a file (a projected service-account token, say), read at every connection."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def token(self) -> str:
        return await asyncio.to_thread(_read_secret_file, self.path, "OAUTHBEARER token")


class MskIamTokenProvider(AbstractTokenProvider):  # type: ignore[misc]  # aiokafka ships no types
    """OAUTHBEARER tokens for AWS MSK IAM, signed with the default credential chain (IRSA on EKS).

    Signing is local (SigV4 over a presigned URL), but the credential chain may
    call STS, so it runs off the event loop. A token is reused until shortly
    before it expires, as aiokafka asks of a provider.
    """

    def __init__(self, region: str, sign: Callable[[str], tuple[str, int]] | None = None) -> None:
        self.region = region
        self._sign = sign or _sign_with_msk_iam
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        async with self._lock:
            if self._token is None or time.time() >= self._expires_at - _TOKEN_REFRESH_MARGIN_S:
                token, expiry_ms = await asyncio.to_thread(self._sign, self.region)
                self._token, self._expires_at = token, expiry_ms / 1000.0
            return self._token


def _sign_with_msk_iam(region: str) -> tuple[str, int]:
    try:
        from aws_msk_iam_sasl_signer import MSKAuthTokenProvider  # type: ignore[import-untyped]
    except ImportError as exc:  # only the AWS_MSK_IAM mode needs it
        raise KafkaConfigError("AWS_MSK_IAM needs the package aws-msk-iam-sasl-signer-python") from exc
    token, expiry_ms = MSKAuthTokenProvider.generate_auth_token(region)
    return str(token), int(expiry_ms)


def token_provider(stack: StackSettings) -> AbstractTokenProvider | None:
    if stack.kafka_sasl_mechanism == "AWS_MSK_IAM":
        return MskIamTokenProvider(stack.kafka_msk_region or stack.s3_region)
    if stack.kafka_sasl_mechanism == "OAUTHBEARER" and stack.kafka_oauth_token_file is not None:
        return FileTokenProvider(stack.kafka_oauth_token_file)
    return None


def client_options(stack: StackSettings) -> dict[str, Any]:
    """aiokafka keyword arguments for any client: where the bus is and how to reach it securely."""
    options: dict[str, Any] = {"bootstrap_servers": stack.kafka_servers, **parse_security(security(stack))}
    provider = token_provider(stack)
    if provider is not None:
        options["sasl_oauth_token_provider"] = provider
    return options


def producer(stack: StackSettings, *, client_id: str, **overrides: Any) -> AIOKafkaProducer:
    """A producer that waits for every in-sync replica (``acks=all``); not started."""
    options: dict[str, Any] = {"acks": "all", "client_id": client_id, **overrides}
    return AIOKafkaProducer(**client_options(stack), **options)


def consumer(stack: StackSettings, *topics: str, client_id: str, **overrides: Any) -> AIOKafkaConsumer:
    """A consumer (with or without a group, by ``overrides``); not started."""
    return AIOKafkaConsumer(*topics, **client_options(stack), client_id=client_id, **overrides)


def admin(stack: StackSettings, *, client_id: str, **overrides: Any) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**client_options(stack), client_id=client_id, **overrides)


def metadata_client(stack: StackSettings, *, client_id: str, **overrides: Any) -> AIOKafkaClient:
    """A bare client for metadata (readiness probes); not bootstrapped."""
    return AIOKafkaClient(**client_options(stack), client_id=client_id, **overrides)


def broker(stack: StackSettings, *, client_id: str, **overrides: Any) -> KafkaBroker:
    """A faststream broker for routers with typed handlers; not started."""
    provider = token_provider(stack)
    if provider is not None:
        overrides.setdefault("sasl_oauth_token_provider", provider)
    return KafkaBroker(stack.kafka_servers, security=security(stack), client_id=client_id, acks="all", **overrides)


def event_headers(event: Event, traceparent: str | None = None) -> dict[str, str]:
    """The standard headers of an event on the wire."""
    headers = {
        HEADER_CONTENT_TYPE: "application/json",
        HEADER_EVENT_TYPE: event.event_type,
        HEADER_SCHEMA_VERSION: str(event.schema_version),
        HEADER_EVENT_ID: str(event.event_id),
    }
    if traceparent:
        headers[HEADER_TRACEPARENT] = traceparent
    return headers


class Send(Protocol):
    """Hands one message to the broker and returns once the broker acknowledged it."""

    def __call__(self, topic: str, value: bytes, key: bytes, headers: dict[str, str]) -> Awaitable[None]: ...


def via_producer(client: AIOKafkaProducer) -> Send:
    async def send(topic: str, value: bytes, key: bytes, headers: dict[str, str]) -> None:
        encoded = [(name, text.encode("utf-8")) for name, text in headers.items()]
        await client.send_and_wait(topic, value, key=key, headers=encoded)

    return send


def via_broker(client: KafkaBroker) -> Send:
    async def send(topic: str, value: bytes, key: bytes, headers: dict[str, str]) -> None:
        await client.publish(value, topic=topic, key=key, headers=headers)

    return send


PUBLISH_BACKOFF = Backoff(attempts=3, base_s=0.2, max_s=2.0)


def is_transient(exc: BaseException) -> bool:
    """Broker errors worth another try; a message the broker can never take is not one."""
    if isinstance(exc, KafkaError):
        return not isinstance(exc, PERMANENT_SEND_ERRORS)
    return isinstance(exc, (OSError, TimeoutError))


async def publish(
    send: Send,
    topic: str,
    event: Event,
    *,
    backoff: Backoff = PUBLISH_BACKOFF,
    traceparent: str | None = None,
    on_retry: Callable[[str], None] | None = None,
) -> None:
    """Publish one event: keyed by ``event.key()``, standard headers, bounded retry with backoff.

    The last failure is raised (RetriesExhaustedError, or the permanent error
    itself): the caller decides whether that means "rewind and read again"
    (a consumer) or "dead-letter it and move on" (the relay).
    """
    value, key = event.to_bytes(), event.key().encode("utf-8")
    # The trace of the request being handled, if any, goes with the event (W3C traceparent).
    headers = event_headers(event, traceparent or TRACEPARENT.get())
    await retrying(
        f"publish {event.event_type}", lambda: send(topic, value, key, headers), backoff, is_transient, on_retry
    )


async def stop_quietly(client: AIOKafkaProducer | AIOKafkaConsumer | KafkaBroker, timeout_s: float = 5.0) -> None:
    """Stop a client that may be half-started or talking to a vanished broker, within a bound."""
    with contextlib.suppress(KafkaError, OSError, TimeoutError, RuntimeError):
        await asyncio.wait_for(client.stop(), timeout=timeout_s)
