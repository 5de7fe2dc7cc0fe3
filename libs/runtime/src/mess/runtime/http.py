"""HTTP pieces every service shares: health and metrics routes, and the answer to an unexpected error.

``/health/live`` says the process runs; ``/health/ready`` runs the service's
own checks and answers 503 with what failed; ``/metrics`` is Prometheus text.
``InternalErrors`` turns an exception that no handler took into a 500 whose
body says nothing about the code, the stack or the backing services.
"""

import logging
import re
import uuid
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

ReadinessCheck = Callable[[], Awaitable[dict[str, bool]]]


def health_router(readiness: ReadinessCheck, registry: CollectorRegistry = REGISTRY) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "live"}

    @router.get("/health/ready")
    async def ready() -> JSONResponse:
        checks = await readiness()
        ok = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503
        )

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router


def request_id_of(scope: Scope) -> str:
    """The client's ``X-Request-ID`` when it is a plain token (it is echoed and logged), else a new one."""
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            offered: str = value.decode("latin-1")
            if _REQUEST_ID.fullmatch(offered):
                return offered
            break
    return uuid.uuid4().hex


class InternalErrors:
    """Pure ASGI middleware: an exception that no handler turned into an answer becomes
    ``500 {"detail": "internal error", "request_id": ...}``. The traceback goes to the log under the
    request id, never to the client: exception texts carry SQL, hostnames, paths and bucket names."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_and_note(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception:
            request_id = request_id_of(scope)
            log.exception("internal error answering %s %s (request %s)", scope["method"], scope["path"], request_id)
            if started:
                raise  # part of the answer is out: all the server can do is close the connection
            answer = JSONResponse(
                {"detail": "internal error", "request_id": request_id},
                status_code=500,
                headers={REQUEST_ID_HEADER: request_id},
            )
            await answer(scope, receive, send)
