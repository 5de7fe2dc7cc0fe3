"""The one retry loop: bounded attempts, exponential backoff with jitter.

Every service retries transient failures (a broker, S3 or Postgres blip) the
same way, so the bound on how long a message can be held up is one formula:
at most ``attempts`` tries, waiting up to ``base_s * 2**n`` (capped at
``max_s``) between them. What counts as transient is the caller's to say.
"""

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    attempts: int = 5
    base_s: float = 0.5
    max_s: float = 10.0

    def delay(self, attempt: int) -> float:
        """Jitter between half and all of base * 2**attempt, capped, so retries of many clients spread out."""
        ceiling: float = min(self.max_s, self.base_s * (2**attempt))
        return random.uniform(ceiling / 2, ceiling)


class RetriesExhaustedError(RuntimeError):
    """A transient error outlived every retry."""

    def __init__(self, operation: str, attempts: int, last: BaseException) -> None:
        super().__init__(f"{operation} failed {attempts} times; last error: {type(last).__name__}: {last}")
        self.attempts = attempts


async def retrying(
    operation: str,
    call: Callable[[], Awaitable[T]],
    backoff: Backoff,
    is_transient: Callable[[BaseException], bool],
    on_retry: Callable[[str], None] | None = None,
) -> T:
    """Run ``call``; retry what ``is_transient`` accepts, raise RetriesExhaustedError after the last attempt.

    A permanent error is raised as it is at once: retrying it only delays the
    dead letter it deserves.
    """
    for attempt in range(backoff.attempts):
        try:
            return await call()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt + 1 >= backoff.attempts:
                raise RetriesExhaustedError(operation, backoff.attempts, exc) from exc
            delay = backoff.delay(attempt)
            if on_retry is not None:
                on_retry(operation)
            log.warning(
                "%s failed (%s: %s); retry %d in %.2f s", operation, type(exc).__name__, exc, attempt + 1, delay
            )
            await asyncio.sleep(delay)
    raise RetriesExhaustedError(operation, 0, RuntimeError("no attempts allowed"))
