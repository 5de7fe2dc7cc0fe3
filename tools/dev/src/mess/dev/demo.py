"""The main job's second half: fill a fresh system with the demo corpus and show it working.

Renders works from the music21 corpus (through the ingest service's ``demo``
importer, which drops them into the bucket's drop prefix so they arrive
through S3 auto-ingest, exactly as a user's files would), follows the tracks
through the pipeline until every one is indexed, then asks the query API for
a few recommendations. Everything it does is idempotent, so a second run
finds the work done and returns quickly.
"""

import asyncio
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import boto3
import httpx

from mess.runtime.endpoints import StackSettings

DATASET = "demo"


@dataclass
class Progress:
    expected: int
    by_status: dict[str, int]

    @property
    def indexed(self) -> int:
        return self.by_status.get("indexed", 0)

    @property
    def failed(self) -> int:
        return self.by_status.get("failed", 0)

    @property
    def done(self) -> bool:
        return self.indexed + self.failed >= self.expected

    def line(self) -> str:
        parts = ", ".join(f"{status} {count}" for status, count in sorted(self.by_status.items()))
        return f"{self.indexed}/{self.expected} indexed ({parts or 'nothing registered yet'})"


def run_importer(works: int, renditions: int, max_seconds: float) -> None:
    command = [
        sys.executable,
        "-m",
        "mess.ingest.importers",
        "demo",
        "--works",
        str(works),
        "--renditions",
        str(renditions),
        "--max-seconds",
        str(max_seconds),
    ]
    # Exit 1 means some renditions failed and were reported; the rest are in
    # the bucket and worth following. Anything else means nothing useful ran.
    result = subprocess.run(command, check=False)  # noqa: S603 - our own module, fixed arguments
    if result.returncode not in (0, 1):
        raise SystemExit(f"the demo importer failed (exit {result.returncode})")


def dropped_objects(settings: StackSettings) -> int:
    """How many demo files sit in the drop prefix: the number of tracks to wait for."""
    kwargs: dict[str, Any] = settings.s3_client_kwargs()
    s3 = boto3.client("s3", **kwargs)
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=settings.bucket, Prefix=f"{settings.drop_prefix}{DATASET}/"
    ):
        count += len(page.get("Contents", []))
    return count


async def progress(settings: StackSettings, expected: int) -> Progress:
    connection = await asyncpg.connect(
        settings.postgres_dsn, timeout=10, server_settings={"search_path": settings.postgres_schema}
    )
    try:
        rows = await connection.fetch(
            "SELECT status, count(*) AS n FROM tracks WHERE dataset = $1 GROUP BY status", DATASET
        )
    except asyncpg.UndefinedTableError:
        rows = []
    finally:
        await connection.close()
    return Progress(expected=expected, by_status={row["status"]: int(row["n"]) for row in rows})


def wait_until_indexed(settings: StackSettings, expected: int, timeout_s: float) -> Progress:
    deadline = time.monotonic() + timeout_s
    last_line = ""
    current = asyncio.run(progress(settings, expected))
    while not current.done and time.monotonic() < deadline:
        if current.line() != last_line:
            last_line = current.line()
            print(f"  {last_line}", flush=True)
        time.sleep(1.0)
        current = asyncio.run(progress(settings, expected))
    print(f"  {current.line()}", flush=True)
    return current


def show_recommendations(query_url: str, settings: StackSettings, examples: int = 2) -> None:
    async def pick() -> list[str]:
        connection = await asyncpg.connect(
            settings.postgres_dsn, timeout=10, server_settings={"search_path": settings.postgres_schema}
        )
        try:
            rows = await connection.fetch(
                "SELECT id FROM tracks WHERE dataset = $1 AND status = 'indexed' ORDER BY id LIMIT $2",
                DATASET,
                examples,
            )
        finally:
            await connection.close()
        return [row["id"] for row in rows]

    for track_id in asyncio.run(pick()):
        for strategy in ("similar", "diverse"):
            response = httpx.get(f"{query_url}/recommend/{track_id}", params={"k": 5, "strategy": strategy}, timeout=30)
            if response.status_code != 200:
                print(f"  /recommend/{track_id} answered {response.status_code}: {response.text[:200]}")
                continue
            body: dict[str, Any] = response.json()
            reference = body.get("reference_track", {})
            print(f"\n  {strategy} to {reference.get('title') or track_id}:")
            for item in body.get("recommendations", []):
                print(
                    f"    {item.get('similarity_score', 0):.3f}  {item.get('title') or item['track_id']}"
                    f"  [{item.get('instrument', '?')}]  {item.get('explanation', '')}"
                )
