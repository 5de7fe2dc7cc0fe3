"""What every service does about hostile or slow clients, before a route sees the request.

Two layers, both installed by ``mess.runtime.serving.serve`` so ingest and
query get the same:

- ``GuardedH11Protocol`` (the connection): a deadline for a request's headers
  from its first byte (and for an idle new connection), so partial headers
  cannot hold a connection open; and a limit on open connections per client
  address.
- ``ClientGuard`` (ASGI, per request): a per-client limit on requests in
  flight; request bodies must keep arriving (an idle deadline between chunks
  and a minimum average rate after a grace period) and responses must keep
  being read (a deadline per chunk sent); header values a parser would choke
  on are answered 4xx with a reason (a multipart boundary over RFC 2046's 70
  characters, an over-long ``Range``). A client cut for slowness is answered
  408 when nothing was sent yet; the app sees it as a disconnect and lets go
  of what it held (an upload slot, an S3 connection).

Also ``readable_validation_errors``: FastAPI's 422 echoes the offending input,
and Starlette's JSON refuses NaN and infinities, so a body holding ``NaN``
turned a 422 into a 500; non-finite inputs are spelled as strings instead.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import h11
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

# RFC 2046 section 5.1.1: a boundary is 1 to 70 characters.
MAX_BOUNDARY = 70
# A single byte range fits in far less; 5,000 digits made int() refuse to parse it.
MAX_RANGE_HEADER = 200
_BOUNDARY = re.compile(r"""boundary\s*=\s*("[^"]*"|[^;\s]*)""", re.IGNORECASE)


@dataclass(frozen=True)
class ClientLimits:
    """Deadlines and per-client limits; ``serve`` takes them from each service's settings or the defaults."""

    header_timeout_s: float = 10.0  # from a request's first byte (or the connection's opening) to its last header
    body_idle_s: float = 10.0  # longest wait for the next chunk of a request body
    body_grace_s: float = 5.0  # before the minimum rate applies (a slow start is normal)
    min_body_rate: float = 8 * 1024.0  # bytes a second, averaged over the body so far, after the grace
    send_idle_s: float = 30.0  # longest a response chunk may wait for the client to read
    connections_per_client: int = 64
    requests_per_client: int = 32  # in flight at once, from one address
    # Request line plus headers. h11 only bounds a head that is still incomplete, so a long
    # line that arrives whole in one read would otherwise reach the app.
    max_request_head: int = 16 * 1024


class SlowClientError(Exception):
    """The client stopped sending its body, or reading the answer, within the deadlines."""


def client_of(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _too_long_boundary(content_type: str) -> bool:
    if not content_type.lower().startswith("multipart/"):
        return False
    match = _BOUNDARY.search(content_type)
    return match is not None and len(match.group(1).strip('"')) > MAX_BOUNDARY


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class ClientGuard:
    """Pure ASGI middleware; see the module docstring."""

    def __init__(self, app: ASGIApp, limits: ClientLimits | None = None) -> None:
        self.app = app
        self.limits = limits or ClientLimits()
        self._in_flight: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            status, code, reason = refusal
            await JSONResponse({"detail": reason, "error": code}, status_code=status)(scope, receive, send)
            return
        client = client_of(scope)
        if self._in_flight.get(client, 0) >= self.limits.requests_per_client:
            answer = JSONResponse(
                {"detail": "too many requests in flight from this client; try again shortly", "error": "busy_client"},
                status_code=429,
                headers={"Retry-After": "1"},
            )
            await answer(scope, receive, send)
            return
        self._in_flight[client] = self._in_flight.get(client, 0) + 1
        try:
            await self._guarded(scope, receive, send)
        finally:
            left = self._in_flight[client] - 1
            if left:
                self._in_flight[client] = left
            else:
                del self._in_flight[client]  # the table holds only clients with requests in flight

    def _refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        """(status, stable code, sentence) for a request no route should see."""
        content_type = _header(scope, b"content-type")
        if content_type is not None and _too_long_boundary(content_type):
            reason = f"the multipart boundary is longer than {MAX_BOUNDARY} characters (RFC 2046)"
            return 400, "bad_multipart_boundary", reason
        byte_range = _header(scope, b"range")
        if byte_range is not None and len(byte_range) > MAX_RANGE_HEADER:
            return 416, "bad_range", f"the Range header is longer than {MAX_RANGE_HEADER} characters"
        return None

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        limits = self.limits
        started = time.monotonic()
        received = 0
        cut: str | None = None
        response_started = False

        async def timed_receive() -> Message:
            nonlocal received, cut
            if cut is not None:
                return {"type": "http.disconnect"}
            try:
                async with asyncio.timeout(limits.body_idle_s):
                    message = await receive()
            except TimeoutError:
                cut = f"no part of the request body arrived for {limits.body_idle_s:g} s"
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                elapsed = time.monotonic() - started
                slow = received / elapsed < limits.min_body_rate if elapsed > 0 else False
                if message.get("more_body", False) and elapsed > limits.body_grace_s and slow:
                    cut = (
                        f"the request body arrived at {received / elapsed:.0f} B/s; "
                        f"at least {limits.min_body_rate:.0f} B/s is needed"
                    )
                    return {"type": "http.disconnect"}
            return message

        async def timed_send(message: Message) -> None:
            nonlocal response_started
            if cut is not None:
                return  # the app's answer to the disconnect it was shown; ours goes out below
            if message["type"] == "http.response.start":
                response_started = True
            try:
                async with asyncio.timeout(limits.send_idle_s):
                    await send(message)
            except TimeoutError:
                raise SlowClientError(f"the client read nothing for {limits.send_idle_s:g} s") from None

        try:
            await self.app(scope, timed_receive, timed_send)
        except SlowClientError as exc:
            log.info("cut a slow client %s on %s %s: %s", client_of(scope), scope["method"], scope["path"], exc)
            return  # part of the answer is out; uvicorn closes the connection
        except Exception:
            if cut is None:
                raise
            # The app failed on the disconnect it was shown; the client gets our reason below.
        if cut is not None:
            log.info("cut a slow client %s on %s %s: %s", client_of(scope), scope["method"], scope["path"], cut)
            if not response_started:
                body = {"detail": cut, "error": "slow_client"}
                answer = JSONResponse(body, status_code=408, headers={"Connection": "close"})
                await answer(scope, receive, send)


_TIMEOUT_408 = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_URI_TOO_LONG = b"HTTP/1.1 414 URI Too Long\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_HEAD_TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_TOO_MANY = b"HTTP/1.1 429 Too Many Requests\r\nConnection: close\r\nContent-Length: 0\r\nRetry-After: 1\r\n\r\n"


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a header deadline and a per-client connection limit.

    ``limits`` and the shared connection table are set on the class by ``protocol_class``.
    """

    limits: ClientLimits = ClientLimits()
    open_per_client: dict[str, int] = {}  # noqa: RUF012 - replaced per server by protocol_class

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._line_bytes = 0
        self._line_done = False
        self._client_key = str(self.client[0]) if self.client else "unknown"
        count = self.open_per_client.get(self._client_key, 0) + 1
        self.open_per_client[self._client_key] = count
        if count > self.limits.connections_per_client:
            log.info("refused a connection from %s: %d open", self._client_key, count - 1)
            transport.write(_TOO_MANY)
            transport.close()
            return
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        left = self.open_per_client.get(self._client_key, 1) - 1
        if left > 0:
            self.open_per_client[self._client_key] = left
        else:
            self.open_per_client.pop(self._client_key, None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE and self._head_too_large(data):
            return
        super().data_received(data)
        # Still before the end of a request's headers: the clock runs from the first byte.
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._arm_header_timer()
        else:
            self._cancel_header_timer()

    def _head_too_large(self, data: bytes) -> bool:
        """Count the bytes of the request head (not its body) and refuse a head over the limit:
        414 while the request line is still unfinished, 431 for the headers."""
        end = data.find(b"\r\n\r\n")
        head = data if end < 0 else data[:end]
        if not self._line_done:
            newline = head.find(b"\n")
            self._line_bytes += len(head) if newline < 0 else newline
            self._line_done = newline >= 0
        self._head_bytes += len(head)
        if self._head_bytes > self.limits.max_request_head:
            too_long_line = self._line_bytes > self.limits.max_request_head
            self.transport.write(_URI_TOO_LONG if too_long_line else _HEAD_TOO_LARGE)
            self.transport.close()
            return True
        if end >= 0:  # the next request on this connection starts afresh
            self._head_bytes, self._line_bytes, self._line_done = 0, 0, False
        return False

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        # A request that is being answered has left IDLE; this one never finished its headers.
        waiting = self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)
        if waiting and not self.transport.is_closing():
            self.transport.write(_TIMEOUT_408)
            self.transport.close()


def protocol_class(limits: ClientLimits) -> type[GuardedH11Protocol]:
    """A protocol class bound to ``limits``, with its own table of open connections per client."""
    return type("BoundGuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits, "open_per_client": {}})


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # 'nan', 'inf': JSON has no spelling for them
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return JSONResponse({"detail": _finite(jsonable_encoder(errors))}, status_code=422)


def readable_validation_errors(app: FastAPI) -> None:
    """422 bodies that can always be written: non-finite inputs are echoed as strings."""
    handler: Callable[[Request, Exception], Awaitable[JSONResponse]] = _validation_error
    app.add_exception_handler(RequestValidationError, handler)
