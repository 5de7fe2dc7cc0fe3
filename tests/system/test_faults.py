"""The fault suite, short: every fault kind once while a small corpus goes in.

`mess-dev faults` runs the long version (200 tracks, every service killed
three times) for the README's figures. This one runs in CI on backing
services of its own (a private broker, moto, Redis and Postgres cluster), so
breaking them disturbs nothing else.
"""

from pathlib import Path

import pytest

from mess.dev.faults import Plan, run_suite

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(900)]


def test_every_accepted_track_is_indexed_once_through_kills_and_outages(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    plan = Plan(
        tracks=30,
        kills_per_service=1,
        outage_s=8.0,
        feed_s=45.0,
        settle_s=300.0,
        corpus_dir=tmp_path_factory.getbasetemp() / "fault-corpus",
    )
    report = run_suite(plan, tmp_path / "logs")
    print("\n".join(report.lines()))

    injected = sorted(i.fault for i in report.injected)
    assert injected == sorted(
        [f"kill -9 {name}" for name in ("ingest", "embedder", "indexer", "query-a", "query-b")]
        + ["broker restart", "redis stop", "postgres restart", "s3 outage"]
    )
    assert report.tracks_accepted == plan.tracks
    assert report.lost_ids == []
    assert report.duplicates == 0
    assert report.unexpected_in_snapshot == 0
    assert report.replicas_serving_final == 2
    assert report.s3_requests_refused > 0  # the outage really hit the services
    assert report.reads.answered > 0
    assert report.reads.failures == []
