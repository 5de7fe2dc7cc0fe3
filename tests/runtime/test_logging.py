"""Every log line knows its request and trace; the request id and the trace travel on."""

import asyncio
import json
import logging

import httpx
import pytest
from fastapi import FastAPI

from mess.contracts.events import TrackRemoved
from mess.runtime import kafka
from mess.runtime.logging import REQUEST_ID, JsonFormatter, RequestContext, _Context


def _app(seen: list[tuple[str | None, dict[str, str]]]) -> RequestContext:
    app = FastAPI()

    @app.get("/work")
    async def work() -> dict[str, str]:
        sent: dict[str, str] = {}

        async def send(topic: str, value: bytes, key: bytes, headers: dict[str, str]) -> None:
            sent.update(headers)

        await kafka.publish(send, "t", TrackRemoved(track_id="a-track"))
        seen.append((REQUEST_ID.get(), sent))
        return {}

    return RequestContext(app)


def _get(app: RequestContext, headers: dict[str, str]) -> httpx.Response:
    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.get("/work", headers=headers)

    return asyncio.run(call())


def test_a_sane_request_id_and_trace_are_kept_and_travel_into_events() -> None:
    seen: list[tuple[str | None, dict[str, str]]] = []
    trace = "0af7651916cd43dd8448eb211c80319c"
    answer = _get(_app(seen), {"X-Request-Id": "abc-123", "traceparent": f"00-{trace}-b7ad6b7169203331-01"})
    assert answer.headers["x-request-id"] == "abc-123"
    ((request_id, headers),) = seen
    assert request_id == "abc-123"
    # The same trace, this service's own span.
    assert headers["traceparent"].startswith(f"00-{trace}-") and not headers["traceparent"].endswith(
        "b7ad6b7169203331-01"
    )


@pytest.mark.parametrize("hostile", ["a\nb", "x" * 500, "<script>", ""])
def test_a_request_id_that_could_forge_log_lines_is_replaced(hostile: str) -> None:
    seen: list[tuple[str | None, dict[str, str]]] = []
    answer = _get(_app(seen), {"X-Request-Id": hostile, "traceparent": "garbage"})
    ((request_id, headers),) = seen
    assert request_id != hostile and request_id == answer.headers["x-request-id"]
    assert len(headers["traceparent"].split("-")[1]) == 32


def test_json_lines_carry_the_service_and_request() -> None:
    record = logging.LogRecord("mess.test", logging.WARNING, __file__, 1, "did %s", ("it",), None)
    token = REQUEST_ID.set("req-1")
    try:
        _Context("query").filter(record)
    finally:
        REQUEST_ID.reset(token)
    line = json.loads(JsonFormatter().format(record))
    assert line["service"] == "query" and line["request_id"] == "req-1" and line["message"] == "did it"
    assert line["level"] == "WARNING" and "trace_id" not in line
