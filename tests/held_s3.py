"""An S3 endpoint that passes every request through to the real one (moto)
and can hold chosen requests until the test lets them go.

Shutdown tests point a service's ``MESS_S3_ENDPOINT_URL`` here to catch it in
the middle of its work without sleeps: a request matching ``hold`` (say, the
GET of a track's audio) waits, so the test knows the work has started and
cannot have finished; it sends SIGTERM, checks the process is still
finishing, then releases the requests and the work completes against the
real endpoint. Nothing is answered here: status, headers and body are the
real endpoint's.
"""

import http.client
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# Headers about one hop, not the request: the forwarded request sets its own.
HOP_BY_HOP = {
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
HOLD_LIMIT_S = 120.0  # a test that forgets to release must not hang for ever


@dataclass
class HeldS3:
    """``hold(method, path)`` says which requests wait for ``release()``."""

    upstream: str
    hold: Callable[[str, str], bool]
    seen: list[tuple[str, str]] = field(default_factory=list)
    held: list[tuple[str, str]] = field(default_factory=list)
    _released: threading.Event = field(default_factory=threading.Event)
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def release(self) -> None:
        """Let every held request (and every later one) through."""
        self._released.set()

    def wait_held(self, count: int, timeout: float = 60.0) -> list[tuple[str, str]]:
        """Block until ``count`` requests are being held; returns them."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.held) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{len(self.held)} requests held, not {count}; seen: {self.seen}")
                self._changed.wait(remaining)
            return list(self.held)

    def _record(self, method: str, path: str, *, held: bool) -> None:
        with self._changed:
            self.seen.append((method, path))
            if held:
                self.held.append((method, path))
            self._changed.notify_all()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self
        upstream = urlsplit(self.upstream)

        class PassThrough(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as botocore expects

            def log_message(self, format: str, *args: object) -> None:
                del format, args  # quiet: the test's output is the service's log

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _pass_through(self) -> None:
                body = self._body()
                path = urlsplit(self.path).path
                held = endpoint.hold(self.command, path)
                endpoint._record(self.command, path, held=held)
                if held:
                    endpoint._released.wait(HOLD_LIMIT_S)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                headers["Content-Length"] = str(len(body))
                connection = http.client.HTTPConnection(upstream.hostname or "127.0.0.1", upstream.port, timeout=60)
                try:
                    connection.request(self.command, self.path, body=body, headers=headers)
                    response = connection.getresponse()
                    payload = response.read()
                    self.send_response(response.status, response.reason)
                    for key, value in response.getheaders():
                        if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                            self.send_header(key, value)
                    length = response.getheader("Content-Length") if self.command == "HEAD" else None
                    self.send_header("Content-Length", length or str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                finally:
                    connection.close()

            # http.server dispatches on these names.
            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _pass_through  # noqa: N815

        return PassThrough

    @contextmanager
    def running(self) -> Iterator["HeldS3"]:
        server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        server.daemon_threads = True
        self._server = server
        thread = threading.Thread(target=server.serve_forever, name="held-s3", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.release()
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)
