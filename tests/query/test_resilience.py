"""Degraded modes and shared work: Redis down, broker down, Postgres pool exhausted,
single-flight on concurrent misses, and the analytics events themselves."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer
from redis.asyncio import Redis

from mess.contracts.events import RecommendationServed
from mess.dev.stack import free_port
from mess.query.metrics import QueryMetrics
from mess.query.recommendation_cache import RecommendationCache
from mess.runtime.endpoints import StackSettings

from .conftest import Catalogue, StartQuery, apply_registry, eventually, insert_tracks
from .snapshot_writer import SnapshotWriter


async def _prepare(stack: StackSettings, writer: SnapshotWriter, catalogue: Catalogue) -> str:
    await apply_registry(stack)
    await insert_tracks(stack, catalogue.rows)
    return writer.write(1, catalogue.shards(2), dim=16).version


async def test_with_redis_down_answers_uncached_and_reports_degraded(
    stack: StackSettings, start_query: StartQuery, writer: SnapshotWriter, catalogue: Catalogue
) -> None:
    version = await _prepare(stack, writer, catalogue)
    nothing_there = stack.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    async with start_query(stack=nothing_there) as query:
        await query.wait_for_version(version)
        url = f"/recommend/{catalogue.ids[0]}"
        first = await query.client.get(url, params={"k": 3})
        second = await query.client.get(url, params={"k": 3})
        assert (first.status_code, second.status_code) == (200, 200)
        assert (first.json()["cached"], second.json()["cached"]) == (False, False)
        assert first.json()["recommendations"] == second.json()["recommendations"]
        ready = await query.client.get("/health/ready")
        assert ready.status_code == 200
        assert ready.json()["status"] == "degraded"
        assert ready.json()["degraded"] == ["redis"]
        assert query.metric("mess_query_cache_errors_total") >= 1


async def test_with_the_broker_down_serves_from_latest_and_counts_dropped_analytics(
    stack: StackSettings, start_query: StartQuery, writer: SnapshotWriter, catalogue: Catalogue
) -> None:
    version = await _prepare(stack, writer, catalogue)
    no_broker = stack.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    async with start_query(stack=no_broker) as query:
        await query.wait_for_version(version)  # from the LATEST read, with no broker at all
        for k in (2, 3, 4):
            response = await query.client.get(f"/recommend/{catalogue.ids[1]}", params={"k": k})
            assert response.status_code == 200
        assert query.metric("mess_query_analytics_dropped_total", {"reason": "broker_unavailable"}) == 3
        ready = (await query.client.get("/health/ready")).json()
        assert ready["status"] == "degraded"
        assert ready["degraded"] == ["analytics_broker"]


async def test_an_exhausted_postgres_pool_gives_a_quick_503(
    stack: StackSettings, start_query: StartQuery, writer: SnapshotWriter, catalogue: Catalogue
) -> None:
    version = await _prepare(stack, writer, catalogue)
    async with start_query(pg_pool_max=1, pg_acquire_timeout_s=0.2) as query:
        await query.wait_for_version(version)
        held = await query.resources.catalog.pool.acquire()
        try:
            listing = await query.client.get("/tracks")
            assert listing.status_code == 503
            assert "busy" in listing.json()["detail"]
            assert listing.headers["retry-after"] == "1"
            # A recommendation needs only the snapshot: it is answered, marked degraded, not cached.
            recommend = await query.client.get(f"/recommend/{catalogue.ids[2]}")
            assert recommend.status_code == 200
            assert recommend.json()["degraded"] is True
            assert recommend.json()["cached"] is False
            assert recommend.json()["recommendations"][0]["title"] is None
        finally:
            await query.resources.catalog.pool.release(held)
        assert (await query.client.get("/tracks")).status_code == 200
        again = await query.client.get(f"/recommend/{catalogue.ids[2]}")
        assert again.json()["degraded"] is False
        assert again.json()["cached"] is False  # the degraded answer was never stored
        assert again.json()["recommendations"][0]["title"] is not None
        assert query.metric("mess_query_postgres_busy_total") == 2
        assert query.metric("mess_query_recommendations_degraded_total") == 1


async def test_concurrent_identical_requests_compute_once(
    stack: StackSettings, start_query: StartQuery, writer: SnapshotWriter, catalogue: Catalogue
) -> None:
    version = await _prepare(stack, writer, catalogue)
    async with start_query() as query:
        await query.wait_for_version(version)
        url = f"/recommend/{catalogue.ids[4]}"
        responses = await asyncio.gather(
            *(query.client.get(url, params={"k": 5, "strategy": "diverse"}) for _ in range(12))
        )
        assert {r.status_code for r in responses} == {200}
        bodies = [r.json()["recommendations"] for r in responses]
        assert all(b == bodies[0] for b in bodies)
        assert query.metric("mess_query_recommendations_computed_total", {"strategy": "diverse"}) == 1


async def test_single_flight_shares_one_computation_through_real_redis(stack: StackSettings) -> None:
    redis = Redis.from_url(stack.redis_url)
    cache = RecommendationCache(redis, QueryMetrics(), ttl_s=60, timeout_s=1.0, retry_s=5.0)
    calls = 0

    async def compute() -> tuple[bytes, bool]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.2)  # a slow search, so the other requests arrive meanwhile
        return b'{"recommendations":[]}', True

    key = f"{stack.redis_prefix}rec:test"
    try:
        results = await asyncio.gather(*(cache.get_or_compute(key, compute) for _ in range(20)))
        assert calls == 1
        assert results == [(b'{"recommendations":[]}', False)] * 20
        assert await cache.get_or_compute(key, compute) == (b'{"recommendations":[]}', True)
        assert await redis.ttl(key) > 0
    finally:
        await redis.delete(key)
        await redis.aclose()


async def test_every_served_recommendation_is_published_for_analytics(
    stack: StackSettings, start_query: StartQuery, writer: SnapshotWriter, catalogue: Catalogue
) -> None:
    version = await _prepare(stack, writer, catalogue)
    async with start_query() as query:
        await query.wait_for_version(version)
        await eventually(lambda: query.resources.analytics.connected, "the analytics producer")
        url = f"/recommend/{catalogue.ids[6]}"
        first = (await query.client.get(url, params={"k": 3}, headers={"X-Request-ID": "req-1"})).json()
        await query.client.get(url, params={"k": 3}, headers={"X-Request-ID": "req-2"})
        await eventually(lambda: query.metric("mess_query_analytics_published_total") == 2, "two deliveries")

    consumer = AIOKafkaConsumer(
        stack.topics.recommendations_served,
        bootstrap_servers=stack.kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=f"{stack.topic_prefix}analytics-reader",
    )
    await consumer.start()
    events: dict[str, RecommendationServed] = {}
    try:
        async with asyncio.timeout(20):
            while len(events) < 2:
                record = await consumer.getone()
                event = RecommendationServed.from_bytes(record.value)
                events[event.request_id] = event
                assert record.key == catalogue.ids[6].encode()
    finally:
        await consumer.stop()
    assert (events["req-1"].cached, events["req-2"].cached) == (False, True)
    served = events["req-1"]
    assert served.snapshot_version == version
    assert served.request.k == 3 and served.request.strategy == "similar"
    assert [r.track_id for r in served.results] == [r["track_id"] for r in first["recommendations"]]
    assert [r.rank for r in served.results] == [1, 2, 3]


async def test_without_the_registry_table_or_postgres_the_answers_say_why(
    stack: StackSettings, start_query: StartQuery, writer: SnapshotWriter
) -> None:
    version = writer.write_empty(1).version
    async with start_query() as query:  # the schema has no tracks table: ingest has not migrated yet
        await query.wait_for_version(version)
        listing = await query.client.get("/tracks")
        assert listing.status_code == 503
        assert "no tracks table yet" in listing.json()["detail"]

    no_postgres = stack.model_copy(update={"postgres_dsn": f"postgresql://postgres@127.0.0.1:{free_port()}/mess"})
    async with start_query(stack=no_postgres) as query:
        await query.wait_for_version(version)
        listing = await query.client.get("/tracks")
        assert listing.status_code == 503
        assert "unreachable" in listing.json()["detail"]
        ready = await query.client.get("/health/ready")
        assert ready.status_code == 200  # still answers recommendations from the snapshot
        assert ready.json()["status"] == "degraded"
        assert ready.json()["degraded"] == ["postgres"]
        assert ready.json()["checks"]["postgres"] is False
        assert ready.json()["checks"]["snapshot"] is True
