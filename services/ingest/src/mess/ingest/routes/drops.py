"""``/drops``: what became of an object dropped under the bucket's drop prefix."""

from typing import Annotated

from fastapi import APIRouter, Query

from mess.ingest.deps import Resources
from mess.ingest.registry import DropObjectState

router = APIRouter(prefix="/drops", tags=["s3 auto-ingest"])


@router.get("", response_model=DropObjectState, summary="The state of one dropped object")
async def drop_state(
    key: Annotated[
        str,
        # No NUL: no key holding one was ever recorded (Postgres text cannot store it), and asking for one
        # would fail the query itself, which is not an outage but a question without an answer.
        Query(min_length=1, max_length=1024, pattern=r"^[^\x00]+$", description="the object key, e.g. drop/x.wav"),
    ],
    resources: Resources,
) -> DropObjectState:
    """``ingested`` (with its track id), ``rejected`` (with the reason) or ``unknown`` (not handled yet)."""
    return await resources.registry.drop_state(key)
