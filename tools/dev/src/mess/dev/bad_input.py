"""Bad input against the running services: fuzzing, bad uploads, hostile ids and poison events.

``mess-dev bad-input`` and the tests in ``tests/reliability`` both use what is
here, so the cases the command reports on and the cases CI checks are the same
lists: ``UPLOAD_CASES``, ``HOSTILE_IDS`` x ``ID_ROUTES`` and ``POISON_CASES``.

Everything runs against the real services as processes (``Pipeline``) on a
private slice of the real stack: schemathesis sends what the OpenAPI documents
of ingest and query allow (and what they do not), and every answer is checked
against the document; each bad upload must be refused with a 4xx and a reason
and leave no row, object or event behind; each hostile id must get 404 or 422;
each poison event must reach the dead-letter topic with its reason while the
partition moves on past it (a good event behind it is processed, and the
consumer group's committed offset passes it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import boto3
import httpx
import numpy as np
import soundfile as sf
from aiokafka import TopicPartition

from mess.contracts.events import (
    ModelIdentity,
    SnapshotCounts,
    SnapshotPublished,
    TrackAdded,
    TrackEmbedded,
    TrackFailed,
    TrackRemoved,
)
from mess.contracts.storage import LATEST_KEY, SnapshotManifest, manifest_key
from mess.dev import stack as local
from mess.dev.pipeline import Pipeline
from mess.runtime import kafka
from mess.runtime.endpoints import StackSettings, host_port

log = logging.getLogger("mess.dev.bad_input")

RESULTS_PATH = Path("bench/results/bad_input.json")


# --- access ----------------------------------------------------------------


@dataclass(frozen=True)
class Access:
    """How the harness is let in: the environment the services start with and the headers clients send."""

    env: Mapping[str, str]
    write_headers: Mapping[str, str]
    read_headers: Mapping[str, str]


def access() -> Access:
    """The one place that knows how the services authenticate callers (keys, headers), so a change of
    access control is adapted here only. Writes need ``X-API-Key`` with a key whose digest ingest holds
    (``MESS_INGEST_API_KEY_HASHES``, as in production); reads need nothing by default."""
    key = "bad-input-key-0123456789abcdef"
    digest = hashlib.sha256(key.encode()).hexdigest()
    env = {
        "MESS_INGEST_API_KEY_HASHES": f"bad-input:{digest}",
        # This run is about how input is answered, not about the per-key write rate (tested with access):
        # several hundred fuzzed writes in a burst would otherwise turn into 429s.
        "MESS_INGEST_WRITE_RATE_PER_S": "0",
    }
    return Access(env=env, write_headers={"X-API-Key": key}, read_headers={})


# --- the services under test -------------------------------------------------


@dataclass(frozen=True)
class IngestLimits:
    """The upload limits the harness's ingest runs with: small, so "huge" and "too long" are cheap to send."""

    max_upload_bytes: int = 6 * 1024**2
    s3_part_bytes: int = 5 * 1024**2
    max_duration_s: float = 60.0
    min_duration_s: float = 1.0


LIMITS = IngestLimits()


def service_env(stack: StackSettings, cache_dir: Path, limits: IngestLimits = LIMITS) -> dict[str, str]:
    """Extra environment of the four services: quick loops, the small upload limits, groups of this stack."""
    prefix = stack.topic_prefix
    return {
        **access().env,
        "MESS_INGEST_MAX_UPLOAD_BYTES": str(limits.max_upload_bytes),
        "MESS_INGEST_S3_PART_BYTES": str(limits.s3_part_bytes),
        "MESS_INGEST_MAX_DURATION_S": str(limits.max_duration_s),
        "MESS_INGEST_MIN_DURATION_S": str(limits.min_duration_s),
        "MESS_INGEST_STATUS_GROUP_ID": f"{prefix}mess-ingest-status",
        # A few tries with short waits: a transient failure must not be mistaken for poison, nor take minutes.
        "MESS_INGEST_STATUS_ATTEMPTS": "2",
        "MESS_INGEST_RELAY_POLL_S": "0.2",
        "MESS_EMBEDDER_BACKEND": "dsp",
        "MESS_EMBEDDER_GROUP_ID": f"{prefix}mess-embedder",
        "MESS_EMBEDDER_POLL_WAIT_MS": "200",
        "MESS_EMBEDDER_FETCH_ATTEMPTS": "2",
        "MESS_EMBEDDER_RETRY_BASE_S": "0.05",
        "MESS_INDEXER_GROUP_ID": f"{prefix}mess-indexer",
        "MESS_INDEXER_SNAPSHOT_INTERVAL_S": "0.5",
        "MESS_INDEXER_SHARD_COUNT": "2",
        "MESS_QUERY_SNAPSHOT_CACHE_DIR": str(cache_dir),
        "MESS_QUERY_SNAPSHOT_POLL_S": "2",
    }


@dataclass
class Services:
    """The four services running on one private stack, with the ids of the seed tracks they indexed."""

    stack: StackSettings
    pipeline: Pipeline
    seeds: list[str] = field(default_factory=list)

    @property
    def ingest_url(self) -> str:
        return self.pipeline["ingest"].url

    @property
    def query_url(self) -> str:
        return self.pipeline["query"].url

    def client(self, service: str, write: bool = False, timeout: float = 60.0) -> httpx.AsyncClient:
        headers = dict(access().write_headers if write else access().read_headers)
        url = self.ingest_url if service == "ingest" else self.query_url
        return httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout)


@contextlib.contextmanager
def backing_stack(log_dir: Path) -> Iterator[StackSettings]:
    """The endpoints named by ``MESS_*`` when they answer; otherwise a broker, moto and Redis started here for
    the run (and stopped after), as the test harness does. Postgres must answer (``make stack`` starts it)."""
    settings = StackSettings()
    started: list[int] = []
    updates: dict[str, str] = {}
    host, port = host_port(settings.kafka_servers[0], 9092)
    if not local.port_open(host, port):
        port = local.free_port()
        started.append(local.spawn("broker", local.broker_command("127.0.0.1", port), log_dir)[0])
        updates["kafka_bootstrap"] = f"127.0.0.1:{port}"
    if settings.s3_endpoint_url:
        host, port = host_port(settings.s3_endpoint_url, 5000)
        if not local.port_open(host, port):
            port = local.free_port()
            started.append(local.spawn("s3", local.moto_command("127.0.0.1", port), log_dir)[0])
            updates["s3_endpoint_url"] = f"http://127.0.0.1:{port}"
    host, port = host_port(settings.redis_url, 6379)
    if not local.port_open(host, port):
        port = local.free_port()
        started.append(local.spawn("redis", local.redis_command("127.0.0.1", port), log_dir)[0])
        updates["redis_url"] = f"redis://127.0.0.1:{port}/0"
    settings = settings.model_copy(update=updates)
    try:
        local.wait_for(lambda: local.broker_answers(settings), "Kafka broker")
        local.wait_for(lambda: local.port_open(*host_port(settings.redis_url, 6379)), "Redis")
        if settings.s3_endpoint_url:
            endpoint = settings.s3_endpoint_url
            local.wait_for(lambda: local.port_open(*host_port(endpoint, 5000)), "S3 endpoint")
        local.wait_for(lambda: local.database_ready(settings.postgres_dsn), "Postgres")
        yield settings
    finally:
        for pid in started:
            local.stop_process(pid)


SEED_TONES = (220.0, 246.9, 261.6, 293.7)


@contextlib.contextmanager
def running_services(stack: StackSettings, work_dir: Path) -> Iterator[Services]:
    """Ingest, embedder, indexer and query as processes on ``stack``, with a few seed tracks uploaded and
    indexed, so that fuzzed and hostile requests meet a service with real data behind it."""
    env = service_env(stack, work_dir / "query-cache")
    with Pipeline(local.stack_env(stack), work_dir / "logs", env) as pipeline:
        pipeline.start()
        services = Services(stack, pipeline)
        services.seeds = asyncio.run(_seed(services))
        yield services


async def _seed(services: Services) -> list[str]:
    ids: list[str] = []
    async with services.client("ingest", write=True) as client:
        for n, hz in enumerate(SEED_TONES):
            body = multipart(tone(3.0, hz), f"seed-{n}.wav", "audio/wav", {"composer": "Seed", "era": "Baroque"})
            answer = await client.post("/tracks", content=body.content, headers=body.headers)
            if answer.status_code not in (200, 201):
                raise RuntimeError(f"seed upload refused: {answer.status_code} {answer.text}")
            ids.append(str(answer.json()["track_id"]))
    await wait_until_indexed(services, ids)
    return ids


async def wait_until_indexed(services: Services, track_ids: Sequence[str], within_s: float = 120.0) -> None:
    """Until ingest says each track is indexed and the query service serves a snapshot holding all of them."""
    async with services.client("ingest") as ingest, services.client("query") as query:
        async with asyncio.timeout(within_s):
            while True:
                statuses = [(await ingest.get(f"/tracks/{t}/status")).json().get("status") for t in track_ids]
                served = [await query.get(f"/tracks/{t}") for t in track_ids]
                if all(s == "indexed" for s in statuses) and all(
                    a.status_code == 200 and a.json().get("snapshot_version") for a in served
                ):
                    return
                await asyncio.sleep(0.3)


# --- audio -----------------------------------------------------------------


def tone(seconds: float, hz: float = 440.0, fmt: str = "WAV", rate: int = 22050, amplitude: float = 0.3) -> bytes:
    """A real audio file of a tone; a different ``hz`` makes different content (a different track)."""
    t = np.arange(int(seconds * rate), dtype=np.float32) / rate
    signal = (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    buffer = io.BytesIO()
    subtype = {"WAV": "PCM_16", "FLAC": "PCM_16", "OGG": "VORBIS"}[fmt]
    sf.write(buffer, signal, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def wav_claiming_hours(hours: float = 12.0) -> bytes:
    """A WAV whose header declares ``hours`` of audio while the file holds one second of it."""
    audio = bytearray(tone(1.0, 523.3, rate=8000))
    declared = int(hours * 3600 * 8000 * 2)
    audio[4:8] = (declared + 36).to_bytes(4, "little")  # RIFF size
    data = audio.index(b"data")
    audio[data + 4 : data + 8] = declared.to_bytes(4, "little")
    return bytes(audio)


# --- uploads ---------------------------------------------------------------


@dataclass(frozen=True)
class Body:
    """A request body exactly as sent, with its headers (a file name is written byte for byte)."""

    content: bytes
    headers: dict[str, str]
    chunked: bool = False  # sent without Content-Length, in pieces


BOUNDARY = "mess-bad-input-boundary"


def multipart(
    file: bytes,
    filename: str | bytes | None,
    part_type: str = "application/octet-stream",
    fields: Mapping[str, str] | None = None,
    chunked: bool = False,
) -> Body:
    """A multipart/form-data body built by hand, so hostile file names reach the server unaltered."""
    parts: list[bytes] = []
    for name, value in (fields or {}).items():
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value.encode() + b"\r\n"
        )
    disposition = b'Content-Disposition: form-data; name="file"'
    if filename is not None:
        raw = filename if isinstance(filename, bytes) else filename.encode("utf-8")
        disposition += b'; filename="' + raw.replace(b'"', b"%22") + b'"'
    parts.append(f"--{BOUNDARY}\r\n".encode() + disposition + f"\r\nContent-Type: {part_type}\r\n\r\n".encode())
    parts.append(file + f"\r\n--{BOUNDARY}--\r\n".encode())
    return Body(b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}, chunked)


@dataclass(frozen=True)
class UploadCase:
    """One bad upload and the answer it must get: a status and the error kind (``None``: accepted, because
    the content is good and only the name is odd; the name must then change nothing but the title)."""

    name: str
    what: str
    build: Callable[[IngestLimits], Body]
    status: int
    error: str | None
    title: str | None = None  # the title an accepted upload must get from its file name


def _truncated_flac(_: IngestLimits) -> Body:
    audio = tone(4.0, 349.2, fmt="FLAC")
    return multipart(audio[: len(audio) // 2], "cut.flac", "audio/flac")


def _huge(limits: IngestLimits, chunked: bool) -> Body:
    # Random bytes do not compress and need no decoding: the size alone must stop them.
    size = limits.max_upload_bytes + 2 * 1024**2
    return multipart(os.urandom(size), "huge.wav", "audio/wav", chunked=chunked)


def _long(limits: IngestLimits) -> Body:
    return multipart(tone(limits.max_duration_s + 5.0, 392.0, rate=4000), "long.wav", "audio/wav")


def _named(name: str | bytes, hz: float) -> Callable[[IngestLimits], Body]:
    return lambda _: multipart(tone(1.5, hz), name, "audio/wav")


def _cut(audio: bytes, parts: int) -> bytes:
    return audio[: len(audio) // parts]


def _shaped(rate: int, channels: int, fmt: str = "WAV", seconds: float = 2.0) -> bytes:
    """A tone at any rate and channel count (the shape, not the length, is what decoding costs)."""
    signal = 0.3 * np.sin(2 * np.pi * 440.0 * np.arange(int(rate * seconds)) / rate)
    buffer = io.BytesIO()
    frames = np.repeat(signal[:, None], channels, axis=1).astype(np.float32)
    sf.write(buffer, frames, rate, format=fmt, subtype="PCM_16")
    return buffer.getvalue()


def _long_boundary(_: IngestLimits) -> Body:
    """A well-formed upload whose multipart boundary is 300 characters (RFC 2046 allows 70)."""
    good = multipart(tone(1.5, 523.3), "boundary.wav", "audio/wav")
    boundary = "b" * 300
    content = good.content.replace(BOUNDARY.encode(), boundary.encode())
    return Body(content, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def _phase_cancelled(_: IngestLimits) -> Body:
    """Stereo whose channels cancel: loud on each, silent in the mono mix the embedder hears."""
    rate = 22050
    wave = 0.3 * np.sin(2 * np.pi * 470.0 * np.arange(rate * 3) / rate)
    buffer = io.BytesIO()
    sf.write(buffer, np.stack([wave, -wave], axis=1).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return multipart(buffer.getvalue(), "cancelled.wav", "audio/wav")


# Every field within its own 2,000-character limit, 4 UTF-8 bytes a character: together over the bound on a
# track's metadata, so the TrackAdded it would make could not be guaranteed to fit a broker message.
_WIDE_FIELDS = dict.fromkeys(
    ("title", "composer", "composer_full", "work", "movement", "era", "form", "key", "instrument"), "\U0001d11e" * 2000
)

PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64)

UPLOAD_CASES: tuple[UploadCase, ...] = (
    UploadCase("long_boundary", "a 300-character multipart boundary", _long_boundary, 400, "bad_multipart_boundary"),
    UploadCase("truncated", "a FLAC cut in half", _truncated_flac, 415, "corrupt"),
    UploadCase(
        "zero_length", "an empty file part", lambda _: multipart(b"", "empty.wav", "audio/wav"), 415, "not_audio"
    ),
    UploadCase(
        "huge_declared",
        "2 MiB over the upload limit, with Content-Length",
        lambda limits: _huge(limits, chunked=False),
        413,
        "too_large",
    ),
    UploadCase(
        "huge_chunked",
        "2 MiB over the upload limit, chunked (no Content-Length)",
        lambda limits: _huge(limits, chunked=True),
        413,
        "too_large",
    ),
    UploadCase(
        "not_audio",
        "a text file",
        lambda _: multipart(b"these are words, not music\n" * 100, "notes.txt", "text/plain"),
        415,
        "not_audio",
    ),
    UploadCase(
        "mislabelled_text",
        "text sent as song.flac with Content-Type audio/flac",
        lambda _: multipart(b"not music at all\n" * 200, "song.flac", "audio/flac"),
        415,
        "not_audio",
    ),
    UploadCase(
        "mislabelled_png",
        "a PNG image sent as track.wav with Content-Type audio/wav",
        lambda _: multipart(PNG_HEADER * 40, "track.wav", "audio/wav"),
        415,
        "not_audio",
    ),
    UploadCase(
        "too_long",
        "audio 5 s longer than the duration limit",
        _long,
        415,
        "too_long",
    ),
    UploadCase(
        "truncated_wav",
        "a WAV cut at a third (libsndfile would play what is left)",
        lambda _: multipart(_cut(tone(3.0, 311.1), 3), "cut.wav", "audio/wav"),
        415,
        "corrupt",
    ),
    UploadCase(
        "header_claims_hours",
        "a WAV whose header declares 12 hours (1 s of data)",
        lambda _: multipart(wav_claiming_hours(), "claims.wav", "audio/wav"),
        415,
        "corrupt",
    ),
    UploadCase(
        "silent",
        "3 s of digital silence",
        lambda _: multipart(tone(3.0, amplitude=0.0), "silence.wav", "audio/wav"),
        415,
        "silent",
    ),
    UploadCase(
        "name_nul",
        "a file name holding a NUL byte",
        _named(b"evil\x00.wav", 600.0),
        422,
        "bad_metadata",
    ),
    UploadCase(
        "name_escape",
        "a file name holding a terminal escape sequence and a bell",
        _named(b"clear\x1b[2J\x07.wav", 610.0),
        422,
        "bad_metadata",
    ),
    UploadCase(
        "name_cr",
        "a file name holding a bare carriage return",
        _named(b"a\rb.wav", 612.0),
        400,
        "bad_form",
    ),
    UploadCase(
        # CR LF ends the part header: the name is the unterminated `"a.wav` and the forged header is one the
        # server ignores; the quote in the title is harmless.
        "name_crlf",
        "a file name holding CR LF and a forged part header",
        _named(b"a.wav\r\nX-Injected: 1", 615.0),
        201,
        None,
        title='"a',
    ),
    UploadCase(
        "name_traversal",
        "file name ../../etc/passwd",
        _named("../../etc/passwd", 620.0),
        201,
        None,
        title="passwd",
    ),
    UploadCase(
        "name_windows_traversal",
        "file name ..\\..\\windows\\win.ini",
        _named("..\\..\\windows\\win.ini", 630.0),
        201,
        None,
        title="win",
    ),
    UploadCase(
        "name_long",
        "a 1,000-character file name",
        _named("l" * 1000 + ".wav", 640.0),
        201,
        None,
        title="l" * 1000,
    ),
    UploadCase(
        "name_very_long",
        "a 20,000-character file name (part headers are limited)",
        _named("x" * 20_000 + ".wav", 645.0),
        400,
        "bad_form",
    ),
    UploadCase(
        "name_unicode",
        "file name Tr\u00e4umerei \u2013 \u591c\u60f3\u66f2 \U0001f3b9.wav",
        _named("Tr\u00e4umerei \u2013 \u591c\u60f3\u66f2 \U0001f3b9.wav", 650.0),
        201,
        None,
        title="Tr\u00e4umerei \u2013 \u591c\u60f3\u66f2 \U0001f3b9",
    ),
    UploadCase(
        "name_shell",
        "file name $(rm -rf ~); `id` | cat > x.wav",
        _named("$(rm -rf ~); `id` | cat > x.wav", 660.0),
        201,
        None,
        title="$(rm -rf ~); `id` | cat > x",
    ),
    # Decoded size: what decoding costs grows with rate x channels x samples, not with seconds.
    UploadCase(
        "rate_655350",
        "a 2 s FLAC at 655,350 Hz (decodes to gigabytes at the duration limit)",
        lambda _: multipart(_shaped(655_350, 1, "FLAC"), "fast.flac", "audio/flac"),
        415,
        "implausible_rate",
    ),
    UploadCase(
        "channels_16",
        "a WAV with 16 channels",
        lambda _: multipart(_shaped(22_050, 16), "wide.wav", "audio/wav"),
        415,
        "too_many_channels",
    ),
    UploadCase(
        "phase_cancelled",
        "stereo whose channels cancel (silent in the mono the embedder hears)",
        _phase_cancelled,
        415,
        "silent",
    ),
    # Values the database cannot hold: refused before anything is stored, never a 503.
    UploadCase(
        "year_beyond_int32",
        "year=3000000000",
        lambda _: multipart(tone(1.5, 670.0), "year.wav", "audio/wav", {"year": "3000000000"}),
        422,
        "bad_metadata",
    ),
    UploadCase(
        "metadata_too_large",
        "nine fields of 2,000 four-byte characters (over the bound on a track's metadata)",
        lambda _: multipart(tone(1.5, 680.0), "wide.wav", "audio/wav", _WIDE_FIELDS),
        422,
        "bad_metadata",
    ),
)


@dataclass
class Answer:
    """How one bad input was answered, and whether that is what it must be."""

    kind: str  # upload, id, event
    case: str
    what: str
    answer: str
    ok: bool
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Leftovers:
    """What a refused upload could leave: rows, objects (and unfinished multipart uploads), events."""

    tracks: int
    outbox: int
    objects: tuple[str, ...]
    added_events: int


async def leftovers(stack: StackSettings) -> Leftovers:
    connection = await connect_db(stack)
    try:
        tracks = int(await connection.fetchval("SELECT count(*) FROM tracks"))
        outbox = int(await connection.fetchval("SELECT count(*) FROM outbox"))
    finally:
        await connection.close()
    objects = await asyncio.to_thread(upload_objects, stack)
    ends = await end_offsets(stack, stack.topics.tracks_added)
    return Leftovers(tracks, outbox, tuple(objects), sum(ends.values()))


def upload_objects(stack: StackSettings) -> list[str]:
    """Audio and staging objects and unfinished multipart uploads (waveforms and snapshots are the
    pipeline's own and change while it works)."""
    s3 = s3_client(stack)
    keys: list[str] = []
    for prefix in ("audio/", "uploads/"):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=stack.bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
    uploads = s3.list_multipart_uploads(Bucket=stack.bucket)
    keys.extend(f"(unfinished) {u['Key']}" for u in uploads.get("Uploads", []))
    return sorted(keys)


async def send_upload(client: httpx.AsyncClient, body: Body) -> httpx.Response:
    if not body.chunked:
        return await client.post("/tracks", content=body.content, headers=body.headers)

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body.content), 256 * 1024):
            yield body.content[start : start + 256 * 1024]

    return await client.post("/tracks", content=pieces(), headers=body.headers)


def _reason(answer: httpx.Response) -> tuple[str | None, str]:
    try:
        payload = answer.json()
    except ValueError:
        return None, answer.text[:200]
    if isinstance(payload, dict):
        detail = payload.get("detail")
        return payload.get("error"), detail if isinstance(detail, str) else json.dumps(detail)[:300]
    return None, str(payload)[:200]


async def try_upload(services: Services, case: UploadCase, limits: IngestLimits = LIMITS) -> Answer:
    """Send one bad upload and check its answer and what it left behind."""
    stack = services.stack
    before = await leftovers(stack)
    async with services.client("ingest", write=True) as client:
        try:
            answer = await send_upload(client, case.build(limits))
        except httpx.TransportError as exc:
            return Answer("upload", case.name, case.what, f"no answer: {exc!r}", False, ["the connection failed"])
    error, detail = _reason(answer)
    problems: list[str] = []
    if answer.status_code != case.status:
        problems.append(f"expected {case.status}, got {answer.status_code}")
    if error != case.error and case.error is not None:
        problems.append(f"expected error {case.error!r}, got {error!r}")
    if answer.status_code >= 400 and not detail:
        problems.append("no reason given")
    if case.error is not None:
        await _settle_relay(stack)
        after = await leftovers(stack)
        if after != before:
            problems.append(f"left something behind: {_difference(before, after)}")
        summary = f"{answer.status_code} {error}: {detail}"
    else:
        summary, more = await _check_accepted(services, answer, case)
        problems.extend(more)
    return Answer("upload", case.name, case.what, summary, not problems, problems)


async def _settle_relay(stack: StackSettings) -> None:
    """Wait until the relay has published every outbox row, so an event a refusal wrongly queued shows."""
    connection = await connect_db(stack)
    try:
        async with asyncio.timeout(15):
            # Polled: the state is another process's, no event of ours says when it changes.
            while await connection.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
    finally:
        await connection.close()


def _difference(before: Leftovers, after: Leftovers) -> str:
    changes = []
    if after.tracks != before.tracks:
        changes.append(f"tracks {before.tracks} -> {after.tracks}")
    if after.outbox != before.outbox:
        changes.append(f"outbox {before.outbox} -> {after.outbox}")
    if after.added_events != before.added_events:
        changes.append(f"TrackAdded events {before.added_events} -> {after.added_events}")
    new = sorted(set(after.objects) - set(before.objects))
    if new:
        changes.append(f"objects {new}")
    return "; ".join(changes)


async def _check_accepted(services: Services, answer: httpx.Response, case: UploadCase) -> tuple[str, list[str]]:
    """An odd name on good audio: accepted, stored under its content hash, the name used only as a title."""
    problems: list[str] = []
    if answer.status_code not in (200, 201):
        return f"{answer.status_code}: {answer.text[:200]}", [f"expected {case.status}, got {answer.status_code}"]
    body = answer.json()
    track_id, sha256 = body["track_id"], body["sha256"]
    async with services.client("query") as query:
        track = (await query.get(f"/tracks/{track_id}")).json()
    title = track.get("title")
    if case.title is not None and title != case.title:
        problems.append(f"title {str(title)[:60]!r}, expected {case.title[:60]!r}")
    objects = [k for k in await asyncio.to_thread(upload_objects, services.stack) if sha256 in k]
    if len(objects) != 1 or not objects[0].startswith(f"audio/{sha256[:2]}/{sha256}."):
        problems.append(f"stored as {objects}, expected one content-addressed audio object")
    shown = str(title)
    shown = shown if len(shown) <= 40 else f"{shown[:20]}...({len(shown)} chars)"
    return f"{answer.status_code} accepted; title {shown!r}, stored as {objects[0] if objects else '?'}", problems


# --- hostile ids -----------------------------------------------------------


@dataclass(frozen=True)
class IdRoute:
    """A route taking an id (or, for filters, free text); ``{id}`` is replaced by the hostile value."""

    service: str
    method: str
    template: str
    write: bool = False
    # What it may answer; None: 404 or 422. A filter matching nothing answers 200 with nothing in it.
    answers: frozenset[int] | None = None


ID_ROUTES: tuple[IdRoute, ...] = (
    IdRoute("ingest", "GET", "/tracks/{id}/status"),
    IdRoute("ingest", "DELETE", "/tracks/{id}", write=True),
    IdRoute("query", "GET", "/tracks/{id}"),
    IdRoute("query", "GET", "/recommend/{id}"),
    IdRoute("query", "GET", "/audio/{id}"),
    IdRoute("query", "GET", "/waveform/{id}"),
    IdRoute("query", "GET", "/waveform/{id}?format=png"),
    # Free-text filters take the same values: each must match nothing (200) or be refused (422).
    IdRoute("ingest", "GET", "/drops?key={id}", answers=frozenset({200, 422})),
    IdRoute("query", "GET", "/tracks?composer={id}", answers=frozenset({200, 422})),
    IdRoute("query", "GET", "/tracks?text={id}", answers=frozenset({200, 422})),
    IdRoute("query", "GET", "/tracks?dataset={id}&era={id}", answers=frozenset({200, 422})),
)

# Name -> the id as it goes into the request target. ``/`` and ``%`` are sent as they are (so traversal and
# pre-encoded forms reach the server unaltered); everything else a client would have to percent-encode is.
HOSTILE_IDS: dict[str, str] = {
    "traversal": "../../etc/passwd",
    "traversal_deep": "../../../../../../../../etc/shadow",
    "encoded_traversal": "..%2F..%2Fetc%2Fpasswd",
    "double_encoded_traversal": "..%252F..%252Fetc%252Fpasswd",
    "dot_dot": "..",
    "backslash_traversal": "..\\..\\windows\\win.ini",
    "s3_key": "audio/00/" + "0" * 64 + ".wav",
    "absolute_uri": "s3://mess-audio/snapshots/LATEST",
    "nul_byte": "track\x00.wav",
    "encoded_nul": "track%00",
    "unicode": "träumerei-夜想曲",
    "unicode_fullwidth": "\uff54\uff52\uff41\uff43\uff4b",  # "track" in fullwidth letters
    "rtl_override": "\u202ewav.exe",
    "sql_quote": "x' OR '1'='1",
    "sql_union": "1 UNION SELECT id, sha256 FROM tracks--",
    "sql_drop": "x'; DROP TABLE tracks; --",
    "shell": "$(id)`uname`;ls",
    "percent": "%",
    "huge": "a" * 8_000,
    "request_line_100k": "a" * 100_000,
    "one_too_long": "a" * 129,
    "whitespace": " ",
    "upper_case": "ABCDEF",
}
# Answers that mean "no such track" or "not a track id"; 405 and 400 would do too but are not what the
# routes document, so they count as wrong.
ID_ANSWERS = frozenset({404, 422})
# A request line of 100 kB never reaches the app: the HTTP server (uvicorn) refuses it, as it should.
HTTP_SERVER_ANSWERS = {"request_line_100k": frozenset({400, 414})}


def request_target(template: str, hostile: str) -> bytes:
    path, _, query = template.partition("?")
    target = path.replace("{id}", quote(hostile, safe="/%\\'$`;()=,*!~:@&+"))
    if query:
        # In a query string only ``%`` stays as it is (pre-encoded forms); ``&`` and ``=`` must not split it.
        target += "?" + query.replace("{id}", quote(hostile, safe="%"))
    return target.encode("ascii")


async def try_id(services: Services, route: IdRoute, name: str) -> Answer:
    hostile = HOSTILE_IDS[name]
    target = request_target(route.template, hostile)
    what = f"{route.method} {route.service} {route.template.replace('{id}', name)}"
    async with services.client(route.service, write=route.write) as client:
        try:
            # The request target goes out byte for byte: httpx would otherwise remove dot segments.
            answer = await client.request(route.method, "/", extensions={"target": target})
        except httpx.TransportError as exc:
            return Answer("id", f"{route.service}:{name}", what, f"no answer: {exc!r}", False, ["no answer"])
    problems: list[str] = []
    allowed = HTTP_SERVER_ANSWERS.get(name, route.answers or ID_ANSWERS)
    if answer.status_code not in allowed:
        problems.append(f"answered {answer.status_code}, expected {' or '.join(map(str, sorted(allowed)))}")
    content_type = answer.headers.get("content-type", "")
    if answer.status_code < 300 and not content_type.startswith("application/json"):
        problems.append(f"served {content_type} content ({len(answer.content)} bytes)")
    return Answer("id", f"{route.service}:{name}", what, f"{answer.status_code}", not problems, problems)


# --- poison events ---------------------------------------------------------

# Which consumers read each topic (by their dead-letter stage).
CONSUMERS: dict[str, tuple[str, ...]] = {
    "tracks_added": ("embed",),
    "tracks_embedded": ("index", "ingest"),
    "tracks_removed": ("index",),
    "tracks_failed": ("ingest",),
    "index_snapshots": ("ingest", "query"),
}
MALFORMED = "malformed_event"
OVERSIZED_BYTES = 5 * 1024**2


@dataclass(frozen=True)
class PoisonContext:
    stack: StackSettings
    model: ModelIdentity  # the model the index holds


def _sample(topic: str, context: PoisonContext) -> dict[str, Any]:
    """A valid event of ``topic`` as a JSON object, for mutating into poison."""
    bucket = context.stack.bucket
    sha = "0" * 64
    event: Any
    if topic == "tracks_added":
        event = TrackAdded(
            track_id="poison", sha256=sha, audio_uri=f"s3://{bucket}/audio/00/{sha}.wav", dataset="upload"
        )
    elif topic == "tracks_embedded":
        vector = np.ones(context.model.dim, dtype=np.float32) / math.sqrt(context.model.dim)
        event = TrackEmbedded(track_id="poison", sha256=sha, model=context.model, vector=vector)
    elif topic == "tracks_removed":
        event = TrackRemoved(track_id="poison")
    elif topic == "tracks_failed":
        event = TrackFailed(track_id="poison", stage="embed", error_kind="decode", error="poison")
    else:
        event = SnapshotPublished(
            version="poison",
            manifest_uri=f"s3://{bucket}/{manifest_key('poison')}",
            counts=SnapshotCounts(vectors=0, shards=0),
        )
    result: dict[str, Any] = json.loads(event.to_bytes())
    return result


def _with(topic: str, context: PoisonContext, **changes: Any) -> bytes:
    return json.dumps({**_sample(topic, context), **changes}).encode()


def _wrong_types(topic: str, context: PoisonContext) -> bytes:
    field_name = "version" if topic == "index_snapshots" else "track_id"
    return _with(topic, context, **{field_name: 42, "occurred_at": "yesterday", "schema_version": "one"})


def _oversized(topic: str, context: PoisonContext) -> bytes:
    # A valid event, but with 5 MB of padding: no event of ours comes near that (a 1024-d vector is 5.5 kB).
    return _with(topic, context, padding="A" * OVERSIZED_BYTES)


def _vector(values: Sequence[float]) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()


@dataclass(frozen=True)
class PoisonCase:
    """A poison message for some topics, and the dead letter each consumer of such a topic must send
    (error kind by stage; ``None``: the event is valid for that consumer and handled without one)."""

    name: str
    what: str
    topics: tuple[str, ...]
    value: Callable[[str, PoisonContext], bytes]
    expect: Mapping[str, str | None] = field(default_factory=dict)  # stage -> error kind; default MALFORMED

    def expected(self, stage: str) -> str | None:
        return self.expect.get(stage, MALFORMED)


EVERY_TOPIC = tuple(CONSUMERS)

POISON_CASES: tuple[PoisonCase, ...] = (
    PoisonCase("not_json", "bytes that are not JSON", EVERY_TOPIC, lambda _t, _c: b"{not json \xff\xfe"),
    PoisonCase("empty", "an empty value", EVERY_TOPIC, lambda _t, _c: b""),
    PoisonCase("json_array", "JSON, but an array", EVERY_TOPIC, lambda _t, _c: b"[1, 2, 3]"),
    PoisonCase("wrong_schema", "an object of another schema", EVERY_TOPIC, lambda _t, _c: b'{"hello": "world"}'),
    PoisonCase("wrong_types", "the topic's event with fields of the wrong type", EVERY_TOPIC, _wrong_types),
    PoisonCase("oversized", "the topic's event padded to 5 MB", EVERY_TOPIC, _oversized),
    PoisonCase(
        "traversal_id",
        "track_id ../../etc/passwd (version for snapshots)",
        EVERY_TOPIC,
        lambda t, c: _with(t, c, **{"version" if t == "index_snapshots" else "track_id": "../../etc/passwd"}),
    ),
    PoisonCase(
        "wrong_dimension",
        "a vector of 3 values where the model says its dimension",
        ("tracks_embedded",),
        lambda t, c: _with(t, c, vector=_vector([0.6, 0.8, 0.0])),
    ),
    PoisonCase(
        "nan_vector",
        "a vector of NaN",
        ("tracks_embedded",),
        lambda t, c: _with(t, c, vector=_vector([math.nan] * c.model.dim)),
    ),
    PoisonCase(
        "other_model",
        "a consistent vector from a model the index does not hold",
        ("tracks_embedded",),
        lambda t, c: _with(
            t,
            c,
            model={"name": "intruder", "revision": "1", "dim": 4, "pooling": "mean"},
            vector=_vector([0.5, 0.5, 0.5, 0.5]),
        ),
        {"index": "model_mismatch", "ingest": None},
    ),
    PoisonCase(
        "foreign_audio_uri",
        "audio_uri in a bucket that is not ours",
        ("tracks_added",),
        lambda t, c: _with(t, c, audio_uri="s3://someone-elses-bucket/private/secret.wav"),
        {"embed": "foreign_uri"},
    ),
    PoisonCase(
        "sql_track_id",
        "a dead letter whose track_id is an SQL fragment",
        ("tracks_failed",),
        lambda t, c: _with(t, c, track_id="x'; DROP TABLE tracks; --"),
    ),
    PoisonCase(
        "nul_reason",
        "a dead letter whose reason holds NUL bytes",
        ("tracks_failed",),
        lambda t, c: _with(t, c, track_id="poison-nul", error="bad\u0000reason"),
        {"ingest": None},
    ),
    PoisonCase(
        "foreign_manifest",
        "a snapshot whose manifest lies in a bucket that is not ours",
        ("index_snapshots",),
        lambda t, c: _with(t, c, version="999999999999", manifest_uri="s3://someone-elses-bucket/manifest.json"),
        {"ingest": "bad_snapshot", "query": "bad_snapshot"},
    ),
    PoisonCase(
        "missing_manifest",
        "a snapshot whose manifest does not exist",
        ("index_snapshots",),
        lambda t, c: _with(
            t, c, version="999999999998", manifest_uri=f"s3://{c.stack.bucket}/{manifest_key('999999999998')}"
        ),
        {"ingest": "bad_snapshot", "query": "bad_snapshot"},
    ),
)


@dataclass
class Sent:
    case: PoisonCase
    topic: str  # attribute name on Topics
    name: str  # the topic's name on the broker
    partition: int
    offset: int
    size: int


async def send_poison(stack: StackSettings, context: PoisonContext, cases: Sequence[PoisonCase]) -> list[Sent]:
    """Every case, on every topic it is for, on every partition of the topic (so whatever partition a good
    event later takes, a poison message lies ahead of it)."""
    sent: list[Sent] = []
    producer = kafka.producer(stack, client_id="mess-dev-bad-input", max_request_size=OVERSIZED_BYTES * 2)
    await producer.start()
    try:
        for case in cases:
            for topic in case.topics:
                name = getattr(stack.topics, topic)
                value = case.value(topic, context)
                for partition in sorted(await producer.partitions_for(name)):
                    key = f"poison-{case.name}".encode()
                    metadata = await producer.send_and_wait(name, value, key=key, partition=partition)
                    sent.append(Sent(case, topic, name, partition, metadata.offset, len(value)))
    finally:
        await producer.stop()
    return sent


async def publish(stack: StackSettings, topic: str, key: str, value: bytes) -> None:
    producer = kafka.producer(stack, client_id="mess-dev-bad-input")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key.encode())
    finally:
        await producer.stop()


async def index_model(stack: StackSettings) -> ModelIdentity:
    """The model of the serving index (from the latest manifest)."""
    s3 = s3_client(stack)
    version = s3.get_object(Bucket=stack.bucket, Key=LATEST_KEY)["Body"].read().decode().strip()
    raw = s3.get_object(Bucket=stack.bucket, Key=manifest_key(version))["Body"].read()
    manifest = SnapshotManifest.model_validate_json(raw)
    if manifest.model is None:
        raise RuntimeError("the index holds no model yet")
    return manifest.model


def snapshot_ids(stack: StackSettings) -> set[str]:
    """The track ids of the latest snapshot."""
    s3 = s3_client(stack)
    version = s3.get_object(Bucket=stack.bucket, Key=LATEST_KEY)["Body"].read().decode().strip()
    manifest = SnapshotManifest.model_validate_json(
        s3.get_object(Bucket=stack.bucket, Key=manifest_key(version))["Body"].read()
    )
    ids: set[str] = set()
    for shard in manifest.shards:
        ids.update(json.loads(s3.get_object(Bucket=stack.bucket, Key=shard.ids.key)["Body"].read()))
    return ids


async def register_quietly(stack: StackSettings, track_id: str) -> None:
    """A registered track no TrackAdded announces (a row written as ingest writes it, without the outbox):
    nothing but the good TrackFailed sent after the poison can move it."""
    connection = await connect_db(stack)
    try:
        sha = hashlib.sha256(track_id.encode()).hexdigest()
        await connection.execute(
            "INSERT INTO tracks (id, sha256, audio_uri, dataset) VALUES ($1, $2, $3, 'bad-input')",
            track_id,
            sha,
            f"s3://{stack.bucket}/audio/{sha[:2]}/{sha}.wav",
        )
    finally:
        await connection.close()


@dataclass
class PoisonOutcome:
    answers: list[Answer]
    good_events: list[str]  # what was checked to pass behind the poison
    problems: list[str]


async def try_poison(services: Services, cases: Sequence[PoisonCase] = POISON_CASES) -> PoisonOutcome:
    """Poison on every consumed topic, then good events behind it; every poison must be dead-lettered by
    every consumer that must refuse it, and every partition must move on past it."""
    stack = services.stack
    context = PoisonContext(stack, await index_model(stack))
    started_failed = await end_offsets(stack, stack.topics.tracks_failed)
    sent = await send_poison(stack, context, cases)
    problems: list[str] = []
    good: list[str] = []

    # Behind the poison on tracks.added, tracks.embedded and index.snapshots: a real upload travels through
    # every consumer (embedder, indexer, ingest status, query).
    marker = f"bad-input-{uuid.uuid4().hex[:8]}"
    body = multipart(tone(2.0, 700.0 + len(services.seeds)), f"{marker}.wav", "audio/wav", {"title": marker})
    async with services.client("ingest", write=True) as client:
        answer = await client.post("/tracks", content=body.content, headers=body.headers)
    upload_id = str(answer.json()["track_id"])
    # Behind the poison on tracks.failed: a dead letter for a registered track that nothing else moves.
    failing = f"{marker}-failing"
    await register_quietly(stack, failing)
    letter = TrackFailed(track_id=failing, stage="embed", error_kind="decode", error="after the poison")
    await publish(stack, stack.topics.tracks_failed, failing, letter.to_bytes())
    try:
        await wait_until_indexed(services, [upload_id], within_s=90)
        good.append(f"an upload behind the poison was embedded, indexed, marked indexed and served ({upload_id})")
    except TimeoutError:
        problems.append("an upload sent behind the poison was not indexed and served within 90 s")
    try:
        await _wait_status(services, failing, "failed")
        good.append("a TrackFailed behind the poison marked its track failed")
    except TimeoutError:
        problems.append("a TrackFailed sent behind the poison was not applied within 30 s")
    # Behind the poison on tracks.removed: removing the upload takes it out of the next snapshot.
    async with services.client("ingest", write=True) as client:
        await client.delete(f"/tracks/{upload_id}")
    try:
        async with asyncio.timeout(60):
            while upload_id in await asyncio.to_thread(snapshot_ids, stack):  # noqa: ASYNC110 - S3 state, polled
                await asyncio.sleep(0.3)
        good.append("a TrackRemoved behind the poison took the upload out of the next snapshot")
    except TimeoutError:
        problems.append("a TrackRemoved sent behind the poison was not applied within 60 s")

    letters = await _dead_letters(stack, started_failed, sent)
    answers = [_poison_answer(s, letters) for s in _by_case_and_topic(sent)]
    problems.extend(await _offsets_passed(services, sent))
    return PoisonOutcome(answers, good, problems)


async def _wait_status(services: Services, track_id: str, wanted: str, within_s: float = 30.0) -> None:
    async with services.client("ingest") as ingest, asyncio.timeout(within_s):
        while (await ingest.get(f"/tracks/{track_id}/status")).json().get("status") != wanted:  # noqa: ASYNC110
            await asyncio.sleep(0.2)


def _by_case_and_topic(sent: list[Sent]) -> list[list[Sent]]:
    groups: dict[tuple[str, str], list[Sent]] = {}
    for item in sent:
        groups.setdefault((item.case.name, item.topic), []).append(item)
    return list(groups.values())


Letters = dict[tuple[str, int, int, str], TrackFailed]


async def _dead_letters(stack: StackSettings, since: Mapping[int, int], sent: list[Sent]) -> Letters:
    """Dead letters read from ``since`` until every expected one is there (or 60 s have passed), by
    (source topic, partition, offset, stage)."""
    wanted = {
        (s.name, s.partition, s.offset, stage)
        for s in sent
        for stage in CONSUMERS[s.topic]
        if s.case.expected(stage) is not None
    }
    letters: Letters = {}
    topic = stack.topics.tracks_failed
    consumer = kafka.consumer(stack, client_id="mess-dev-bad-input", enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(since)]
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, since[tp.partition])
        deadline = time.monotonic() + 60
        while not wanted <= set(letters) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                for record in records:
                    try:
                        letter = TrackFailed.from_bytes(record.value or b"")
                    except ValueError:
                        continue
                    if letter.source_topic and letter.source_partition is not None and letter.source_offset is not None:
                        key = (letter.source_topic, letter.source_partition, letter.source_offset, letter.stage)
                        letters[key] = letter
    finally:
        await consumer.stop()
    return letters


def _poison_answer(group: list[Sent], letters: Letters) -> Answer:
    case, topic, name = group[0].case, group[0].topic, group[0].name
    problems: list[str] = []
    answers: list[str] = []
    for stage in CONSUMERS[topic]:
        expected = case.expected(stage)
        got = [letter for s in group if (letter := letters.get((name, s.partition, s.offset, stage))) is not None]
        if expected is None:
            if got:
                problems.append(f"{stage}: dead-lettered ({got[0].error_kind}) an event it should handle")
            answers.append(f"{stage}: handled (valid for it)")
            continue
        if len(got) < len(group):
            problems.append(f"{stage}: {len(got)} of {len(group)} partitions' copies dead-lettered")
        kinds = Counter(letter.error_kind for letter in got)
        if got and set(kinds) != {expected}:
            problems.append(f"{stage}: dead letters of kind {dict(kinds)}, expected {expected}")
        reason = got[0].error if got else "(none)"
        answers.append(f"{stage}: {', '.join(sorted(kinds)) or 'no dead letter'} ({_short(reason)})")
    what = f"{case.what} ({_size(group[0].size)}) on {name[name.find('mess.') :]}"
    return Answer("event", f"{topic}:{case.name}", what, "; ".join(answers), not problems, problems)


def _size(size: int) -> str:
    return f"{size / 1024**2:.0f} MB" if size >= 1024**2 else f"{size} B"


def _short(text: str, limit: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def _offsets_passed(services: Services, sent: list[Sent]) -> list[str]:
    """Every consumer group's committed offset lies past every poison message of its topics."""
    stack = services.stack
    prefix = stack.topic_prefix
    groups = {
        "embed": f"{prefix}mess-embedder",
        "index": f"{prefix}mess-indexer",
        "ingest": f"{prefix}mess-ingest-status",
    }
    highest: dict[tuple[str, str, int], int] = {}
    for item in sent:
        for stage in CONSUMERS[item.topic]:
            if stage in groups:
                key = (stage, getattr(stack.topics, item.topic), item.partition)
                highest[key] = max(highest.get(key, -1), item.offset)
    problems: list[str] = []
    deadline = time.monotonic() + 60
    pending = dict(highest)
    while pending and time.monotonic() < deadline:
        for (stage, topic, partition), offset in list(pending.items()):
            committed = await committed_offset(stack, groups[stage], topic, partition)
            if committed > offset:
                del pending[(stage, topic, partition)]
        if pending:
            await asyncio.sleep(0.5)
    for (stage, topic, partition), offset in sorted(pending.items()):
        committed = await committed_offset(stack, groups[stage], topic, partition)
        problems.append(f"{groups[stage]} committed {committed} on {topic}[{partition}], not past poison at {offset}")
    return problems


async def committed_offset(stack: StackSettings, group: str, topic: str, partition: int) -> int:
    """The group's committed offset (-1 when none), read by a consumer that never joins the group."""
    reader = kafka.consumer(stack, client_id="mess-dev-bad-input", group_id=group, enable_auto_commit=False)
    await reader.start()
    try:
        offset = await reader.committed(TopicPartition(topic, partition))
    finally:
        await reader.stop()
    return offset if offset is not None else -1


async def end_offsets(stack: StackSettings, topic: str) -> dict[int, int]:
    consumer = kafka.consumer(stack, client_id="mess-dev-bad-input", enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return {tp.partition: int(offset) for tp, offset in ends.items()}


# --- fuzzing ---------------------------------------------------------------


@dataclass
class FuzzReport:
    service: str
    operations: int = 0
    cases: int = 0
    server_errors: int = 0
    schema_mismatches: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # distinct problems, each with one reproduction


def fuzz(
    services: Services, service: str, examples: int, deadline: float | None = None, seed: int | None = None
) -> FuzzReport:
    """schemathesis against one service's OpenAPI document: ``examples`` positive and as many negative
    cases per operation; every answer must be no 5xx and match the document (status, content type, body,
    headers). Failures are collected rather than raised, so one run counts them all."""
    import hypothesis
    import hypothesis.errors
    import hypothesis.reporting
    import schemathesis
    from hypothesis import strategies as st
    from schemathesis.checks import not_a_server_error
    from schemathesis.core.result import Ok
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    base = services.ingest_url if service == "ingest" else services.query_url
    # Only the API key is masked in reproductions: by default anything named like "key" is, which would
    # hide the very value that failed in GET /drops?key=...
    sanitize = {"keys-to-sanitize": ["x-api-key"], "sensitive-markers": ["api-key", "authorization"]}
    config = schemathesis.Config.from_dict({"output": {"sanitization": sanitize}})
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json", config=config)
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        response_headers_conformance,
    ]
    report = FuzzReport(service)
    seen: set[str] = set()
    statuses: Counter[str] = Counter()
    headers = {**access().read_headers, **access().write_headers}
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Ok):
            operations.append(result.ok())
        else:  # an operation schemathesis cannot read is a defect of the document
            report.schema_mismatches += 1
            report.failures.append(f"unreadable operation in the OpenAPI document: {result.err()}")
    for operation in operations:
        if operation.path in SKIPPED_PATHS:
            continue
        report.operations += 1
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)
            if services.seeds and "{track_id}" in operation.path and operation.method.upper() == "GET":
                # Half of the cases ask about a track that exists, so the answers of found tracks are checked
                # too (reads only: a fuzzed DELETE of a seed would take it away from the rest of the run).
                strategy = st.one_of(strategy, _with_seed(strategy, services.seeds))

            @hypothesis.settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=seed is not None,
                phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
                suppress_health_check=list(hypothesis.HealthCheck),
                print_blob=False,
            )
            @hypothesis.given(case=strategy)
            def run(case: Any) -> None:  # a schemathesis.Case
                if deadline is not None and time.monotonic() > deadline:
                    return
                report.cases += 1
                response = case.call(base_url=base, headers=headers, timeout=30)
                statuses[str(response.status_code)] += 1
                if response.status_code >= 500:
                    report.server_errors += 1
                try:
                    case.validate_response(response, checks=checks, headers=headers)
                except (AssertionError, BaseExceptionGroup) as exc:  # a FailureGroup of schemathesis failures
                    _record(report, seen, case, response, exc, base, headers)

            try:
                # Hypothesis reports a seed for every failure it raises; the only one that reaches here is
                # Unsatisfiable, which needs no reproduction.
                with hypothesis.reporting.with_reporter(lambda _: None):
                    run()
            except hypothesis.errors.Unsatisfiable:
                # Nothing to negate (an operation without parameters or body): no negative cases exist.
                continue
    report.statuses = dict(sorted(statuses.items()))
    return report


# /metrics is Prometheus text and /openapi.json the document itself: nothing to conform to.
SKIPPED_PATHS = frozenset({"/metrics"})


def _with_seed(strategy: Any, seeds: list[str]) -> Any:
    from hypothesis import strategies as st

    def substitute(pair: tuple[Any, str]) -> Any:
        case, track_id = pair
        if case.path_parameters is not None and "track_id" in case.path_parameters:
            case.path_parameters = {**case.path_parameters, "track_id": track_id}
        return case

    return st.tuples(strategy, st.sampled_from(seeds)).map(substitute)


def _record(
    report: FuzzReport,
    seen: set[str],
    case: Any,  # a schemathesis.Case
    response: Any,
    exc: BaseException,
    base: str,
    headers: Mapping[str, str],
) -> None:
    failures = getattr(exc, "exceptions", (exc,))
    titles = sorted({f"{getattr(f, 'title', type(f).__name__)}" for f in failures})
    if response.status_code < 500:
        report.schema_mismatches += 1
    key = f"{case.method} {case.path} {response.status_code} {'; '.join(titles)}"
    if key in seen:
        return
    seen.add(key)
    message = str(getattr(failures[0], "message", "")).strip().splitlines()
    curl = case.as_curl_command(headers=dict(headers), base_url=base)
    report.failures.append(f"{key}: {' '.join(message)[:300]}\n    {curl[:600]}")


# --- the whole run ---------------------------------------------------------


@dataclass
class BadInputReport:
    fuzz: list[FuzzReport]
    answers: list[Answer]
    good_events: list[str]
    problems: list[str]
    seconds: float
    examples: int

    def summary(self) -> dict[str, Any]:
        kinds = Counter(a.kind for a in self.answers)
        wrong = Counter(a.kind for a in self.answers if not a.ok)
        return {
            "fuzz_cases_run": sum(f.cases for f in self.fuzz),
            "server_errors_5xx": sum(f.server_errors for f in self.fuzz),
            "schema_mismatches": sum(f.schema_mismatches for f in self.fuzz),
            "bad_uploads": kinds["upload"],
            "hostile_id_requests": kinds["id"],
            "poison_events": kinds["event"],
            "wrong_answers": sum(wrong.values()) + len(self.problems),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "examples_per_operation_and_mode": self.examples,
            "seconds": round(self.seconds, 1),
            "fuzz": [asdict(f) for f in self.fuzz],
            "answers": [asdict(a) for a in self.answers],
            "good_events_behind_poison": self.good_events,
            "problems": self.problems,
        }


def render(report: BadInputReport) -> str:
    lines = [f"bad input: {report.seconds:.0f} s", ""]
    lines.append(f"{'fuzzed':<8} {'operations':>10} {'cases':>7} {'5xx':>5} {'schema mismatches':>18}  statuses")
    for f in report.fuzz:
        statuses = " ".join(f"{code}:{n}" for code, n in f.statuses.items())
        lines.append(
            f"{f.service:<8} {f.operations:>10} {f.cases:>7} {f.server_errors:>5} {f.schema_mismatches:>18}  {statuses}"
        )
        lines.extend(f"  ! {failure}" for failure in f.failures)
    for kind, title in (("upload", "bad uploads"), ("id", "hostile ids"), ("event", "poison events")):
        chosen = [a for a in report.answers if a.kind == kind]
        lines += ["", f"{title} ({len(chosen)})"]
        for a in chosen:
            mark = "ok " if a.ok else "BAD"
            lines.append(f"  {mark} {a.what[:70]:<70} -> {_short(a.answer, 160)}")
            lines.extend(f"        ! {p}" for p in a.problems)
    if report.good_events:
        lines += ["", "behind the poison"]
        lines.extend(f"  ok  {g}" for g in report.good_events)
    if report.problems:
        lines += ["", "problems"]
        lines.extend(f"  ! {p}" for p in report.problems)
    summary = report.summary()
    lines += ["", "summary: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in summary.items())]
    return "\n".join(lines)


def run_bad_input(examples: int, budget_s: float, results: Path | None = RESULTS_PATH) -> BadInputReport:
    """The whole run on a private stack: start the services, fuzz both APIs (at most half the budget),
    then every bad upload, hostile id and poison event."""
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="mess-bad-input-"))
    try:
        with (
            backing_stack(work / "backing") as base,
            local.private_stack(base, "bi", 2) as stack,
            running_services(stack, work) as services,
        ):
            log.info("services up with %d seed tracks after %.0f s", len(services.seeds), time.monotonic() - started)
            fuzz_deadline = started + budget_s / 2
            reports = [fuzz(services, name, examples, fuzz_deadline) for name in ("ingest", "query")]
            log.info("fuzzed %d cases", sum(r.cases for r in reports))
            answers = asyncio.run(_answers(services))
            outcome = asyncio.run(try_poison(services))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = BadInputReport(
        reports,
        answers + outcome.answers,
        outcome.good_events,
        outcome.problems,
        time.monotonic() - started,
        examples,
    )
    if results is not None:
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return report


async def _answers(services: Services) -> list[Answer]:
    answers = [await try_upload(services, case) for case in UPLOAD_CASES]
    for route in ID_ROUTES:
        answers.extend([await try_id(services, route, name) for name in HOSTILE_IDS])
    return answers


# --- shared helpers --------------------------------------------------------


def s3_client(stack: StackSettings) -> Any:
    kwargs: dict[str, Any] = stack.s3_client_kwargs()
    return boto3.client("s3", **kwargs)


async def connect_db(stack: StackSettings) -> asyncpg.Connection[asyncpg.Record]:
    return await asyncpg.connect(stack.postgres_dsn, server_settings={"search_path": stack.postgres_schema})


__all__ = [
    "HOSTILE_IDS",
    "ID_ROUTES",
    "POISON_CASES",
    "UPLOAD_CASES",
    "BadInputReport",
    "access",
    "fuzz",
    "render",
    "run_bad_input",
    "running_services",
    "try_id",
    "try_poison",
    "try_upload",
]
