"""S3 auto-ingest: objects dropped under the drop prefix become tracks.

Two roads lead here, and both end in ``DropIngestor.ingest``:

* ``DropNoticeWorker`` long-polls the SQS queue that the bucket's
  ObjectCreated notifications go to. A message is deleted only after every
  object it names is settled (its track and outbox rows committed, or its
  rejection recorded); on a transient failure it is left to reappear, with
  a growing visibility timeout, and dead-lettered after
  ``sqs_max_receives`` tries.
* ``DropScan`` lists the prefix now and then and ingests what no notice
  brought (a lost notice, a queue created after the object).

When the service stops, both stop taking new objects at once; the objects
already being handled are finished and committed (and their messages
deleted), and notices received but not started are handed back to the queue
for another replica.

An object is validated exactly like an upload. One that is not acceptable
audio is recorded as rejected (with its ETag, so it is tried again only when
it changes), shown as a failed track when its id is known, and dead-lettered.
Importers describe their objects with user metadata ``mess-dataset``,
``mess-track-id`` and ``mess-metadata`` (ASCII-escaped TrackMetadata JSON);
without them an object is dataset ``s3``, its id the first 32 hex digits of
its sha256, its title the file name and its tags the folders.

What a drop may claim (the bucket's trust model; see the README). Whoever
can write the drop prefix can name any metadata, so a name proves nothing
beyond the right to write where the object lies:

* ``mess-dataset`` must be a dataset name (the id alphabet), may not be the
  API's own ``upload``, and the object must lie in that dataset's folder,
  ``{drop prefix}{dataset}/``. Write access to a dataset is then write access
  to its folder, which the bucket's policy can grant per dataset.
* ``mess-track-id`` must lie in that dataset's namespace: the ids
  ``track_id_from_parts(dataset, ...)`` makes all begin ``{dataset}-``.
* Replacing or reviving an existing track needs the authority that wrote it
  (``registry.may_rewrite``): a drop never touches an upload's track nor
  another dataset's.

A refused claim is a rejection like any other: recorded (``/drops`` shows
it), dead-lettered, and not retried until the object changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, TYPE_CHECKING, Any, Literal
from urllib.parse import unquote_plus

from botocore.exceptions import ClientError
from pydantic import ValidationError

from mess.contracts.events import TrackMetadata
from mess.contracts.ids import dataset_namespace, is_dataset_name, is_track_id
from mess.contracts.limits import MAX_METADATA_BYTES
from mess.ingest import metrics
from mess.ingest.audio import AudioLimits, UnacceptableAudioError, inspect_audio
from mess.ingest.metadata import metadata_problem
from mess.ingest.outages import BACKEND_ERRORS, is_transient
from mess.ingest.registry import (
    ClaimRefusedError,
    DropSource,
    Registration,
    RejectedContent,
    StoredAudio,
    TrackCandidate,
    UnstorableTrackError,
    undo_keep,
)
from mess.ingest.store import is_missing
from mess.runtime.deadletter import dead_letter
from mess.runtime.termination import wait_or_stop

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient
    from types_aiobotocore_sqs.type_defs import MessageTypeDef

    from mess.ingest.config import Settings
    from mess.ingest.registry import TrackRegistry
    from mess.ingest.store import AudioStore

log = logging.getLogger(__name__)

DROP_DATASET = "s3"
# The dataset of API uploads: its tracks are written with a key, and no drop may pose as one.
RESERVED_DATASETS = frozenset({"upload"})
META_DATASET = "mess-dataset"
META_TRACK_ID = "mess-track-id"
META_METADATA = "mess-metadata"


@dataclass(frozen=True)
class DropOutcome:
    key: str
    outcome: Literal["registered", "duplicate", "rejected", "skipped"]
    track_id: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class DropIdentity:
    dataset: str
    track_id: str | None  # None: derived from the content hash
    metadata: TrackMetadata


class DropIntakeStoppedError(Exception):
    """The service is stopping: this object was not started and is left for later (another replica, a restart)."""


class DropMetadataError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def guess_metadata(key: str, prefix: str) -> TrackMetadata:
    """Metadata of a plain dropped file: the title from its name, the tags from its folders."""
    path = PurePosixPath(key.removeprefix(prefix))
    title = path.stem.replace("_", " ").strip() or None
    tags = [folder for folder in path.parent.parts if folder not in ("", ".")]
    return TrackMetadata(title=title, tags=tags)


def identity_of(
    key: str, prefix: str, user_metadata: dict[str, str], max_metadata_bytes: int = MAX_METADATA_BYTES
) -> DropIdentity:
    """Who a dropped object says it is, from its S3 user metadata (importers) or its key (anyone else);
    raises ``DropMetadataError`` for metadata that is malformed or claims what the object may not."""
    dataset = user_metadata.get(META_DATASET, "").strip()
    track_id = user_metadata.get(META_TRACK_ID, "").strip() or None
    described = user_metadata.get(META_METADATA)
    if track_id is not None and not is_track_id(track_id):
        raise DropMetadataError("bad_metadata", f"{META_TRACK_ID} {track_id[:200]!r} is not a valid track id")
    if described is not None:
        try:
            metadata = TrackMetadata.model_validate_json(described)
        except ValidationError as exc:
            raise DropMetadataError("bad_metadata", f"{META_METADATA} is not TrackMetadata JSON: {exc}") from exc
    else:
        metadata = guess_metadata(key, prefix)
    if len(dataset) > 64:
        raise DropMetadataError("bad_metadata", f"{META_DATASET} is longer than 64 characters")
    problem = metadata_problem(metadata, max_metadata_bytes)
    if problem is not None:
        raise DropMetadataError("bad_metadata", problem)
    if dataset or track_id is not None:
        _check_claim(key, prefix, dataset or DROP_DATASET, track_id)
    return DropIdentity(dataset=dataset or DROP_DATASET, track_id=track_id, metadata=metadata)


def _check_claim(key: str, prefix: str, dataset: str, track_id: str | None) -> None:
    """A named dataset or a claimed id is believed only as far as where the object lies allows."""
    if not is_dataset_name(dataset):
        raise DropMetadataError("bad_metadata", f"{META_DATASET} {dataset[:64]!r} is not a dataset name")
    if dataset in RESERVED_DATASETS:
        raise DropMetadataError("claim_refused", f"dataset {dataset!r} is the API's; a drop may not claim it")
    folder = f"{prefix}{dataset}/"
    if not key.startswith(folder):
        raise DropMetadataError(
            "claim_refused", f"an object of dataset {dataset!r} must lie under {folder} (it names the dataset)"
        )
    if track_id is not None and not track_id.startswith(dataset_namespace(dataset)):
        raise DropMetadataError(
            "claim_refused",
            f"{META_TRACK_ID} {track_id!r} is not in the namespace of dataset {dataset!r} "
            f"(ids beginning {dataset_namespace(dataset)!r})",
        )


class DropIngestor:
    """Turns one object under the drop prefix into a track, or into a recorded rejection."""

    def __init__(
        self,
        settings: Settings,
        store: AudioStore,
        registry: TrackRegistry,
        stopping: asyncio.Event | None = None,
    ) -> None:
        self.settings = settings
        self.prefix = settings.stack.drop_prefix
        self.store = store
        self.registry = registry
        self.limits = AudioLimits(settings.min_duration_s, settings.max_duration_s, settings.silence_peak)
        self.stopping = stopping or asyncio.Event()
        # Decoding is CPU-bound: bound how many objects are validated at once, notices and scans together.
        self._slots = asyncio.Semaphore(settings.drop_concurrency)
        self.in_progress = 0
        # Keys no row can name, reported once per process rather than at every scan.
        self._reported_keys: set[str] = set()

    async def ingest(self, key: str, etag: str | None = None) -> DropOutcome:
        """Ingest one object; raises ``DropIntakeStoppedError`` when the service stopped before it began."""
        if not key.startswith(self.prefix) or key.endswith("/"):
            return DropOutcome(key, "skipped", reason="not an object under the drop prefix")
        if not storable_key(key):
            return await self.report_unstorable_key(key)
        async with self._slots:
            # Checked after the wait for a slot: an object that waited through the stop request is not started.
            if self.stopping.is_set():
                raise DropIntakeStoppedError(key)
            self.in_progress += 1
            metrics.DROPS_IN_PROGRESS.inc()
            try:
                outcome = await self._ingest_or_refuse(key, etag)
            finally:
                self.in_progress -= 1
                metrics.DROPS_IN_PROGRESS.dec()
        metrics.DROPPED_OBJECTS.labels(outcome.outcome).inc()
        if outcome.outcome == "rejected":
            log.info("dropped object %s rejected: %s", key, outcome.reason)
        return outcome

    async def _ingest_or_refuse(self, key: str, etag: str | None) -> DropOutcome:
        """``_ingest``, with any failure that is not an outage made a rejection: an object that fails the same
        way every time must be settled, not retried at every notice and scan for ever."""
        try:
            return await self._ingest(key, etag)
        except Exception as exc:
            if is_transient(exc):
                raise
            log.exception("dropped object %s could not be ingested; it is rejected until it changes", key)
            head = await self.store.head(key)
            drop = DropSource(key, head.etag if head is not None else None)
            return await self._reject(
                drop, "unprocessable", f"the object could not be processed ({type(exc).__name__})", None
            )

    async def _ingest(self, key: str, etag: str | None) -> DropOutcome:
        head = await self.store.head(key)
        if head is None:
            return DropOutcome(key, "skipped", reason="the object no longer exists")
        drop = DropSource(key, head.etag)
        if etag is not None and head.etag != etag.strip('"'):
            log.debug("object %s changed since its notice; ingesting what is there now", key)
        if key in await self.registry.settled_drops([drop]):
            return DropOutcome(key, "skipped", reason="already ingested")
        try:
            identity = identity_of(key, self.prefix, head.metadata, self.settings.max_metadata_bytes)
        except DropMetadataError as exc:
            return await self._reject(drop, exc.kind, exc.message, None)
        if head.size_bytes > self.settings.max_drop_bytes:
            message = f"the object has {head.size_bytes} bytes; the limit is {self.settings.max_drop_bytes}"
            return await self._reject(drop, "too_large", message, None)

        hasher = hashlib.sha256()
        with tempfile.SpooledTemporaryFile(max_size=self.settings.spool_memory_bytes) as spool:
            try:
                size, read_etag = await self.store.download(key, _tee(hasher, spool))
            except ClientError as exc:
                if is_missing(exc):
                    return DropOutcome(key, "skipped", reason="the object no longer exists")
                raise
            drop = DropSource(key, read_etag or head.etag)
            sha256 = hasher.hexdigest()
            track_id = identity.track_id or sha256[:32]
            spool.seek(0)
            try:
                facts = await asyncio.to_thread(inspect_audio, spool, self.limits)
            except UnacceptableAudioError as exc:
                content = RejectedContent(
                    track_id=track_id,
                    sha256=sha256,
                    source_uri=self.store.uri(key),
                    dataset=identity.dataset,
                    metadata=identity.metadata,
                    size_bytes=size,
                )
                return await self._reject(drop, exc.kind, exc.message, content)

        candidate = TrackCandidate(
            track_id=track_id,
            dataset=identity.dataset,
            metadata=identity.metadata,
            audio=StoredAudio(
                sha256=sha256, audio_uri=self.store.audio_uri(sha256, facts.extension), size_bytes=size, facts=facts
            ),
            source_key=key,
        )
        try:
            # Every value against its column before the copy: a refusal then leaves nothing behind.
            self.registry.check(candidate)
            registration = await self._keep_and_register(candidate, drop)
        except (UnstorableTrackError, ClaimRefusedError) as exc:
            return await self._reject(drop, exc.kind, str(exc), None)
        return DropOutcome(key, "registered" if registration.announced else "duplicate", track_id=registration.track_id)

    async def _keep_and_register(self, candidate: TrackCandidate, drop: DropSource) -> Registration:
        audio = candidate.audio
        created = False
        if await self.registry.existing_content(audio.sha256) is None:  # known content is not written again
            created = await self.store.keep(drop.key, audio.sha256, audio.facts.extension)
        try:
            registration = await self.registry.register(candidate, drop)
        except BaseException:
            if created:
                await undo_keep(self.registry, self.store, audio)
            raise
        if registration.existing and registration.announced:
            # Revived content: make sure a removal's erasure did not take the object from under the revival.
            await self.store.keep(drop.key, audio.sha256, audio.facts.extension)
        return registration

    async def report_unstorable_key(self, key: str) -> DropOutcome:
        """A key no Postgres text can hold (NUL): it cannot be recorded as rejected, so it is dead-lettered
        (once per process; a scan meets it again every interval), counted and logged, and skipped."""
        shown = printable_key(key)
        if key not in self._reported_keys:
            self._reported_keys.add(key)
            log.warning("dropped object %s has a key no row can hold (a NUL character); skipped", shown)
            await self.registry.record_dead_letter(
                dead_letter(
                    stage="ingest",
                    error_kind="bad_key",
                    error=f"the object key {shown} holds a NUL character; the object is skipped",
                    raw=json.dumps({"bucket": self.store.bucket, "key": shown}).encode(),
                ),
                key=_letter_key(self.store.bucket, shown),
            )
        metrics.DROPPED_OBJECTS.labels("bad_key").inc()
        return DropOutcome(shown, "skipped", reason="bad_key: the object key holds a NUL character")

    async def _reject(self, drop: DropSource, kind: str, message: str, content: RejectedContent | None) -> DropOutcome:
        letter = dead_letter(
            stage="ingest",
            error_kind=kind,
            error=f"{drop.key}: {message}",
            raw=json.dumps({"bucket": self.store.bucket, "key": drop.key, "etag": drop.etag}).encode(),
            track_id=content.track_id if content is not None else None,
        )
        reason = f"{kind}: {message}"
        await self.registry.record_rejected_drop(
            drop, letter, content, reason=reason, letter_key=_letter_key(self.store.bucket, drop.key)
        )
        return DropOutcome(drop.key, "rejected", track_id=content.track_id if content else None, reason=reason)


def storable_key(key: str) -> bool:
    """Whether Postgres text can hold ``key`` (S3 keys may hold NUL; text never can)."""
    return "\x00" not in key


def printable_key(key: str) -> str:
    """``key`` with NUL and other control characters escaped: fit for a log line, a row or a message."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in key)[:2048]


def _letter_key(bucket: str, key: str) -> str:
    """The Kafka key of a dead letter about a dropped object: the object, so letters about it stay in order."""
    return f"s3://{bucket}/{key}"[:1024]


def _tee(hasher: Any, spool: IO[bytes]) -> Any:
    def sink(chunk: bytes) -> None:
        hasher.update(chunk)
        spool.write(chunk)

    return sink


@dataclass(frozen=True)
class ObjectNotice:
    bucket: str
    key: str
    etag: str | None


class MalformedNoticeError(ValueError):
    pass


def parse_notice(body: str) -> list[ObjectNotice]:
    """The objects an S3 event notification names; [] for the TestEvent S3 sends when a notification is set."""
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise MalformedNoticeError(f"the message body is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise MalformedNoticeError("the message body is not a JSON object")
    if document.get("Event") == "s3:TestEvent":
        return []
    records = document.get("Records")
    if not isinstance(records, list):
        raise MalformedNoticeError("the message is neither an S3 event notification nor its TestEvent")
    notices = []
    for record in records:
        try:
            if not str(record.get("eventName", "")).startswith("ObjectCreated"):
                continue
            s3 = record["s3"]
            # Keys arrive URL-encoded, spaces as '+'.
            notices.append(
                ObjectNotice(
                    bucket=str(s3["bucket"]["name"]),
                    key=unquote_plus(str(s3["object"]["key"])),
                    etag=s3["object"].get("eTag"),
                )
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise MalformedNoticeError(f"an S3 event record lacks {exc}") from exc
    return notices


class DropNoticeWorker:
    """Long-polls the notification queue and ingests the objects its messages name."""

    def __init__(self, settings: Settings, sqs: SQSClient, ingestor: DropIngestor, registry: TrackRegistry) -> None:
        self.settings = settings
        self.sqs = sqs
        self.ingestor = ingestor
        self.stopping = ingestor.stopping
        self.registry = registry
        self.queue_url: str | None = None

    async def run(self) -> None:
        """Poll until the service stops; the messages of the last poll are settled before this returns."""
        delay = 0.5
        while not self.stopping.is_set():
            try:
                await self.poll_once()
                delay = 0.5
            except BACKEND_ERRORS as exc:
                log.warning("SQS polling failed (%s); retrying in %.1f s", exc, delay)
                if await wait_or_stop(self.stopping, delay):
                    break
                delay = min(delay * 2, 30.0)
        log.info("SQS drop worker stopped polling")

    async def _queue_url(self) -> str:
        if self.queue_url is None:
            answer = await self.sqs.get_queue_url(QueueName=self.settings.stack.sqs_queue)
            self.queue_url = answer["QueueUrl"]
        return self.queue_url

    async def poll_once(self) -> int:
        """One long poll; returns how many messages were received."""
        queue_url = await self._queue_url()
        receiving = asyncio.ensure_future(
            self.sqs.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=self.settings.sqs_wait_s,
                VisibilityTimeout=self.settings.sqs_visibility_s,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
        )
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({receiving, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not receiving.done():
            # Stopping during a long poll: abandon it rather than wait it out. Should SQS have handed
            # out a message in that very instant, it reappears after the visibility timeout.
            receiving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiving
            return 0
        answer = receiving.result()
        messages = answer.get("Messages", [])
        await asyncio.gather(*(self.handle(queue_url, message) for message in messages))
        return len(messages)

    async def handle(self, queue_url: str, message: MessageTypeDef) -> None:
        receipt = message["ReceiptHandle"]
        body = message.get("Body", "")
        try:
            notices = parse_notice(body)
        except MalformedNoticeError as exc:
            await self.registry.record_dead_letter(
                dead_letter(stage="ingest", error_kind="malformed_notice", error=str(exc), raw=body.encode()),
                key=self._letter_key(message),
            )
            await self.sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=receipt)
            metrics.SQS_NOTICES.labels("malformed").inc()
            return
        try:
            for notice in notices:
                if notice.bucket != self.settings.stack.bucket:
                    log.warning(
                        "notice for bucket %s ignored; this service ingests %s",
                        notice.bucket,
                        self.settings.stack.bucket,
                    )
                    continue
                await self.ingestor.ingest(notice.key, notice.etag)
        except DropIntakeStoppedError:
            await self._hand_back(queue_url, message)
            return
        except BACKEND_ERRORS as exc:
            await self._retry_later(queue_url, message, body, exc)
            return
        await self.sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=receipt)
        metrics.SQS_NOTICES.labels("handled" if notices else "test_event").inc()

    def _letter_key(self, message: MessageTypeDef) -> str:
        """A dead letter about a notice names no track and no Kafka message: its key is the SQS message."""
        return f"sqs:{self.settings.stack.sqs_queue}:{message.get('MessageId', 'unknown')}"

    async def _hand_back(self, queue_url: str, message: MessageTypeDef) -> None:
        """A notice not started before the stop: visible again at once, for another replica or the next start."""
        try:
            await self.sqs.change_message_visibility(
                QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )
        except BACKEND_ERRORS:
            log.debug("could not hand a notice back; it returns after the visibility timeout")
        metrics.SQS_NOTICES.labels("handed_back").inc()

    async def _retry_later(self, queue_url: str, message: MessageTypeDef, body: str, exc: BaseException) -> None:
        receives = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        if receives >= self.settings.sqs_max_receives:
            log.error(
                "notice failed %d times (%s); dead-lettering it, the drop scan will retry the object", receives, exc
            )
            await self.registry.record_dead_letter(
                dead_letter(
                    stage="ingest",
                    error_kind="retries_exhausted",
                    error=repr(exc),
                    raw=body.encode(),
                    attempts=receives,
                ),
                key=self._letter_key(message),
            )
            await self.sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            metrics.SQS_NOTICES.labels("dead_lettered").inc()
            return
        delay = min(5 * 2**receives, self.settings.sqs_visibility_s)
        log.warning("notice failed (%s); it returns in %d s (attempt %d)", exc, delay, receives)
        try:
            await self.sqs.change_message_visibility(
                QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=delay
            )
        except BACKEND_ERRORS:
            log.debug("could not shorten the visibility timeout; the notice returns after the full timeout")
        metrics.SQS_NOTICES.labels("retry").inc()


class DropScan:
    """Lists the drop prefix and ingests every object that is neither ingested nor rejected in its current version."""

    def __init__(self, settings: Settings, store: AudioStore, ingestor: DropIngestor, registry: TrackRegistry) -> None:
        self.settings = settings
        self.store = store
        self.ingestor = ingestor
        self.stopping = ingestor.stopping
        self.registry = registry

    async def run(self) -> None:
        while not self.stopping.is_set():
            try:
                found = await self.scan_once()
                if found:
                    log.info("drop scan ingested %d object(s) that no notice brought", found)
            except BACKEND_ERRORS as exc:
                log.warning("drop scan failed (%s); next try in %.0f s", exc, self.settings.drop_scan_interval_s)
            if await wait_or_stop(self.stopping, self.settings.drop_scan_interval_s):
                break
        log.info("drop scan stopped")

    async def scan_once(self) -> int:
        """One pass over the prefix; returns how many objects it handed to the ingestor."""
        handed = 0
        paginator = self.store.s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.store.bucket, Prefix=self.settings.stack.drop_prefix):
            if self.stopping.is_set():
                break
            listed = [
                DropSource(item["Key"], (item.get("ETag") or "").strip('"') or None)
                for item in page.get("Contents", [])
                if not item["Key"].endswith("/")
            ]
            # A key no row can hold would fail the lookup of the whole page: report it alone and go on.
            objects = [o for o in listed if storable_key(o.key)]
            for bad in (o for o in listed if not storable_key(o.key)):
                await self.ingestor.report_unstorable_key(bad.key)
            settled = await self.registry.settled_drops(objects)
            waiting = [o for o in objects if o.key not in settled]
            outcomes = await asyncio.gather(
                *(self.ingestor.ingest(o.key, o.etag) for o in waiting), return_exceptions=True
            )
            for source, outcome in zip(waiting, outcomes, strict=True):
                if isinstance(outcome, DropIntakeStoppedError):
                    continue  # the next scan (here or on another replica) takes it
                if isinstance(outcome, BaseException):
                    if not isinstance(outcome, Exception):
                        raise outcome  # cancellation and the like end the scan
                    # One object's failure never costs the others of the page their turn.
                    log.warning("drop scan could not ingest %s (%r); the next scan retries it", source.key, outcome)
            handed += len(waiting)
        return handed
