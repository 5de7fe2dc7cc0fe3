"""The single logging setup, and the request and trace ids every log line carries.

``text`` (the default) is one line per record for people; ``json`` (``MESS_LOG_FORMAT=json``) is one
JSON object per record for log pipelines (CloudWatch, Loki), with the service, the request id and the
W3C trace id of the request being handled, so a request can be followed across services and into the
events it caused (``mess.runtime.kafka.publish`` forwards the ``traceparent``).
"""

import contextvars
import json
import logging
import re
import secrets
import sys
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("mess_request_id", default=None)
TRACEPARENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("mess_traceparent", default=None)

# What a client may choose as its request id: short and printable, so it can never forge log lines.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# W3C Trace Context, version 00: https://www.w3.org/TR/trace-context/#traceparent-header
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


class _Context(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        record.request_id = REQUEST_ID.get() or "-"
        traceparent = TRACEPARENT.get()
        record.trace_id = traceparent.split("-")[1] if traceparent else "-"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": getattr(record, "service", None),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "trace_id"):
            value = getattr(record, key, "-")
            if value != "-":
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(service: str, level: str = "INFO", log_format: str = "text") -> None:
    root = logging.getLogger()
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_Context(service))
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(service)s %(name)s [%(request_id)s] %(message)s")
        )
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiokafka logs every reconnect attempt at ERROR; one warning is enough.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))


class RequestContext:
    """ASGI middleware: each request gets an id (the client's ``X-Request-Id`` when it is sane, else a new
    one) and a W3C trace context (the client's ``traceparent``, else a new trace), both visible to every log
    line and event published while it is handled, and the id is echoed in the answer's ``X-Request-Id``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name: value for name, value in scope.get("headers", []) if name in (b"x-request-id", b"traceparent")}
        asked = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = asked if _REQUEST_ID.match(asked) else secrets.token_hex(8)
        given = headers.get(b"traceparent", b"").decode("latin-1").lower()
        match = _TRACEPARENT.match(given)
        trace_id = match.group(1) if match and match.group(1) != "0" * 32 else secrets.token_hex(16)
        # This service's own span within the caller's trace.
        traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
        request_token = REQUEST_ID.set(request_id)
        trace_token = TRACEPARENT.set(traceparent)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [
                    *[(k, v) for k, v in message["headers"] if k.lower() != b"x-request-id"],
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(request_token)
            TRACEPARENT.reset(trace_token)
