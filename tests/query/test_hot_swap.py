"""Ten snapshot swaps under a steady stream of requests: none fails, and every answer
matches the snapshot that the response says served it."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from mess.runtime.endpoints import StackSettings

from .conftest import StartQuery, apply_registry, build_catalogue, eventually, insert_tracks
from .snapshot_writer import SnapshotWriter

SWAPS = 10
REFERENCES = 6
K = 5


def _served_some(served_by: Counter[str], version: str) -> Callable[[], bool]:
    return lambda: served_by[version] >= 3


async def test_ten_swaps_under_concurrent_requests(
    stack: StackSettings, start_query: StartQuery, writer: SnapshotWriter
) -> None:
    # Same tracks in every version, different vectors, so each version has its own answers.
    versions = {number: build_catalogue(seed=number) for number in range(1, SWAPS + 2)}
    base = versions[1]
    references = base.ids[:: len(base.ids) // REFERENCES][:REFERENCES]
    expected = {
        f"{number:012d}": {ref: catalogue.expected_neighbours(ref, K) for ref in references}
        for number, catalogue in versions.items()
    }
    assert len({tuple(e[references[0]]) for e in expected.values()}) > SWAPS / 2  # versions really differ

    await apply_registry(stack)
    await insert_tracks(stack, base.rows)
    first = writer.write(1, base.shards(2), dim=16)

    failures: list[str] = []
    mismatches: list[str] = []
    served_by: Counter[str] = Counter()
    stop = asyncio.Event()

    async with start_query() as query:
        await query.wait_for_version(first.version)

        async def listener(worker: int) -> None:
            turn = worker
            while not stop.is_set():
                reference = references[turn % len(references)]
                turn += 1
                response = await query.client.get(f"/recommend/{reference}", params={"k": K})
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")
                    continue
                body = response.json()
                version = body["snapshot_version"]
                served_by[version] += 1
                got = [p["track_id"] for p in body["recommendations"]]
                if got != expected[version][reference]:
                    mismatches.append(f"{reference} on {version}: {got} != {expected[version][reference]}")

        workers = [asyncio.create_task(listener(w)) for w in range(4)]
        try:
            for number in range(2, SWAPS + 2):
                shards = versions[number].shards(2 + number % 3)
                manifest = await asyncio.to_thread(writer.write, number, shards, 16)
                await writer.announce(manifest)
                await query.wait_for_version(manifest.version)
                await eventually(_served_some(served_by, manifest.version), f"requests served by {manifest.version}")
        finally:
            stop.set()
            await asyncio.gather(*workers)

        assert query.metric("mess_query_snapshot_swaps_total") == SWAPS + 1

    assert failures == []
    assert mismatches == []
    assert set(served_by) == set(expected)  # every version served some requests
    assert sum(served_by.values()) > 10 * SWAPS
