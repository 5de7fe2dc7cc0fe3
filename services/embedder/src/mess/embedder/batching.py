"""Dynamic batching of chunks across tracks.

Tracks arrive one by one (each after its own S3 read and decode); the model is
fastest on full batches. The batcher collects chunks from every waiting track
until it has ``batch_size`` of them or the oldest has waited ``max_wait_s``,
runs one forward in the model's own thread (never on the event loop, so
Kafka heartbeats and HTTP keep flowing), and hands each track its rows back.
A long track simply spans several batches.

Two lanes share the model. ``track`` is the Kafka work; ``clip`` is search by
example (``POST /internal/embed``), where a listener waits on the answer.
While tracks wait, clips take at most ``clip_share`` of a batch (and at least
one row), and they take it first: a clip is never stuck behind a backlog of
tracks, and however many clips arrive the tracks keep the rest of every
forward. With no track waiting, clips may fill whole batches. Clips are
bounded upstream too (a fixed number in flight), so the lane cannot grow
without end.
"""

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from mess.embedder import metrics
from mess.embedder.audio import Chunks
from mess.embedder.backends.base import EmbeddingBackend

log = logging.getLogger(__name__)

Lane = Literal["track", "clip"]


@dataclass
class _Request:
    chunks: Chunks
    future: "asyncio.Future[npt.NDArray[np.float32]]"
    result: npt.NDArray[np.float32]
    lane: Lane = "track"
    next_row: int = 0
    done_rows: int = 0
    enqueued_at: float = field(default_factory=time.monotonic)

    @property
    def waiting_rows(self) -> int:
        return self.chunks.count - self.next_row


class ChunkBatcher:
    def __init__(
        self,
        backend: EmbeddingBackend,
        executor: Executor,
        batch_size: int,
        max_wait_s: float,
        clip_share: float = 0.25,
    ) -> None:
        self.backend = backend
        self.executor = executor
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        # Rows of a batch clips may take while tracks wait: at least one, so clips always move.
        self.clip_rows = max(1, math.floor(batch_size * clip_share))
        self._backlog: deque[_Request] = deque()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="chunk-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for request in self._backlog:
            if not request.future.done():
                request.future.set_exception(RuntimeError("the embedder is shutting down"))
        self._backlog.clear()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def embed(self, chunks: Chunks, lane: Lane = "track") -> npt.NDArray[np.float32]:
        """(chunks, dim) vectors for one track's (or clip's) chunks, in order."""
        if not self.running:
            raise RuntimeError("the chunk batcher is not running")
        loop = asyncio.get_running_loop()
        request = _Request(
            chunks=chunks,
            future=loop.create_future(),
            result=np.zeros((chunks.count, self.backend.chunk_dim), dtype=np.float32),
            lane=lane,
        )
        if chunks.count == 0:
            return request.result
        self._backlog.append(request)
        self._arrived.set()
        return await request.future

    def _waiting_rows(self) -> int:
        return sum(r.waiting_rows for r in self._backlog)

    async def _run(self) -> None:
        while True:
            while not self._backlog:
                self._arrived.clear()
                await self._arrived.wait()
            # A partial batch waits for more chunks, but never longer than the
            # time budget counted from its oldest chunk.
            deadline = self._backlog[0].enqueued_at + self.max_wait_s
            while self._waiting_rows() < self.batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), remaining)
            await self._run_one_batch()

    def _plan_batch(self) -> list[tuple[_Request, int, int]]:
        """(request, first row, end row) of the next batch: clips' share first, then tracks, then clips again
        when tracks left room; within a lane, the oldest first."""
        parts: list[tuple[_Request, int, int]] = []
        taken = 0

        def take(lane: Lane, limit: int) -> None:
            nonlocal taken
            for request in self._backlog:
                if taken >= limit:
                    return
                rows = min(request.waiting_rows, limit - taken)
                # A future already done is a caller that went away (a clip whose client hung up).
                if request.lane != lane or rows <= 0 or request.future.done():
                    continue
                parts.append((request, request.next_row, request.next_row + rows))
                request.next_row += rows
                taken += rows

        tracks_waiting = any(r.lane == "track" and r.waiting_rows for r in self._backlog)
        take("clip", self.clip_rows if tracks_waiting else self.batch_size)
        take("track", self.batch_size)
        take("clip", self.batch_size)
        self._backlog = deque(r for r in self._backlog if r.waiting_rows)
        return parts

    async def _run_one_batch(self) -> None:
        parts = self._plan_batch()
        if not parts:
            return
        audio = np.concatenate([r.chunks.audio[a:b] for r, a, b in parts])
        lengths = np.concatenate([r.chunks.lengths[a:b] for r, a, b in parts])
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            vectors = await loop.run_in_executor(self.executor, self.backend.embed_chunks, audio, lengths)
        except Exception as exc:  # a failed forward fails its tracks, not the batcher
            log.exception("model forward failed on a batch of %d chunks", audio.shape[0])
            for request, _, _ in parts:
                if not request.future.done():
                    request.future.set_exception(exc)
                request.next_row = request.chunks.count  # nothing more of it is run
            self._backlog = deque(r for r in self._backlog if not r.future.done())
            return
        metrics.BATCH_CHUNKS.observe(audio.shape[0])
        metrics.FORWARD_SECONDS.observe(time.perf_counter() - started)
        offset = 0
        for request, begin, end in parts:
            request.result[begin:end] = vectors[offset : offset + (end - begin)]
            offset += end - begin
            request.done_rows += end - begin
            if request.done_rows == request.chunks.count and not request.future.done():
                request.future.set_result(request.result)
