"""The chunk batcher: chunks of many tracks share model batches, within a size and a time budget."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mess.embedder.audio import Chunks
from mess.embedder.backends.base import ChunkBatch, ChunkLengths, ChunkVectors, EmbeddingBackend
from mess.embedder.batching import ChunkBatcher


class RecordingFakeModel(EmbeddingBackend):
    """Returns each chunk's first sample and length, and records every batch it was given."""

    name = "fake"
    revision = "0"
    dim = 2
    pooling = "none"
    sample_rate = 1000
    default_chunk_seconds = 0.01
    min_chunk_samples = 1

    def __init__(self, fail_on: float | None = None) -> None:
        self.batches: list[int] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on

    def embed_chunks(self, chunks: ChunkBatch, lengths: ChunkLengths) -> ChunkVectors:
        self.batches.append(chunks.shape[0])
        self.threads.add(threading.current_thread().name)
        if self.fail_on is not None and np.any(chunks[:, 0] == self.fail_on):
            raise RuntimeError("the fake model fails on this chunk")
        return np.stack([chunks[:, 0], lengths.astype(np.float32)], axis=1).astype(np.float32)


def track(first_values: list[float], samples: int = 10) -> Chunks:
    audio = np.zeros((len(first_values), samples), dtype=np.float32)
    audio[:, 0] = first_values
    return Chunks(audio=audio, lengths=np.full(len(first_values), samples, dtype=np.int64))


async def test_chunks_of_several_tracks_share_batches_with_fake_model() -> None:
    model = RecordingFakeModel()
    with ThreadPoolExecutor(1, thread_name_prefix="model") as pool:
        batcher = ChunkBatcher(model, pool, batch_size=8, max_wait_s=0.2)
        await batcher.start()
        try:
            tracks = [track([1, 2, 3, 4, 5]), track([10, 11, 12, 13, 14, 15, 16]), track([20, 21])]
            results = await asyncio.gather(*(batcher.embed(t) for t in tracks))
        finally:
            await batcher.stop()
    # 14 chunks in batches of at most 8, oldest track first; every track gets its own rows back in order.
    assert sum(model.batches) == 14
    assert max(model.batches) == 8
    assert len(model.batches) == 2
    for chunks, vectors in zip(tracks, results, strict=True):
        assert vectors[:, 0].tolist() == chunks.audio[:, 0].tolist()
    # The model ran in its own thread, never on the event loop's.
    assert all(name.startswith("model") for name in model.threads)


async def test_partial_batch_runs_when_the_time_budget_is_spent_with_fake_model() -> None:
    model = RecordingFakeModel()
    with ThreadPoolExecutor(1) as pool:
        batcher = ChunkBatcher(model, pool, batch_size=64, max_wait_s=0.05)
        await batcher.start()
        try:
            result = await asyncio.wait_for(batcher.embed(track([7.0])), timeout=5)
        finally:
            await batcher.stop()
    assert model.batches == [1]
    assert result[0, 0] == 7.0


async def test_long_track_spans_several_batches_with_fake_model() -> None:
    model = RecordingFakeModel()
    with ThreadPoolExecutor(1) as pool:
        batcher = ChunkBatcher(model, pool, batch_size=4, max_wait_s=0.01)
        await batcher.start()
        try:
            result = await batcher.embed(track([float(i) for i in range(10)]))
        finally:
            await batcher.stop()
    assert model.batches == [4, 4, 2]
    assert result[:, 0].tolist() == [float(i) for i in range(10)]


async def test_failed_forward_fails_its_tracks_and_the_batcher_goes_on_with_fake_model() -> None:
    model = RecordingFakeModel(fail_on=99.0)
    with ThreadPoolExecutor(1) as pool:
        batcher = ChunkBatcher(model, pool, batch_size=2, max_wait_s=0.01)
        await batcher.start()
        try:
            with pytest.raises(RuntimeError, match="fake model fails"):
                await batcher.embed(track([99.0]))
            assert batcher.running
            healthy = await batcher.embed(track([1.0, 2.0, 3.0]))
        finally:
            await batcher.stop()
    assert healthy[:, 0].tolist() == [1.0, 2.0, 3.0]


class SlowFakeModel(RecordingFakeModel):
    def embed_chunks(self, chunks: ChunkBatch, lengths: ChunkLengths) -> ChunkVectors:
        time.sleep(1.0)  # a long GPU batch, as the model thread sees it
        return super().embed_chunks(chunks, lengths)


async def test_event_loop_keeps_running_during_a_long_forward_with_fake_model() -> None:
    """Kafka heartbeats and HTTP are served by the event loop; a forward must never block it."""
    model = SlowFakeModel()
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.02)
            ticks += 1

    with ThreadPoolExecutor(1) as pool:
        batcher = ChunkBatcher(model, pool, batch_size=4, max_wait_s=0.0)
        await batcher.start()
        beats = asyncio.create_task(heartbeat())
        try:
            await batcher.embed(track([1.0]))
        finally:
            beats.cancel()
            await batcher.stop()
    # About 50 ticks fit in one second; a blocked loop would manage one or two.
    assert ticks >= 20


async def test_clips_take_their_share_of_every_batch_and_tracks_keep_the_rest_with_fake_model() -> None:
    class Recording(RecordingFakeModel):
        def __init__(self) -> None:
            super().__init__()
            self.firsts: list[list[float]] = []

        def embed_chunks(self, chunks: ChunkBatch, lengths: ChunkLengths) -> ChunkVectors:
            self.firsts.append(chunks[:, 0].tolist())
            return super().embed_chunks(chunks, lengths)

    model = Recording()
    with ThreadPoolExecutor(1) as pool:
        # A quarter of 8 rows: 2 a batch for clips while tracks wait.
        batcher = ChunkBatcher(model, pool, batch_size=8, max_wait_s=0.05, clip_share=0.25)
        await batcher.start()
        try:
            backlog = track([float(v) for v in range(1, 21)])  # 20 chunks from Kafka, queued first
            clip = track([100.0 + v for v in range(6)])  # a listener's clip, 6 chunks
            tracks_done, clip_done = await asyncio.gather(batcher.embed(backlog), batcher.embed(clip, "clip"))
        finally:
            await batcher.stop()
    assert tracks_done[:, 0].tolist() == backlog.audio[:, 0].tolist()
    assert clip_done[:, 0].tolist() == clip.audio[:, 0].tolist()
    clip_rows = [sum(v >= 100 for v in batch) for batch in model.firsts]
    # The clip moved in the very first batch though 20 track chunks were ahead of it, and never took more
    # than its share while tracks waited: 2 + 2 + 2, with the tracks getting 6 of every 8 rows meanwhile.
    assert clip_rows[:3] == [2, 2, 2]
    assert [len(batch) - rows for batch, rows in zip(model.firsts[:3], clip_rows[:3], strict=True)] == [6, 6, 6]
    assert sum(clip_rows) == 6
