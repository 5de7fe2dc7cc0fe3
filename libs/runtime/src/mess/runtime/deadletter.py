"""Building dead letters (TrackFailed) from messages a consumer cannot use.

A poison message must never block its partition: the consumer publishes one
of these with the reason and the original bytes, commits, and moves on.
"""

import json

from mess.contracts.events import FailureStage, TrackFailed
from mess.contracts.ids import is_track_id
from mess.runtime.kafka import Send, publish

# Dead letters must fit in a broker message even when the poison was huge.
MAX_PAYLOAD_CHARS = 64 * 1024


def guess_track_id(raw: bytes | None, key: bytes | None) -> str | None:
    """The track id of a message we could not validate, if one is recognisable."""
    if key:
        text = key.decode("utf-8", errors="replace")
        if is_track_id(text):
            return text
    if raw:
        try:
            body = json.loads(raw)
        except ValueError:
            return None
        if isinstance(body, dict):
            value = body.get("track_id")
            if isinstance(value, str) and is_track_id(value):
                return value
    return None


def dead_letter(
    *,
    stage: FailureStage,
    error_kind: str,
    error: str,
    raw: bytes | None,
    key: bytes | None = None,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    attempts: int = 1,
    track_id: str | None = None,
) -> TrackFailed:
    payload = raw.decode("utf-8", errors="replace") if raw is not None else None
    truncated = payload is not None and len(payload) > MAX_PAYLOAD_CHARS
    return TrackFailed(
        track_id=track_id or guess_track_id(raw, key),
        stage=stage,
        error_kind=error_kind,
        error=error[:4000],
        attempts=attempts,
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        original_key=key.decode("utf-8", errors="replace")[:512] if key else None,
        original_payload=payload[:MAX_PAYLOAD_CHARS] if payload is not None else None,
        original_truncated=truncated,
    )


async def send_dead_letter(send: Send, topic: str, letter: TrackFailed) -> None:
    """The one way every stage sends a dead letter: a TrackFailed event, keyed and
    headed like any other event, so the wire format is the same whoever sends it.
    Raises when the broker did not take it; the caller then must not commit the poison."""
    await publish(send, topic, letter)
