"""One import run: every listed file checked, then uploaded or skipped, with a progress bar.

Files are handled by a small thread pool (uploads wait on the network, not
the CPU) with a bounded window of work in flight, so a dataset of a million
files is never queued whole. Each file ends as exactly one outcome: uploaded,
skipped (already in the bucket with the same size and metadata) or failed
(with the reason). Nothing is fatal per file; the run's report counts them.
"""

import sys
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from boto3.exceptions import Boto3Error
from botocore.exceptions import BotoCoreError, ClientError
from tqdm import tqdm

from mess.ingest.importers.dataset import BadAudioError, DatasetListing, DatasetProblem, DatasetTrack, check_audio
from mess.ingest.importers.drop import DropBucket, user_metadata

# Errors of one object's upload or lookup; the others are bugs and propagate.
S3_ERRORS = (BotoCoreError, ClientError, Boto3Error)


class Outcome(StrEnum):
    UPLOADED = "uploaded"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True)
class TrackOutcome:
    track: DatasetTrack
    outcome: Outcome
    size_bytes: int = 0
    reason: str | None = None


OutcomeListener = Callable[[TrackOutcome], None]


@dataclass
class ImportReport:
    dataset: str
    uploaded: int = 0
    skipped: int = 0
    uploaded_bytes: int = 0
    ignored: int = 0
    failures: list[DatasetProblem] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)

    def add(self, result: TrackOutcome) -> None:
        if result.outcome is Outcome.UPLOADED:
            self.uploaded += 1
            self.uploaded_bytes += result.size_bytes
        elif result.outcome is Outcome.SKIPPED:
            self.skipped += 1
        else:
            self.failures.append(DatasetProblem(result.track.relative_path, result.reason or "failed"))

    def summary(self) -> str:
        line = (
            f"{self.dataset}: uploaded {self.uploaded} ({self.uploaded_bytes / 1e6:.1f} MB), "
            f"skipped {self.skipped} already in the bucket, failed {self.failed}"
        )
        if self.ignored:
            line += f", ignored {self.ignored} non-audio files"
        return line

    def as_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "uploaded": self.uploaded,
            "uploaded_bytes": self.uploaded_bytes,
            "skipped": self.skipped,
            "failed": self.failed,
            "ignored": self.ignored,
            "failures": [{"path": p.relative_path, "reason": p.reason} for p in self.failures],
        }


class ImportInterrupted(Exception):  # noqa: N818 - it is not an error, the user asked for it
    """Ctrl-C (or a listener) stopped the run; ``report`` counts what finished before."""

    def __init__(self, report: ImportReport) -> None:
        super().__init__(f"interrupted: {report.summary()}")
        self.report = report


class ImportProgress:
    """Counts outcomes into the report and shows them on a tqdm bar (on stderr)."""

    def __init__(
        self, report: ImportReport, total: int, *, quiet: bool, listener: OutcomeListener | None = None
    ) -> None:
        self.report = report
        self.quiet = quiet
        self.listener = listener
        self.bar = tqdm(total=total, unit="track", desc=f"import {report.dataset}", disable=quiet, file=sys.stderr)

    def record(self, result: TrackOutcome) -> None:
        self.report.add(result)
        self.bar.update(1)
        self.bar.set_postfix(
            uploaded=self.report.uploaded, skipped=self.report.skipped, failed=self.report.failed, refresh=False
        )
        if result.outcome is Outcome.FAILED and not self.quiet:
            tqdm.write(f"failed {result.track.relative_path}: {result.reason}", file=sys.stderr)
        if self.listener is not None:
            self.listener(result)

    def close(self) -> None:
        self.bar.close()


def import_file(track: DatasetTrack, drop: DropBucket, stored_sizes: dict[str, int]) -> TrackOutcome:
    """Skip it if the bucket holds it already, else check it decodes and upload it."""
    if track.source is None:
        return TrackOutcome(track, Outcome.FAILED, reason="no file to upload")
    try:
        size = track.source.stat().st_size
    except OSError as error:
        return TrackOutcome(track, Outcome.FAILED, reason=f"cannot read the file: {error.strerror or error}")
    metadata = user_metadata(track)
    key = drop.key(track)
    try:
        if stored_sizes.get(key) == size and drop.holds(key, metadata, size):
            return TrackOutcome(track, Outcome.SKIPPED, size)
        check_audio(track.source, track.expected_duration_s)
        drop.upload(track.source, track, metadata)
    except BadAudioError as error:
        return TrackOutcome(track, Outcome.FAILED, reason=str(error))
    except OSError as error:
        return TrackOutcome(track, Outcome.FAILED, reason=f"cannot read the file: {error}")
    except S3_ERRORS as error:
        return TrackOutcome(track, Outcome.FAILED, reason=f"S3: {error}")
    return TrackOutcome(track, Outcome.UPLOADED, size)


def import_listing(
    listing: DatasetListing,
    drop: DropBucket,
    *,
    jobs: int = 4,
    quiet: bool = False,
    listener: OutcomeListener | None = None,
) -> ImportReport:
    """Import every listed track; listing problems count as failures.

    Raises ``ImportInterrupted`` on Ctrl-C after the uploads already under
    way have finished, so no object is left half-written and the next run
    resumes where this one stopped.
    """
    report = ImportReport(dataset=listing.dataset, ignored=listing.ignored, failures=list(listing.problems))
    stored = drop.stored_sizes(listing.dataset)
    progress = ImportProgress(report, len(listing.tracks), quiet=quiet, listener=listener)
    window = max(1, jobs) * 2
    pending: set[Future[TrackOutcome]] = set()
    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="mess-import") as pool:
            try:
                for track in listing.tracks:
                    if len(pending) >= window:
                        _record_finished(pending, progress)
                    pending.add(pool.submit(import_file, track, drop, stored))
                while pending:
                    _record_finished(pending, progress)
            except KeyboardInterrupt:
                _drain(pending, progress)
                raise ImportInterrupted(report) from None
    finally:
        progress.close()
    return report


def _record_finished(pending: set[Future[TrackOutcome]], progress: ImportProgress) -> None:
    """Record what has finished, taking it out of ``pending`` one by one so an
    interrupt raised while recording leaves ``pending`` exactly what is unrecorded."""
    done, _ = wait(pending, return_when=FIRST_COMPLETED)
    for future in done:
        pending.discard(future)
        progress.record(future.result())


def _drain(pending: Iterable[Future[TrackOutcome]], progress: ImportProgress) -> None:
    """After an interrupt: drop what has not started, count what finishes."""
    progress.listener = None
    started = [future for future in pending if not future.cancel()]
    for future in started:
        progress.report.add(future.result())
