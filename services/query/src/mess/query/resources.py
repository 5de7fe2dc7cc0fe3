"""The service's heavy resources, opened in the app's lifespan and closed with it.

Nothing here runs at import time: the S3 client, the asyncpg pool, Redis,
the Kafka producer and consumer and the search threads exist only between
start-up and shutdown.

The shutdown runs after uvicorn has answered every request in flight (or
given up on them at the end of the grace period), in this order: the snapshot
follower stops, the search threads end, the analytics queue is flushed to the
broker within what is left of ``shutdown_grace_s`` since SIGTERM, then Redis,
the Postgres pool and the S3 client close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg
import faiss
import httpx
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from redis.asyncio import Redis

from mess.query.analytics import AnalyticsPublisher
from mess.query.catalog import TrackCatalog
from mess.query.clips import ClipEmbedder
from mess.query.config import Settings
from mess.query.media import MediaStore, WaveformRenderer
from mess.query.metrics import QueryMetrics
from mess.query.recommendation_cache import RecommendationCache
from mess.query.recommender import Recommender
from mess.query.searcher import SnapshotSearcher
from mess.query.snapshot_follower import SnapshotFollower
from mess.query.snapshots import SnapshotStore
from mess.query.version_rerank import SnapshotSequences, VersionReranker
from mess.runtime.termination import Termination

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = logging.getLogger(__name__)

# Closing a pool whose connections were all given back is instant; this only bounds a stuck one.
_POOL_CLOSE_S = 5.0


@dataclass
class Resources:
    settings: Settings
    metrics: QueryMetrics
    follower: SnapshotFollower
    catalog: TrackCatalog
    cache: RecommendationCache
    analytics: AnalyticsPublisher
    recommender: Recommender
    media: MediaStore
    waveforms: WaveformRenderer
    clips: ClipEmbedder


async def _keep_session(_: asyncpg.Connection) -> None:
    return None


async def _close_pool(pool: asyncpg.Pool) -> None:
    try:
        await asyncio.wait_for(pool.close(), timeout=_POOL_CLOSE_S)
    except TimeoutError:
        log.warning("Postgres pool did not close within %.0f s; terminating its connections", _POOL_CLOSE_S)
        pool.terminate()


@contextlib.asynccontextmanager
async def open_resources(settings: Settings, metrics: QueryMetrics) -> AsyncIterator[Resources]:
    stack = settings.stack
    faiss.omp_set_num_threads(settings.faiss_omp_threads)
    termination = Termination(settings.shutdown_grace_s)
    async with contextlib.AsyncExitStack() as exits:
        exits.enter_context(termination.watch_signals())
        s3_kwargs: dict[str, Any] = stack.s3_client_kwargs()
        # Two S3 clients, two connection pools: listeners streaming /audio slowly can
        # use up the media pool, never the one snapshot loading (the service's own work) needs.
        s3: S3Client = await exits.enter_async_context(
            get_session().create_client(
                "s3",
                config=AioConfig(max_pool_connections=8, retries={"max_attempts": 2}, signature_version="s3v4"),
                **s3_kwargs,
            )
        )
        media_s3: S3Client = await exits.enter_async_context(
            get_session().create_client(
                "s3",
                config=AioConfig(
                    max_pool_connections=settings.media_s3_connections,
                    retries={"max_attempts": 2},
                    signature_version="s3v4",
                ),
                **s3_kwargs,
            )
        )
        # min_size 0: the pool connects lazily, so a Postgres that is still starting
        # does not stop the service from starting (readiness says so instead).
        pool = await asyncpg.create_pool(
            stack.postgres_dsn,
            min_size=settings.pg_pool_min,
            max_size=settings.pg_pool_max,
            command_timeout=settings.pg_command_timeout_s,
            server_settings={"search_path": stack.postgres_schema},
            # The service only reads and never changes session state, so asyncpg's
            # default reset on release (a round trip per request) buys nothing.
            reset=_keep_session,
        )
        exits.push_async_callback(_close_pool, pool)
        catalog = TrackCatalog(
            pool, metrics, settings.pg_acquire_timeout_s, settings.metadata_cache_size, settings.metadata_cache_ttl_s
        )

        redis: Redis | None = None
        if settings.cache_enabled:
            redis = Redis.from_url(
                stack.redis_url,
                socket_timeout=settings.redis_timeout_s,
                socket_connect_timeout=settings.redis_timeout_s,
                max_connections=64,
            )
            exits.push_async_callback(redis.aclose)
        hmac_key = settings.cache_hmac_key.get_secret_value().encode() if settings.cache_hmac_key else None
        cache = RecommendationCache(
            redis, metrics, settings.cache_ttl_s, settings.redis_timeout_s, settings.redis_retry_s, hmac_key
        )

        analytics = AnalyticsPublisher(settings, metrics)
        await analytics.start()
        exits.push_async_callback(lambda: analytics.stop(termination.remaining()))

        store = SnapshotStore(s3, stack.bucket, settings.snapshot_dir)
        follower = SnapshotFollower(settings, store, metrics, dead_letters=analytics.publish_dead_letter)

        def forget_metadata(_: SnapshotSearcher) -> None:
            # A swap changes which tracks are indexed; cached registry rows may say otherwise.
            catalog.forget_cached()

        follower.on_swap(forget_metadata)
        executor = ThreadPoolExecutor(max_workers=settings.search_threads, thread_name_prefix="mess-search")
        exits.callback(executor.shutdown, wait=True, cancel_futures=True)
        # Expensive strategies get threads of their own: they can only wait on each other.
        strategy_executor = ThreadPoolExecutor(
            max_workers=settings.strategy_threads, thread_name_prefix="mess-strategy"
        )
        exits.callback(strategy_executor.shutdown, wait=True, cancel_futures=True)
        await follower.start()
        exits.push_async_callback(lambda: follower.stop(termination.remaining()))

        recommender = Recommender(
            follower,
            catalog,
            cache,
            analytics,
            metrics,
            executor,
            settings.search_concurrency,
            stack.redis_prefix,
            limits=settings.strategy_limits(),
            strategy_executor=strategy_executor,
            strategy_queue=settings.strategy_queue,
            strategy_wait_s=settings.strategy_wait_s,
            reranker=VersionReranker(SnapshotSequences(), candidates=settings.version_candidates)
            if settings.version_rerank
            else None,
            filter_limits=settings.filter_limits(),
        )
        # The one synchronous call to another service (search by clip): its own small connection pool.
        embedder_client: httpx.AsyncClient | None = None
        if settings.embedder_url:
            embedder_client = httpx.AsyncClient(
                base_url=settings.embedder_url,
                timeout=settings.embedder_timeout_s,
                limits=httpx.Limits(max_connections=settings.embedder_concurrency),
            )
            exits.push_async_callback(embedder_client.aclose)
        clips = ClipEmbedder(
            embedder_client, settings.clip_token(), settings.clip_max_seconds, settings.embedder_concurrency
        )
        media = MediaStore(media_s3, stack.bucket, settings.audio_chunk_bytes)
        waveforms = WaveformRenderer(settings.waveform_render_concurrency, settings.waveform_render_cache)
        exits.callback(waveforms.close)
        log.info(
            "query service started: bucket %s, schema %s, snapshots cached in %s",
            stack.bucket,
            stack.postgres_schema,
            settings.snapshot_dir,
        )
        # Runs first on the way out: starts the grace-period clock if no SIGTERM started it.
        exits.callback(termination.request)
        yield Resources(settings, metrics, follower, catalog, cache, analytics, recommender, media, waveforms, clips)
