"""Kill-and-restart at each publish step, against the real broker and S3.

The crash is simulated in-process: a hook raises at the named step and the
indexer is dropped without publishing, committing or releasing anything more
(what a kill leaves). A fresh indexer then starts from S3 and the broker
alone, and its next snapshot must hold every track exactly once with its
latest vector. ``tests/indexer/test_service_process.py`` does the same with a
real ``kill -9`` of the service process.
"""

import asyncio
from collections import Counter

import numpy as np
import pytest

from mess.contracts.storage import manifest_key
from mess.indexer.indexer import Indexer
from mess.indexer.snapshot_store import SnapshotStore
from mess.indexer.snapshots import PublishStep
from mess.runtime.endpoints import StackSettings

from .indexer_harness import (
    announced_versions,
    embedded,
    indexer_settings,
    producer,
    read_back,
    removed,
    running,
    snapshot_ids,
    snapshot_store,
    unit_vector,
    wait_for_snapshot,
    wait_until,
)


class SimulatedCrash(BaseException):
    """The process dying at a step. A BaseException, so the indexer's handling of
    ordinary publish failures cannot catch it, just as it could not catch a kill."""


class CrashAt:
    def __init__(self, step: PublishStep) -> None:
        self.step = step
        self.armed = False

    def __call__(self, step: PublishStep) -> None:
        if self.armed and step is self.step:
            raise SimulatedCrash(step)


def folder(store: SnapshotStore, version: str) -> list[str]:
    listed = store.s3.list_objects_v2(Bucket=store.bucket, Prefix=f"snapshots/{version}/")
    return [item["Key"] for item in listed.get("Contents", [])]


@pytest.mark.parametrize("step", list(PublishStep), ids=[s.value for s in PublishStep])
async def test_simulated_crash_at_publish_step_then_restart_holds_every_track_exactly_once(
    stack: StackSettings, step: PublishStep
) -> None:
    store = snapshot_store(stack)
    settings = indexer_settings(stack)
    crash = CrashAt(step)
    expected = {f"track-{n:02d}": n for n in range(30)}

    first = Indexer(settings, step_hook=crash)
    await first.start()
    run = asyncio.create_task(first.run())
    async with producer(stack) as send:
        for track_id, seed in expected.items():
            await send(embedded(track_id, seed))
        before = await wait_for_snapshot(store, lambda s: s.manifest.vector_count == 30, "30 tracks")
        assert before.version == "000000000002"
        # LATEST is readable a moment before the publish that wrote it returns (and passes its
        # after_pointer step): arming before then would crash snapshot 2 instead of 3.
        await wait_until(
            lambda: first.latest is not None and first.latest.version == before.version, "publish of 2 returned"
        )

        crash.armed = True
        for n in range(5):  # replaced
            expected[f"track-{n:02d}"] = 100 + n
            await send(embedded(f"track-{n:02d}", 100 + n))
        for n in range(25, 30):  # removed
            del expected[f"track-{n:02d}"]
            await send(removed(f"track-{n:02d}"))
        for n in range(30, 40):  # added
            expected[f"track-{n:02d}"] = n
            await send(embedded(f"track-{n:02d}", n))
        with pytest.raises(SimulatedCrash):
            await asyncio.wait_for(run, timeout=60)
        await first.abandon()

        # What the crash left behind, step by step.
        latest = store.read_latest()
        assert latest is not None
        if step is PublishStep.BEFORE_UPLOAD:
            assert latest.version == before.version and folder(store, "000000000003") == []
        elif step is PublishStep.AFTER_FILES:
            assert latest.version == before.version
            assert folder(store, "000000000003") and manifest_key("000000000003") not in folder(store, "000000000003")
        elif step is PublishStep.AFTER_MANIFEST:
            assert latest.version == before.version and manifest_key("000000000003") in folder(store, "000000000003")
        else:
            assert latest.version == "000000000003"
            # Kafka has the events of 1 and 2 but not of 3: the crash came first.
            assert await announced_versions(stack, "000000000001", "000000000002") == {"000000000001", "000000000002"}

        async with running(settings) as second:
            # One more change, so the restarted indexer has something to publish
            # even when the crashed one's snapshot already held everything.
            expected["track-40"] = 40
            await send(embedded("track-40", 40))

            async def snapshot_covers_everything() -> bool:
                latest = await asyncio.to_thread(store.read_latest)
                if latest is None or latest.version == before.version:
                    return False
                offsets = (await asyncio.to_thread(store.read_manifest, latest.version)).manifest.offsets
                ends = await second.feed.end_offsets()
                return all(offsets[tp.topic][str(tp.partition)] == end for tp, end in ends.items())

            await wait_until(snapshot_covers_everything, "a snapshot covering every event")

    final = store.read_latest()
    assert final is not None
    ids = snapshot_ids(store, final.version)
    assert [t for t, n in Counter(ids).items() if n > 1] == []
    assert set(ids) == set(expected)
    state = read_back(store, final.version)  # verifies every checksum and shard placement
    for track_id, seed in expected.items():
        np.testing.assert_allclose(state.vector(track_id), unit_vector(seed), rtol=1e-6)
    manifest = store.read_manifest(final.version).manifest
    if step is PublishStep.AFTER_MANIFEST:
        # The orphaned manifest is never overwritten; the chain skips it.
        assert int(final.version) > 3 and manifest.previous_version != "000000000003"
    if step is PublishStep.AFTER_POINTER:
        # The restarted indexer re-announces the snapshot whose event was lost.
        assert "000000000003" in await announced_versions(stack, "000000000003")
