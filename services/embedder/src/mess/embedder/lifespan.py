"""The embedder's resources, built in order at start-up and released in reverse.

The model loads first; if it cannot, the process stops with the reason before
any message is consumed. Then the S3 client, the batcher and its threads,
and last the Kafka consumer, so no TrackAdded is taken before everything it
needs is ready.

Shutdown (SIGTERM) runs the same list backwards, so the consumer goes
first: it stops fetching, the poll batch in hand is embedded, its outputs
published and its offsets committed (up to ``shutdown_grace_s``), the
producer is flushed and closed, and only then do the S3 client, the batcher,
its threads and the model go.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

from aiobotocore.session import get_session
from fastapi import FastAPI
from faststream.kafka import KafkaBroker

from mess.embedder import metrics
from mess.embedder.backends import EmbeddingBackend, ModelLoadError, build_backend
from mess.embedder.batching import ChunkBatcher
from mess.embedder.clips import ClipGate
from mess.embedder.config import Settings
from mess.embedder.consumer import AddedTrackHandler, batch_drain_s, build_broker, publisher, subscribe
from mess.embedder.embedding import ChunkPlan, TrackEmbedder
from mess.embedder.storage import CLIENT_CONFIG, AudioStore
from mess.runtime.retry import Backoff
from mess.runtime.termination import Termination

log = logging.getLogger(__name__)


@dataclass
class EmbedderResources:
    """What the routes may look at (readiness, the model's identity)."""

    backend: EmbeddingBackend
    embedder: TrackEmbedder
    batcher: ChunkBatcher
    broker: KafkaBroker
    clips: ClipGate


def chunk_plan(settings: Settings, backend: EmbeddingBackend) -> ChunkPlan:
    seconds = settings.chunk_seconds or backend.default_chunk_seconds
    hop = settings.hop_seconds or seconds
    if hop > seconds:
        raise ModelLoadError(f"hop {hop} s exceeds the chunk length {seconds} s")
    return ChunkPlan(seconds=seconds, hop_seconds=hop)


def load_backend(settings: Settings) -> EmbeddingBackend:
    try:
        return build_backend(settings)
    except ModelLoadError as exc:
        log.critical("the %s model cannot be loaded, stopping: %s", settings.backend, exc)
        raise


async def stop_consuming(
    settings: Settings, broker: KafkaBroker, handler: AddedTrackHandler, termination: Termination
) -> None:
    """Finish and commit the poll batch in hand, fetch nothing more, close the
    consumer and producer; never past ``shutdown_grace_s`` from the signal."""
    termination.request()  # a no-op after SIGTERM; starts the clock when the stop came another way
    if handler.records_in_flight:
        log.info(
            "stopping: fetching no more; finishing the poll batch of %d tracks in hand (up to %.0f s)",
            handler.records_in_flight,
            batch_drain_s(settings),
        )
    else:
        log.info("stopping: fetching no more; no poll batch in hand")
    try:
        # broker.stop() itself bounds the wait for the batch; this bounds the
        # group leave and producer flush after it, so the process always exits.
        async with asyncio.timeout(termination.remaining()):
            await broker.stop()
    except TimeoutError:
        log.error("the Kafka clients did not close within %d s of the signal; exiting", settings.shutdown_grace_s)
        return
    log.info("consumer and producer closed")


def lifespan(settings: Settings) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            # The grace is counted from the signal, not from the end of uvicorn's HTTP drain.
            termination = Termination(settings.shutdown_grace_s)
            stack.enter_context(termination.watch_signals())
            # Loading can take seconds (hashing and reading weights); a worker
            # thread keeps the loop free meanwhile.
            backend = await asyncio.to_thread(load_backend, settings)
            stack.callback(backend.close)
            plan = chunk_plan(settings, backend)

            model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
            stack.callback(model_thread.shutdown, wait=True, cancel_futures=True)
            decode_threads = ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="decode")
            stack.callback(decode_threads.shutdown, wait=True, cancel_futures=True)

            # The internal token is read before anything heavy starts: a bad token file stops the start.
            clips = ClipGate(settings.clip_token(), settings.clip_concurrency, settings.clip_max_bytes)
            batcher = ChunkBatcher(
                backend,
                model_thread,
                settings.batch_size,
                settings.batch_wait_ms / 1000,
                clip_share=settings.clip_batch_share,
            )
            await batcher.start()
            stack.push_async_callback(batcher.stop)

            embedder = TrackEmbedder(
                backend,
                batcher,
                decode_threads,
                plan,
                settings.audio_limits(),
                waveform_pairs=settings.waveform_pairs,
                clip_limits=settings.clip_limits(),
            )
            identity = embedder.identity
            metrics.MODEL.labels(
                name=identity.name,
                revision=identity.revision,
                dim=str(identity.dim),
                pooling=identity.pooling,
                device=backend.device,
            ).set(1)
            log.info("model %s ready on %s", identity.fingerprint(), backend.device)

            client_kwargs: dict[str, Any] = settings.stack.s3_client_kwargs()
            s3 = await stack.enter_async_context(
                get_session().create_client("s3", config=CLIENT_CONFIG, **client_kwargs)
            )
            fetch_backoff = Backoff(settings.fetch_attempts, settings.retry_base_s, settings.retry_max_s)
            store = AudioStore(s3, settings.stack.bucket, fetch_backoff, settings.max_audio_bytes)

            broker = build_broker(settings)
            publish_backoff = Backoff(settings.publish_attempts, settings.retry_base_s, settings.retry_max_s)
            handler = AddedTrackHandler(settings, publisher(broker, publish_backoff), store, embedder)
            subscribe(broker, settings, handler)
            await broker.start()
            stack.push_async_callback(stop_consuming, settings, broker, handler, termination)
            log.info(
                "consuming %s as group %s (poll: %d tracks / %d ms; batch: %d chunks / %d ms)",
                settings.stack.topics.tracks_added,
                settings.consumer_group,
                settings.max_tracks_per_poll,
                settings.poll_wait_ms,
                settings.batch_size,
                settings.batch_wait_ms,
            )
            app.state.resources = EmbedderResources(
                backend=backend, embedder=embedder, batcher=batcher, broker=broker, clips=clips
            )
            yield
            app.state.resources = None

    return cast(Callable[[FastAPI], AbstractAsyncContextManager[None]], run)
