"""`/health/live`, `/health/ready` and `/metrics`.

Readiness has one hard check (a snapshot is loaded) and soft ones (Postgres,
Redis, the analytics broker). A failed soft check leaves the replica ready,
with status "degraded" and the failed parts listed: it still answers
recommendations from the snapshot, only uncached, without analytics events,
or (Postgres down) without metadata. Taking every replica out of the Service
because the shared Postgres restarts would turn a degraded answer into none.
"""

import asyncio
import re

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mess.query.deps import ResourcesDep

router = APIRouter(tags=["operations"])

_VERSION = re.compile(r"[0-9A-Za-z._-]{1,64}")


@router.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "live"}


@router.get("/health/ready")
async def ready(resources: ResourcesDep) -> JSONResponse:
    snapshot = resources.follower.current
    postgres, redis = await asyncio.gather(resources.catalog.ping(), resources.cache.ping())
    hard = {"snapshot": snapshot is not None}
    soft: dict[str, bool] = {"postgres": postgres}
    if resources.cache.enabled:
        soft["redis"] = redis
    if resources.settings.analytics_enabled:
        soft["analytics_broker"] = resources.analytics.connected
    ok = all(hard.values())
    degraded = sorted(name for name, passed in soft.items() if not passed)
    status = "not ready" if not ok else ("degraded" if degraded else "ready")
    body = {
        "status": status,
        "checks": {**hard, **soft},
        "degraded": degraded,
        "snapshot_version": snapshot.version if snapshot is not None else None,
        "vectors": snapshot.vector_count if snapshot is not None else 0,
        # Versions only, with a stable code: the refusal texts name URIs and keys, and go to the log.
        "refused_snapshots": [
            {"version": version, "reason": "snapshot_refused"}
            for version in sorted(resources.follower.refused)
            if _VERSION.fullmatch(version)
        ],
    }
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics")
async def metrics(resources: ResourcesDep) -> Response:
    return Response(generate_latest(resources.metrics.registry), media_type=CONTENT_TYPE_LATEST)
