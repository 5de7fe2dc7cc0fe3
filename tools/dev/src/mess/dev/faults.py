"""The fault suite: ingest a corpus while everything underneath it breaks.

On backing services of its own (``mess.dev.backing``) it runs the four
services (the query service as two replicas, as a Service in front of two
pods would), and while a feeder uploads half of the corpus through
``POST /tracks`` and drops the other half into the bucket, and a reader asks
for recommendations all along, it injects, one after another in a seeded
random order: kill -9 of every service several times (each restarted after a
short random down time, as a supervisor would), a broker restart (its memory
storage comes back empty: topics, records, consumer offsets all gone; the
topics are provisioned again, as the deployment's topic job does, and the
rest must heal through the outbox, the reconciler and the snapshots in S3),
Redis stopped for a while, Postgres stopped without warning and started
again, and S3 answering 503 to everything for a while.

Then it waits for the system to settle and checks: every accepted track is
indexed, exactly once, in the latest snapshot and in Postgres; no vector is
duplicated; both query replicas serve that snapshot; and reads were answered
throughout (degraded where they had to be). It prints what it injected and
what it found, and returns the report.
"""

import asyncio
import contextlib
import json
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import httpx
from boto3.exceptions import S3UploadFailedError
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from mess.contracts import TrackMetadata, track_id_from_parts
from mess.contracts.storage import LATEST_KEY, SnapshotManifest, manifest_key
from mess.corpus import Rendition, demo_renditions, render_to_file, work_info
from mess.dev.backing import PrivateBacking, private_backing
from mess.dev.pipeline import Pipeline, ServiceProcess
from mess.dev.stack import SERVICES, create_topics, free_port, provision_storage, stack_env

log = logging.getLogger("mess.dev.faults")

API_KEY = "fault-suite-key"
TRACK_SECONDS = 15.0
SAMPLE_RATE = 22050


@dataclass(frozen=True)
class Plan:
    tracks: int = 200
    kills_per_service: int = 3
    outage_s: float = 12.0
    feed_s: float = 150.0
    settle_s: float = 600.0
    seed: int = 7
    corpus_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "mess" / "fault-corpus")


@dataclass
class Injected:
    fault: str
    started_s: float
    lasted_s: float


@dataclass
class Reads:
    answered: int = 0
    degraded: int = 0
    not_indexed_yet: int = 0
    answered_from_older_snapshot: int = 0
    failed: int = 0
    failed_over: int = 0
    failures: list[str] = field(default_factory=list)


@dataclass
class Writes:
    accepted: int = 0
    retried: int = 0
    statuses: Counter[str] = field(default_factory=Counter)


@dataclass
class Report:
    plan: dict[str, Any]
    injected: list[Injected]
    tracks_accepted: int
    tracks_indexed: int
    tracks_lost: int
    duplicates: int
    unexpected_in_snapshot: int
    replicas_serving_final: int
    reads: Reads
    writes: Writes
    s3_requests_refused: int
    settled_after_s: float
    elapsed_s: float
    lost_ids: list[str]

    @property
    def ok(self) -> bool:
        return (
            self.tracks_lost == 0
            and self.duplicates == 0
            and self.unexpected_in_snapshot == 0
            and self.replicas_serving_final == 2
        )

    def as_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["writes"]["statuses"] = dict(self.writes.statuses)
        body["ok"] = self.ok
        return body

    def lines(self) -> list[str]:
        kinds = Counter(i.fault.split(" ")[0] for i in self.injected)
        kind_list = ", ".join(f"{kind} x{n}" for kind, n in sorted(kinds.items()))
        out = ["faults injected:"]
        out += [f"  {i.started_s:7.1f} s  {i.fault:<28} {i.lasted_s:5.1f} s" for i in self.injected]
        out += [
            "summary:",
            f"  faults injected            {len(self.injected)} ({kind_list})",
            f"  tracks accepted            {self.tracks_accepted}",
            f"  tracks indexed             {self.tracks_indexed}",
            f"  tracks lost                {self.tracks_lost}",
            f"  duplicate vectors          {self.duplicates}",
            f"  unexpected in snapshot     {self.unexpected_in_snapshot}",
            f"  query replicas on final    {self.replicas_serving_final} of 2",
            f"  reads answered             {self.reads.answered} ({self.reads.degraded} degraded, "
            f"{self.reads.failed_over} after failing over to the other replica)",
            f"  reads failed               {self.reads.failed}",
            f"  409 from a replica behind  {self.reads.answered_from_older_snapshot} "
            "(its snapshot predates the track's; the other replica had swapped already)",
            f"  reads of unindexed tracks  {self.reads.not_indexed_yet} (accepted, not served yet: 404/409/503)",
            f"  write attempts retried     {self.writes.retried} ({dict(self.writes.statuses)})",
            f"  S3 requests refused        {self.s3_requests_refused}",
            f"  settled after the faults   {self.settled_after_s:.1f} s",
            f"  whole run                  {self.elapsed_s:.1f} s",
            f"  verdict                    {'OK' if self.ok else 'FAILED'}",
        ]
        if self.lost_ids:
            out.append(f"  lost: {', '.join(self.lost_ids[:20])}")
        out += [f"  read failure: {f}" for f in self.reads.failures[:10]]
        return out


# --- the corpus ---------------------------------------------------------------


def corpus(plan: Plan) -> list[tuple[Rendition, Path]]:
    """``plan.tracks`` renditions, rendered once into ``corpus_dir`` and reused by later runs."""
    plan.corpus_dir.mkdir(parents=True, exist_ok=True)
    renditions = demo_renditions((plan.tracks + 2) // 3, renditions_per_work=3)[: plan.tracks]

    def render(rendition: Rendition) -> Path:
        path = plan.corpus_dir / f"{rendition.name}.flac"
        if not path.exists():
            partial = path.with_suffix(".part.flac")
            render_to_file(rendition, partial, sample_rate=SAMPLE_RATE, max_seconds=TRACK_SECONDS)
            partial.rename(path)
        return path

    with ThreadPoolExecutor(max_workers=2) as pool:
        paths = list(pool.map(render, renditions))
    return list(zip(renditions, paths, strict=True))


def rendition_metadata(rendition: Rendition, *tags: str) -> TrackMetadata:
    """What a client would send with a rendition (the system test uses it too)."""
    info = work_info(rendition.work)
    return TrackMetadata(
        title=f"{info.title} ({rendition.instrument})",
        composer=info.composer,
        composer_full=info.composer_full,
        era=info.era,
        form=info.form,
        work=rendition.work,
        instrument=rendition.instrument,
        tags=list(tags),
    )


def upload_form(metadata: TrackMetadata) -> dict[str, str]:
    """The form fields of ``POST /tracks`` that carry ``metadata`` (tags comma-separated)."""
    fields = {k: str(v) for k, v in metadata.model_dump(exclude_none=True).items() if k != "tags"}
    fields["tags"] = ",".join(metadata.tags)
    return fields


def upload_rendition(
    ingest_url: str, api_key: str, rendition: Rendition, path: Path, tag: str, timeout_s: float = 60.0
) -> httpx.Response:
    """``POST /tracks`` of a rendered file with the metadata a client would send (system tests, benches)."""
    with path.open("rb") as audio:
        return httpx.post(
            f"{ingest_url}/tracks",
            files={"file": (path.name, audio, "audio/flac" if path.suffix == ".flac" else "audio/wav")},
            data=upload_form(rendition_metadata(rendition, tag)),
            headers={"X-API-Key": api_key},
            timeout=timeout_s,
        )


def drop_user_metadata(dataset: str, track_id: str, metadata: TrackMetadata) -> dict[str, str]:
    """The S3 user metadata a dataset importer puts on a dropped object."""
    # S3 user metadata is ASCII only.
    described = json.dumps(metadata.model_dump(mode="json"), ensure_ascii=True)
    return {"mess-dataset": dataset, "mess-track-id": track_id, "mess-metadata": described}


# --- the system under test ------------------------------------------------------


@dataclass
class System:
    backing: PrivateBacking
    pipeline: Pipeline
    replica: ServiceProcess  # the second query replica

    @property
    def queries(self) -> list[ServiceProcess]:
        return [self.pipeline["query"], self.replica]

    def process(self, name: str) -> ServiceProcess:
        return self.replica if name == "query-b" else self.pipeline["query" if name == "query-a" else name]


@contextlib.contextmanager
def running_system(log_dir: Path) -> Iterator[System]:
    with private_backing() as backing:
        settings = backing.settings
        asyncio.run(create_topics(settings))
        provision_storage(settings)
        extra = {
            "MESS_INGEST_API_KEYS": API_KEY,
            "MESS_EMBEDDER_BACKEND": "dsp",
            # A killed member holds its partitions until its session times out: keep that short here.
            "MESS_EMBEDDER_SESSION_TIMEOUT_MS": "10000",
            "MESS_EMBEDDER_HEARTBEAT_INTERVAL_MS": "2000",
            "MESS_INDEXER_SNAPSHOT_INTERVAL_S": "1",
            "MESS_INDEXER_SNAPSHOT_EVERY_CHANGES": "20",
            "MESS_INDEXER_SHARD_COUNT": "4",
            "MESS_INDEXER_PUBLISH_LEASE_S": "30",
            "MESS_QUERY_SNAPSHOT_POLL_S": "2",
            "MESS_INGEST_DROP_SCAN_INTERVAL_S": "5",
            "MESS_INGEST_RECONCILE_INTERVAL_S": "3",
            "MESS_INGEST_RECONCILE_GRACE_S": "20",
            "MESS_INGEST_WRITE_RATE_PER_S": "0",
        }
        with Pipeline(stack_env(settings), log_dir, extra) as pipeline:
            for name in SERVICES:
                cache = {"MESS_QUERY_SNAPSHOT_CACHE_DIR": str(log_dir / "query-a-cache")} if name == "query" else {}
                pipeline[name].env.update(cache)
            port = free_port()
            env = {
                **pipeline["query"].env,
                SERVICES["query"][1]: str(port),
                "MESS_QUERY_SNAPSHOT_CACHE_DIR": str(log_dir / "query-b-cache"),
            }
            replica = ServiceProcess("query", port, env, log_dir / "query-b.log")
            try:
                pipeline.start()
                replica.start()
                replica.wait_live()
                yield System(backing, pipeline, replica)
            finally:
                replica.stop()


# --- the load -------------------------------------------------------------------


class Feeder:
    """Offers every track until it is accepted: uploads retried through ingest's
    restarts and outages (an upload is idempotent: its id is its content hash),
    drops retried until S3 takes the object."""

    def __init__(self, system: System, tracks: list[tuple[Rendition, Path]], spread_s: float) -> None:
        self.system = system
        self.tracks = tracks
        self.spread_s = spread_s
        self.accepted: set[str] = set()
        self.writes = Writes()
        self.done = threading.Event()
        # How many tracks may have been offered by now. The injector raises it
        # fault by fault, so tracks keep arriving while every fault happens,
        # however long the faults take, instead of all before the first one.
        self.quota = 0
        self._quota_changed = threading.Condition()
        settings = system.backing.settings
        kwargs: dict[str, Any] = settings.s3_client_kwargs()
        # One try per call: the feeder counts and paces its own retries.
        self.s3 = boto3.client("s3", config=Config(retries={"max_attempts": 1, "mode": "standard"}), **kwargs)
        self.settings = settings

    def _upload(self, rendition: Rendition, path: Path) -> str:
        fields = upload_form(rendition_metadata(rendition, "fault-suite"))
        while True:
            try:
                with path.open("rb") as audio:
                    response = httpx.post(
                        f"{self.system.pipeline['ingest'].url}/tracks",
                        files={"file": (path.name, audio, "audio/flac")},
                        data=fields,
                        headers={"X-API-Key": API_KEY},
                        timeout=60,
                    )
            except httpx.HTTPError as exc:
                self.writes.retried += 1
                self.writes.statuses[type(exc).__name__] += 1
            else:
                if response.status_code in (200, 201, 202):
                    return str(response.json()["track_id"])
                if response.status_code < 500 and response.status_code != 429:
                    raise RuntimeError(f"upload of {path.name} refused: {response.status_code} {response.text}")
                self.writes.retried += 1
                self.writes.statuses[str(response.status_code)] += 1
            time.sleep(1.0)

    def _drop(self, rendition: Rendition, path: Path) -> str:
        relative = f"faults/{path.name}"
        track_id = track_id_from_parts("faults", relative)
        metadata = drop_user_metadata("faults", track_id, rendition_metadata(rendition, "fault-suite"))
        while True:
            try:
                self.s3.upload_file(
                    str(path),
                    self.settings.bucket,
                    f"{self.settings.drop_prefix}{relative}",
                    ExtraArgs={"Metadata": metadata},
                )
                return track_id
            except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
                self.writes.retried += 1
                self.writes.statuses[f"s3 {type(exc).__name__}"] += 1
                time.sleep(1.0)

    def _may_offer(self, position: int) -> bool:
        return position < self.quota

    def allow(self, fraction: float) -> None:
        with self._quota_changed:
            self.quota = max(self.quota, round(len(self.tracks) * min(fraction, 1.0)))
            self._quota_changed.notify_all()

    def run(self) -> None:
        gap = self.spread_s / max(len(self.tracks), 1)
        try:
            for position, (rendition, path) in enumerate(self.tracks):
                with self._quota_changed:
                    self._quota_changed.wait_for(partial(self._may_offer, position))
                started = time.monotonic()
                track_id = self._upload(rendition, path) if position % 2 == 0 else self._drop(rendition, path)
                self.accepted.add(track_id)
                self.writes.accepted += 1
                time.sleep(max(0.0, gap - (time.monotonic() - started)))
        finally:
            self.done.set()


class Reader:
    """Asks for recommendations all along, as a client behind a load balancer would:
    one replica, and the other when that one does not answer."""

    def __init__(self, system: System, candidates: Callable[[], list[str]]) -> None:
        self.system = system
        self.candidates = candidates
        self.reads = Reads()
        self.stop = threading.Event()
        # track -> the first snapshot version it was served from
        self.served: dict[str, str] = {}
        self.current_fault = "none"
        self._turn = 0

    def _ask(self, replica: ServiceProcess, track_id: str) -> httpx.Response | None:
        """The replica's answer; None when it gave none (it is down)."""
        try:
            return httpx.get(f"{replica.url}/recommend/{track_id}", params={"k": 5}, timeout=5)
        except httpx.HTTPError:
            return None

    def read_once(self) -> None:
        # Mostly tracks already served once (any answer but 200 for those is a
        # failure); now and then a newer one, to find out when it gets indexed.
        known = sorted(self.served)
        candidates = known if known and random.random() < 0.8 else self.candidates()
        if not candidates:
            return
        track_id = random.choice(candidates)
        replicas = self.system.queries
        self._turn += 1
        first, second = replicas[self._turn % 2], replicas[(self._turn + 1) % 2]
        response = self._ask(first, track_id)
        if response is None or response.status_code >= 500:
            # What a load balancer does for a replica that is down or not ready.
            other = self._ask(second, track_id)
            if other is not None and (response is None or other.status_code < 500):
                response = other
                self.reads.failed_over += 1
        if response is not None and response.status_code == 200:
            self.reads.answered += 1
            self.reads.degraded += bool(response.json().get("degraded"))
            self.served.setdefault(track_id, str(response.json()["snapshot_version"]))
        elif response is not None and response.status_code == 409 and self._behind(track_id, response):
            # The replicas swap snapshots independently: one may still serve the snapshot
            # before the track's for a moment. Its answer is right for that snapshot.
            self.reads.answered_from_older_snapshot += 1
        elif track_id not in self.served and (response is None or response.status_code in (404, 409, 503)):
            # Not indexed yet; with Postgres down the service cannot even tell
            # "unknown" from "not yet", and says 503: right, for such a track.
            self.reads.not_indexed_yet += 1
        else:
            self.reads.failed += 1
            status = "no answer" if response is None else str(response.status_code)
            self.reads.failures.append(f"{track_id}: {status} during {self.current_fault}")

    def _behind(self, track_id: str, response: httpx.Response) -> bool:
        first_served = self.served.get(track_id)
        version = response.json().get("snapshot_version")
        # Versions are zero-padded counters: text order is their order.
        return first_served is not None and isinstance(version, str) and version < first_served

    def run(self) -> None:
        while not self.stop.is_set():
            self.read_once()
            time.sleep(0.05)


# --- the faults -------------------------------------------------------------------


class Injector:
    def __init__(self, system: System, plan: Plan, reader: Reader, started: float) -> None:
        self.system = system
        self.plan = plan
        self.reader = reader
        self.started = started
        self.injected: list[Injected] = []
        self.random = random.Random(plan.seed)

    def schedule(self) -> list[str]:
        kills = [f"kill -9 {name}" for name in ("ingest", "embedder", "indexer", "query-a", "query-b")]
        faults = kills * self.plan.kills_per_service
        faults += ["broker restart", "redis stop", "postgres restart", "s3 outage"]
        self.random.shuffle(faults)
        return faults

    def _kill(self, name: str) -> None:
        process = self.system.process(name)
        process.kill()
        time.sleep(self.random.uniform(0.5, 3.0))  # the supervisor's restart delay
        process.start()
        process.wait_live()

    def _broker_restart(self) -> None:
        backing = self.system.backing
        backing.kill_broker()
        time.sleep(1.0)
        backing.start_broker()
        # The deployment's topic job (kafka-topics --create --if-not-exists) runs again.
        asyncio.run(create_topics(backing.settings))

    def _redis_stop(self) -> None:
        self.system.backing.stop_redis()
        time.sleep(self.plan.outage_s)
        self.system.backing.start_redis()

    def _postgres_restart(self) -> None:
        self.system.backing.stop_postgres()
        time.sleep(self.plan.outage_s / 2)
        self.system.backing.start_postgres()

    def _s3_outage(self) -> None:
        s3 = self.system.backing.s3
        assert s3 is not None
        s3.failing.set()
        time.sleep(self.plan.outage_s)
        s3.failing.clear()

    def inject(self, fault: str) -> None:
        began = time.monotonic()
        self.reader.current_fault = fault
        log.info("injecting: %s", fault)
        if fault.startswith("kill -9 "):
            self._kill(fault.removeprefix("kill -9 "))
        elif fault == "broker restart":
            self._broker_restart()
        elif fault == "redis stop":
            self._redis_stop()
        elif fault == "postgres restart":
            self._postgres_restart()
        elif fault == "s3 outage":
            self._s3_outage()
        self.reader.current_fault = "none"
        self.injected.append(Injected(fault, began - self.started, time.monotonic() - began))

    def run(self, faults: list[str], window_s: float, feeder: Feeder) -> None:
        gap = window_s / max(len(faults), 1)
        for number, fault in enumerate(faults):
            feeder.allow((number + 1) / (len(faults) + 1))
            time.sleep(self.random.uniform(0.3, 1.0) * gap)
            self.inject(fault)
        feeder.allow(1.0)


# --- the verdict ------------------------------------------------------------------


async def _statuses(dsn: str, schema: str) -> dict[str, str]:
    connection = await asyncpg.connect(dsn, server_settings={"search_path": schema}, timeout=5)
    try:
        rows = await connection.fetch("SELECT id, status FROM tracks")
    finally:
        await connection.close()
    return {row["id"]: row["status"] for row in rows}


def _snapshot(system: System) -> tuple[str, list[str]]:
    settings = system.backing.settings
    s3 = boto3.client("s3", **settings.s3_client_kwargs())  # type: ignore[call-overload]
    version = s3.get_object(Bucket=settings.bucket, Key=LATEST_KEY)["Body"].read().decode().strip()
    manifest = SnapshotManifest.model_validate_json(
        s3.get_object(Bucket=settings.bucket, Key=manifest_key(version))["Body"].read()
    )
    ids: list[str] = []
    for shard in manifest.shards:
        ids.extend(json.loads(s3.get_object(Bucket=settings.bucket, Key=shard.ids.key)["Body"].read()))
    return version, ids


def _serving(replica: ServiceProcess) -> str | None:
    try:
        body = httpx.get(f"{replica.url}/health/ready", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return None
    version = body.get("snapshot_version")
    return str(version) if version else None


def run_suite(plan: Plan, log_dir: Path, out: Callable[[str], None] = print) -> Report:
    started = time.monotonic()
    tracks = corpus(plan)
    out(f"corpus: {len(tracks)} renditions of {TRACK_SECONDS:.0f} s in {plan.corpus_dir}")
    with running_system(log_dir) as system:
        settings = system.backing.settings
        feeder = Feeder(system, tracks, plan.feed_s)
        reader = Reader(system, lambda: sorted(feeder.accepted))
        injector = Injector(system, plan, reader, started)
        threads = [
            threading.Thread(target=feeder.run, name="feeder", daemon=True),
            threading.Thread(target=reader.run, name="reader", daemon=True),
        ]
        for thread in threads:
            thread.start()
        faults = injector.schedule()
        out(f"injecting {len(faults)} faults over {plan.feed_s:.0f} s while {len(tracks)} tracks go in")
        injector.run(faults, plan.feed_s, feeder)
        feeder.done.wait()
        faults_over = time.monotonic()
        out(f"faults done; {len(feeder.accepted)} tracks accepted; waiting for the system to settle")

        lost: list[str] = sorted(feeder.accepted)
        snapshot_ids: list[str] = []
        version = ""
        deadline = time.monotonic() + plan.settle_s
        while time.monotonic() < deadline:
            try:
                statuses = asyncio.run(_statuses(settings.postgres_dsn, settings.postgres_schema))
                version, snapshot_ids = _snapshot(system)
            except (OSError, asyncpg.PostgresError, ClientError, BotoCoreError) as exc:
                log.info("not settled yet: %s", exc)
                time.sleep(2.0)
                continue
            in_snapshot = set(snapshot_ids)
            lost = sorted(t for t in feeder.accepted if statuses.get(t) != "indexed" or t not in in_snapshot)
            if not lost and all(_serving(q) == version for q in system.queries):
                break
            time.sleep(2.0)
        settled = time.monotonic() - faults_over
        reader.stop.set()
        for thread in threads:
            thread.join(timeout=30)
        counts = Counter(snapshot_ids)
        assert system.backing.s3 is not None
        return Report(
            plan={k: str(v) if isinstance(v, Path) else v for k, v in asdict(plan).items()},
            injected=injector.injected,
            tracks_accepted=len(feeder.accepted),
            tracks_indexed=len(feeder.accepted) - len(lost),
            tracks_lost=len(lost),
            duplicates=sum(n - 1 for n in counts.values() if n > 1),
            unexpected_in_snapshot=len(set(snapshot_ids) - feeder.accepted),
            replicas_serving_final=sum(_serving(q) == version for q in system.queries),
            reads=reader.reads,
            writes=feeder.writes,
            s3_requests_refused=system.backing.s3.refused,
            settled_after_s=settled,
            elapsed_s=time.monotonic() - started,
            lost_ids=lost,
        )
