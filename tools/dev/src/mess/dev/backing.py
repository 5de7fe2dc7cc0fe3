"""Backing services of one's own, which a fault drill may break.

The fault suite kills the broker, stops Redis, restarts Postgres and makes S3
fail. It must never do that to the shared servers other tests and developers
use, so ``PrivateBacking`` starts a Tansu broker, moto, a Redis and a whole
Postgres cluster (initdb in a temporary folder) on free ports, each with a
handle to break and mend it, and ``FlakyS3`` puts a switchable proxy in front
of moto.
"""

import contextlib
import http.client
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import redis

from mess.dev.stack import (
    StackError,
    apt_install,
    broker_answers,
    broker_command,
    database_ready,
    free_port,
    moto_command,
    port_open,
    redis_command,
    wait_for,
)
from mess.runtime.endpoints import StackSettings

# Headers about one hop, not the request: the forwarded request sets its own.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "expect",
}
# What S3 itself answers when it sheds load; botocore treats it as retryable.
_UNAVAILABLE = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ServiceUnavailable</Code>'
    b"<Message>injected S3 outage</Message></Error>"
)


# Called with (method, path) before a request goes on; may block (to hold it) and
# answers True to refuse it with a 503 instead of passing it through.
Intercept = Callable[[str, str], bool]


@dataclass
class S3Proxy:
    """An S3 endpoint that passes every request through to ``upstream`` (moto),
    after asking ``intercept`` whether to hold or refuse it. Nothing else is
    answered here: status, headers and body are the real endpoint's."""

    upstream: str
    intercept: Intercept
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        intercept = self.intercept
        upstream = urlsplit(self.upstream)

        class Proxy(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as botocore expects

            def log_message(self, format: str, *args: object) -> None:
                del format, args

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts: list[bytes] = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _answer(self, status: int, reason: str, headers: list[tuple[str, str]], payload: bytes) -> None:
                self.send_response(status, reason)
                for key, value in headers:
                    if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                if self.command == "HEAD":
                    # A HEAD answer states the object's length, with no body to count.
                    length = next((v for k, v in headers if k.lower() == "content-length"), "0")
                    self.send_header("Content-Length", length)
                else:
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _pass_through(self) -> None:
                body = self._body()
                if intercept(self.command, urlsplit(self.path).path):
                    self._answer(503, "Service Unavailable", [("Content-Type", "application/xml")], _UNAVAILABLE)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                headers["Content-Length"] = str(len(body))
                connection = http.client.HTTPConnection(upstream.hostname or "127.0.0.1", upstream.port, timeout=60)
                try:
                    connection.request(self.command, self.path, body=body, headers=headers)
                    response = connection.getresponse()
                    self._answer(response.status, response.reason, response.getheaders(), response.read())
                finally:
                    connection.close()

            def handle(self) -> None:
                # A client that went away (a killed service, a timeout) is not the proxy's problem.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    super().handle()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _pass_through  # noqa: N815

        return Proxy

    @contextlib.contextmanager
    def running(self) -> Iterator["S3Proxy"]:
        server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        server.daemon_threads = True
        self._server = server
        thread = threading.Thread(target=server.serve_forever, name="s3-proxy", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)


@dataclass
class FlakyS3:
    """Passes every request through to ``upstream`` unless it is failing: then 503 to all."""

    upstream: str
    failing: threading.Event = field(default_factory=threading.Event)
    refused: int = 0
    passed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _proxy: S3Proxy | None = None

    @property
    def url(self) -> str:
        assert self._proxy is not None, "not started"
        return self._proxy.url

    def _intercept(self, method: str, path: str) -> bool:
        del method, path
        refused = self.failing.is_set()
        with self._lock:
            if refused:
                self.refused += 1
            else:
                self.passed += 1
        return refused

    @contextlib.contextmanager
    def running(self) -> Iterator["FlakyS3"]:
        with S3Proxy(self.upstream, self._intercept).running() as proxy:
            self._proxy = proxy
            yield self


def _postgres_bin() -> Path:
    for version in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (version / "initdb").exists():
            return version
    apt_install("postgresql")
    return _postgres_bin()


def _as_postgres_user(command: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root; the Debian package brings the `postgres` user.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


@dataclass
class Managed:
    """One backing process we may kill and start again on the same port."""

    name: str
    command: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(  # noqa: S603 - our own fixed command lines
                self.command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


@dataclass
class PrivateBacking:
    """Broker, S3 (behind ``FlakyS3``), Redis and Postgres, all private to the caller."""

    root: Path
    broker: Managed | None = None
    moto: Managed | None = None
    redis_server: Managed | None = None
    s3: FlakyS3 | None = None
    pg_data: Path | None = None
    pg_port: int = 0
    broker_port: int = 0
    redis_port: int = 0

    @property
    def settings(self) -> StackSettings:
        assert self.s3 is not None
        return StackSettings(
            kafka_bootstrap=f"127.0.0.1:{self.broker_port}",
            topic_prefix="faults.",
            topic_partitions=4,
            postgres_dsn=f"postgresql://postgres@127.0.0.1:{self.pg_port}/mess",
            postgres_schema="mess",
            redis_url=f"redis://127.0.0.1:{self.redis_port}/0",
            redis_prefix="faults:",
            s3_endpoint_url=self.s3.url,
            bucket="mess-faults",
            sqs_queue="mess-faults",
        )

    # --- the broker ---------------------------------------------------------

    def start_broker(self) -> None:
        if self.broker is None:
            self.broker_port = free_port()
            command = broker_command("127.0.0.1", self.broker_port)
            self.broker = Managed("broker", command, self.root / "broker.log")
        self.broker.start()
        wait_for(lambda: broker_answers(f"127.0.0.1:{self.broker_port}"), "private broker")

    def kill_broker(self) -> None:
        assert self.broker is not None
        self.broker.kill()

    # --- Redis --------------------------------------------------------------

    def start_redis(self) -> None:
        if self.redis_server is None:
            if shutil.which("redis-server") is None:
                apt_install("redis-server")
            self.redis_port = free_port()
            command = redis_command("127.0.0.1", self.redis_port)
            self.redis_server = Managed("redis", command, self.root / "redis.log")
        self.redis_server.start()
        url = f"redis://127.0.0.1:{self.redis_port}/0"
        wait_for(lambda: bool(redis.Redis.from_url(url, socket_timeout=2).ping()), "private Redis")

    def stop_redis(self) -> None:
        assert self.redis_server is not None
        self.redis_server.kill()

    # --- Postgres -----------------------------------------------------------

    def _pg_ctl(self, *args: str) -> None:
        assert self.pg_data is not None
        binary = str(_postgres_bin() / "pg_ctl")
        subprocess.run(  # noqa: S603 - our own fixed command lines
            _as_postgres_user([binary, "-D", str(self.pg_data), *args]),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start_postgres(self) -> None:
        if self.pg_data is None:
            self.pg_port = free_port()
            self.pg_data = self.root / "pgdata"
            self.pg_data.mkdir()
            if os.geteuid() == 0:
                shutil.chown(self.root, "postgres")
                shutil.chown(self.pg_data, "postgres")
            subprocess.run(  # noqa: S603
                _as_postgres_user(
                    [str(_postgres_bin() / "initdb"), "-D", str(self.pg_data), "-U", "postgres", "--auth=trust"]
                ),
                check=True,
                stdout=subprocess.DEVNULL,
            )
        options = f"-p {self.pg_port} -k {self.pg_data} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg_ctl("-l", str(self.pg_data / "server.log"), "-o", options, "-w", "start")
        wait_for(lambda: port_open("127.0.0.1", self.pg_port), "private Postgres")
        dsn = f"postgresql://postgres@127.0.0.1:{self.pg_port}/mess"
        wait_for(lambda: database_ready(dsn), "private Postgres database")

    def stop_postgres(self) -> None:
        # immediate: the way a crashed or evicted server goes, with no goodbye to its clients.
        self._pg_ctl("-m", "immediate", "-w", "stop")

    # --- S3 -----------------------------------------------------------------

    @contextlib.contextmanager
    def running(self) -> Iterator["PrivateBacking"]:
        moto_port = free_port()
        self.moto = Managed("s3", moto_command("127.0.0.1", moto_port), self.root / "s3.log")
        try:
            self.moto.start()
            wait_for(lambda: port_open("127.0.0.1", moto_port), "private S3 endpoint")
            with FlakyS3(f"http://127.0.0.1:{moto_port}").running() as s3:
                self.s3 = s3
                self.start_broker()
                self.start_redis()
                self.start_postgres()
                yield self
        finally:
            for managed in (self.broker, self.redis_server, self.moto):
                if managed is not None:
                    managed.kill()
            if self.pg_data is not None:
                with contextlib.suppress(subprocess.CalledProcessError, StackError):
                    self.stop_postgres()


@contextlib.contextmanager
def private_backing() -> Iterator[PrivateBacking]:
    root = Path(tempfile.mkdtemp(prefix="mess-faults-"))
    try:
        with PrivateBacking(root).running() as backing:
            yield backing
    finally:
        shutil.rmtree(root, ignore_errors=True)
