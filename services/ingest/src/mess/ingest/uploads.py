"""``POST /tracks``: a multipart upload streamed to S3, validated, registered.

The request body is parsed as it arrives (python-multipart's streaming
parser) instead of letting the framework buffer the whole form first: each
chunk of the ``file`` part is hashed, appended to a spooled temporary file
(memory up to ``spool_memory_bytes``, then disk) for decoding, and sent on to
S3 as multipart-upload parts. The size limit is checked on every chunk, so an
oversized body is refused (413) after at most one chunk past the limit. Only
once the last byte is in is the audio decoded; a rejection deletes the staged
object, so a refused upload leaves neither an object nor a row.

Every value of the track is checked against its column before the audio is
copied to its content-addressed key; should the registration fail anyway
(Postgres down), the copy this upload made is deleted again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO, TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from mess.contracts.events import TrackMetadata
from mess.contracts.limits import MAX_METADATA_BYTES
from mess.ingest import metrics
from mess.ingest.audio import AudioLimits, UnacceptableAudioError, inspect_audio
from mess.ingest.metadata import metadata_problem
from mess.ingest.registry import Registration, StoredAudio, TrackCandidate, UnstorableTrackError, undo_keep

if TYPE_CHECKING:
    from mess.ingest.config import Settings
    from mess.ingest.registry import TrackRegistry
    from mess.ingest.store import AudioStore, StagedUpload

log = logging.getLogger(__name__)

UPLOAD_DATASET = "upload"
FILE_FIELD = "file"
# The optional form fields of an upload are the TrackMetadata fields.
METADATA_FIELDS = tuple(TrackMetadata.model_fields)
_MAX_FIELDS = 64
# Room for the multipart boundaries, part headers and metadata fields around the file.
_ENVELOPE_BYTES = 256 * 1024


class UploadError(Exception):
    """A refused upload: the HTTP status, a stable kind and a message for people."""

    def __init__(self, status_code: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class UploadResult:
    registration: Registration
    sha256: str
    size_bytes: int
    duration_s: float | None


@dataclass
class _Part:
    name: str | None = None
    filename: str | None = None
    text: bytearray = field(default_factory=bytearray)


class _FormStream:
    """Walks a multipart body chunk by chunk, handing the file part's bytes to the sinks as they come."""

    def __init__(self, settings: Settings, staged: StagedUpload, spool: IO[bytes]) -> None:
        self._settings = settings
        self._staged = staged
        self._spool = spool
        self._hash = hashlib.sha256()
        self._events: list[tuple[str, bytes]] = []
        self._part = _Part()
        self._header_field = bytearray()
        self._header_value = bytearray()
        self.fields: dict[str, list[str]] = {}
        self.filename: str | None = None
        self.file_bytes = 0
        self.file_parts = 0

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def parser(self, boundary: bytes) -> MultipartParser:
        def data(kind: str) -> Any:
            return lambda buffer, start, end: self._events.append((kind, bytes(buffer[start:end])))

        def mark(kind: str) -> Any:
            return lambda: self._events.append((kind, b""))

        callbacks: Any = {
            "on_part_begin": mark("part_begin"),
            "on_part_data": data("part_data"),
            "on_part_end": mark("part_end"),
            "on_header_field": data("header_field"),
            "on_header_value": data("header_value"),
            "on_header_end": mark("header_end"),
            "on_headers_finished": mark("headers_finished"),
        }
        return MultipartParser(boundary, callbacks)

    async def feed(self, parser: MultipartParser, chunk: bytes) -> None:
        parser.write(chunk)
        events, self._events = self._events, []
        for kind, payload in events:
            await self._on(kind, payload)

    async def _on(self, kind: str, payload: bytes) -> None:
        if kind == "part_begin":
            self._part = _Part()
        elif kind == "header_field":
            self._header_field += payload
        elif kind == "header_value":
            self._header_value += payload
        elif kind == "header_end":
            if bytes(self._header_field).lower() == b"content-disposition":
                _, options = parse_options_header(bytes(self._header_value))
                name = options.get(b"name")
                filename = options.get(b"filename")
                self._part.name = name.decode("utf-8", "replace") if name is not None else None
                self._part.filename = filename.decode("utf-8", "replace") if filename is not None else None
            self._header_field.clear()
            self._header_value.clear()
        elif kind == "headers_finished":
            if self._part.name == FILE_FIELD:
                self.file_parts += 1
                if self.file_parts > 1:
                    raise UploadError(400, "bad_form", "send exactly one `file` part")
                self.filename = self._part.filename
        elif kind == "part_data":
            if self._part.name == FILE_FIELD:
                await self._file_data(payload)
            else:
                self._part.text += payload
                if len(self._part.text) > self._settings.max_field_chars * 4:  # UTF-8 has at most 4 bytes a char
                    raise UploadError(422, "bad_metadata", f"field `{self._part.name}` is too long")
        elif kind == "part_end" and self._part.name not in (None, FILE_FIELD):
            if sum(len(v) for v in self.fields.values()) >= _MAX_FIELDS:
                raise UploadError(422, "bad_metadata", f"more than {_MAX_FIELDS} form fields")
            value = self._part.text.decode("utf-8", "replace")
            self.fields.setdefault(str(self._part.name), []).append(value)

    async def _file_data(self, chunk: bytes) -> None:
        self.file_bytes += len(chunk)
        if self.file_bytes > self._settings.max_upload_bytes:
            raise UploadError(
                413, "too_large", f"the file exceeds the upload limit of {self._settings.max_upload_bytes} bytes"
            )
        self._hash.update(chunk)
        self._spool.write(chunk)
        await self._staged.write(chunk)


def metadata_from_form(
    fields: dict[str, list[str]], filename: str | None, max_chars: int, max_bytes: int = MAX_METADATA_BYTES
) -> TrackMetadata:
    """The optional metadata fields of an upload; the title defaults to the file's name without extension.
    Raises ``UploadError`` (422) for metadata a track cannot hold: checked before anything is kept."""
    unknown = sorted(set(fields) - set(METADATA_FIELDS))
    if unknown:
        raise UploadError(
            422, "bad_metadata", f"unknown field(s) {', '.join(unknown)}; known: file, {', '.join(METADATA_FIELDS)}"
        )
    values: dict[str, Any] = {}
    for name, entries in fields.items():
        if name == "tags":
            # Repeated fields, comma-separated values, or both.
            values["tags"] = [tag.strip() for entry in entries for tag in entry.split(",") if tag.strip()]
            continue
        if len(entries) > 1:
            raise UploadError(422, "bad_metadata", f"field `{name}` was sent {len(entries)} times")
        value = entries[0].strip()
        if len(value) > max_chars:
            raise UploadError(422, "bad_metadata", f"field `{name}` is longer than {max_chars} characters")
        if value:
            values[name] = value
    if "title" not in values and filename:
        stem = PurePosixPath(filename.replace("\\", "/")).stem.strip()
        if stem:
            values["title"] = stem[:max_chars]
    try:
        metadata = TrackMetadata.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise UploadError(422, "bad_metadata", problems) from exc
    # Checked here, before the audio is kept: a title from a file name with a NUL byte, or a year no
    # integer column holds, would otherwise fail the insert after the object was stored, leaving it behind
    # with a 503 as the answer; metadata too large for one event would never leave the outbox.
    problem = metadata_problem(metadata, max_bytes)
    if problem is not None:
        source = " (the title comes from the file name)" if "title" not in fields and filename else ""
        raise UploadError(422, "bad_metadata", problem + source)
    return metadata


class UploadIntake:
    def __init__(self, settings: Settings, store: AudioStore, registry: TrackRegistry) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.limits = AudioLimits(settings.min_duration_s, settings.max_duration_s, settings.silence_peak)
        # Each upload holds up to one S3 part and one spool's worth of memory, and decoding is CPU-bound.
        self._slots = asyncio.Semaphore(settings.upload_concurrency)

    async def accept(self, request: Request) -> UploadResult:
        boundary = self._boundary(request)
        self._check_declared_length(request)
        async with self._slots:
            metrics.UPLOADS_IN_PROGRESS.inc()
            try:
                return await self._accept(request, boundary)
            finally:
                metrics.UPLOADS_IN_PROGRESS.dec()

    async def _accept(self, request: Request, boundary: bytes) -> UploadResult:
        staged = self.store.staged_upload()
        spool = tempfile.SpooledTemporaryFile(max_size=self.settings.spool_memory_bytes)  # noqa: SIM115 - closed below
        try:
            form = await self._receive(request, boundary, staged, spool)
            metadata = metadata_from_form(
                form.fields, form.filename, self.settings.max_field_chars, self.settings.max_metadata_bytes
            )
            sha256 = form.sha256
            # Known content was validated when it first came: answer without decoding it again.
            existing = await self.registry.existing_content(sha256)
            if existing is not None:
                return UploadResult(existing, sha256, form.file_bytes, existing.duration_s)
            spool.seek(0)
            try:
                facts = await asyncio.to_thread(inspect_audio, spool, self.limits)
            except UnacceptableAudioError as exc:
                raise UploadError(415, exc.kind, exc.message) from exc
            candidate = TrackCandidate(
                track_id=sha256[:32],
                dataset=UPLOAD_DATASET,
                metadata=metadata,
                audio=StoredAudio(
                    sha256=sha256,
                    audio_uri=self.store.audio_uri(sha256, facts.extension),
                    size_bytes=form.file_bytes,
                    facts=facts,
                ),
            )
            try:
                self.registry.check(candidate)
                registration = await self._keep_and_register(staged.key, candidate)
            except UnstorableTrackError as exc:
                raise UploadError(422, exc.kind, str(exc)) from exc
            metrics.UPLOAD_BYTES.inc(form.file_bytes)
            return UploadResult(registration, sha256, form.file_bytes, facts.duration_s)
        finally:
            spool.close()
            await staged.discard()

    async def _keep_and_register(self, source_key: str, candidate: TrackCandidate) -> Registration:
        """Copy the audio to its key and register it; a copy made here is deleted again if registering fails."""
        sha256, extension = candidate.audio.sha256, candidate.audio.facts.extension
        created = await self.store.keep(source_key, sha256, extension)
        try:
            registration = await self.registry.register(candidate)
        except BaseException:
            if created:
                await undo_keep(self.registry, self.store, candidate.audio)
            raise
        if registration.existing and registration.announced:
            # Content brought back: a removal's erasure may have deleted the object between our copy and the
            # revival (it holds the row lock, the copy did not). Copy again if so; a no-op otherwise.
            await self.store.keep(source_key, sha256, extension)
        return registration

    async def _receive(self, request: Request, boundary: bytes, staged: StagedUpload, spool: IO[bytes]) -> _FormStream:
        form = _FormStream(self.settings, staged, spool)
        parser = form.parser(boundary)
        # The file part is limited as it arrives; this bounds the rest (fields, part headers, a preamble
        # or an epilogue the parser skips), so no body of any shape is read without end.
        body_limit = self.settings.max_upload_bytes + _ENVELOPE_BYTES
        received = 0
        try:
            async for chunk in request.stream():
                received += len(chunk)
                if received > body_limit:
                    raise UploadError(
                        413, "too_large", f"the body exceeds the upload limit of {self.settings.max_upload_bytes} bytes"
                    )
                if chunk:
                    await form.feed(parser, chunk)
            parser.finalize()
            if form.file_parts == 0:
                raise UploadError(400, "no_file", "the form has no `file` part")
            await staged.finish()
        except FormParserError as exc:
            raise UploadError(400, "bad_form", f"the multipart body is malformed: {exc}") from exc
        except ClientDisconnect as exc:
            raise UploadError(400, "disconnected", "the client went away before the upload finished") from exc
        except (ClientError, BotoCoreError) as exc:
            log.warning("staging an upload in S3 failed: %r", exc)
            raise UploadError(503, "storage_unavailable", "the audio store did not take the upload; try again") from exc
        return form

    def _boundary(self, request: Request) -> bytes:
        content_type, options = parse_options_header(request.headers.get("content-type"))
        boundary = options.get(b"boundary")
        if content_type != b"multipart/form-data" or not boundary:
            raise UploadError(
                415, "not_multipart", "POST /tracks takes multipart/form-data with the audio in a `file` field"
            )
        return boundary

    def _check_declared_length(self, request: Request) -> None:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.settings.max_upload_bytes + _ENVELOPE_BYTES:
            raise UploadError(
                413,
                "too_large",
                f"the body of {declared} bytes exceeds the upload limit of {self.settings.max_upload_bytes} bytes",
            )
