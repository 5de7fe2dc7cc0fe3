"""The demo corpus: music21 works rendered with fluidsynth, several renditions each.

``make run`` fills a fresh system with it, so the whole pipeline has real
music to embed and search without downloading anything. Each work is played
a few ways (plain piano, then other instruments, tempi and keys, the
variations of ``mess.corpus.demo_renditions``), and the renditions of one
work share ``work`` (the corpus id), which makes them a ground truth for
"sounds like".

Which works and which ways are ``mess.corpus.demo_renditions``'s choice, so
the demo, the embedder's tests and the end-to-end test share one corpus.

Rendering is CPU work, so it runs in a small process pool; uploads happen in
this process as renditions come out. Renditions already in the bucket with
the same metadata are not rendered again, so the import resumes like the
file importers do.
"""

import multiprocessing
import tempfile
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from mess.contracts import TrackMetadata
from mess.corpus import Rendition, demo_renditions, render_to_file, work_info
from mess.ingest.importers.dataset import DatasetListing, DatasetTrack, ImportSetupError
from mess.ingest.importers.drop import DropBucket, user_metadata
from mess.ingest.importers.run import (
    S3_ERRORS,
    ImportInterrupted,
    ImportProgress,
    ImportReport,
    Outcome,
    OutcomeListener,
    TrackOutcome,
)

DATASET = "demo"
DEFAULT_WORKS = 40
DEFAULT_RENDITIONS = 3
MAX_RENDITIONS = 5  # mess.corpus knows five ways of playing a work
DEFAULT_MAX_SECONDS = 30.0
DEFAULT_SAMPLE_RATE = 22050
DEFAULT_RENDER_WORKERS = 2


@dataclass(frozen=True)
class DemoTrack:
    track: DatasetTrack
    rendition: Rendition


def describe(rendition: Rendition) -> str:
    """``strings, tempo 110%, +2 semitones``: how this rendition differs from the score."""
    parts = [rendition.instrument]
    if rendition.tempo_scale != 1.0:
        parts.append(f"tempo {round(rendition.tempo_scale * 100)}%")
    if rendition.transpose:
        parts.append(f"{rendition.transpose:+d} semitone{'s' if abs(rendition.transpose) > 1 else ''}")
    return ", ".join(parts)


def rendition_metadata(rendition: Rendition) -> TrackMetadata:
    info = work_info(rendition.work)
    plain = rendition.tempo_scale == 1.0 and rendition.transpose == 0 and rendition.instrument == "piano"
    return TrackMetadata(
        title=f"{info.title.replace('/', ', ').replace('_', ' ')} ({describe(rendition)})",
        composer=info.composer,
        composer_full=info.composer_full,
        era=info.era,
        form=info.form,
        instrument=rendition.instrument,
        work=rendition.work,
        tags=["demo", "music21", rendition.instrument, "original" if plain else "variation"],
    )


def list_demo(works: int = DEFAULT_WORKS, renditions: int = DEFAULT_RENDITIONS) -> list[DemoTrack]:
    """The renditions to render, ``works`` x ``renditions``, always the same ones."""
    out = []
    if works < 1 or not 1 <= renditions <= MAX_RENDITIONS:
        raise ImportSetupError(f"the demo needs at least one work and 1 to {MAX_RENDITIONS} renditions per work")
    for rendition in demo_renditions(works, renditions):
        track = DatasetTrack(
            dataset=DATASET, relative_path=f"{rendition.name}.flac", metadata=rendition_metadata(rendition)
        )
        out.append(DemoTrack(track, rendition))
    return out


def demo_listing(tracks: list[DemoTrack]) -> DatasetListing:
    return DatasetListing(dataset=DATASET, tracks=[demo.track for demo in tracks])


@dataclass(frozen=True)
class RenderResult:
    """What a pool process reports for one rendition: the file's size, or why there is none."""

    path: str
    size_bytes: int | None
    error: str | None = None


def render_work(renditions: list[tuple[Rendition, str]], sample_rate: int, max_seconds: float) -> list[RenderResult]:
    """Runs in a pool process: render each rendition of one work to its path.

    One task per work, so the score is parsed once and two processes never
    parse (and write music21's cache of) the same file at once.
    """
    results = []
    for rendition, path in renditions:
        try:
            render_to_file(rendition, Path(path), sample_rate=sample_rate, max_seconds=max_seconds)
            results.append(RenderResult(path, Path(path).stat().st_size))
        except Exception as error:  # noqa: BLE001 - a score music21 or fluidsynth cannot play must not stop the rest
            results.append(RenderResult(path, None, f"render failed: {type(error).__name__}: {error}"))
    return results


def import_demo(
    tracks: list[DemoTrack],
    drop: DropBucket,
    *,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    render_workers: int = DEFAULT_RENDER_WORKERS,
    quiet: bool = False,
    listener: OutcomeListener | None = None,
) -> ImportReport:
    """Render the renditions not yet in the bucket and upload them as FLAC."""
    report = ImportReport(dataset=DATASET)
    progress = ImportProgress(report, len(tracks), quiet=quiet, listener=listener)
    try:
        # A rendition's size is unknown until it is rendered, which is the
        # costly part; matching metadata is what says it was done before.
        stored = drop.stored_sizes(DATASET)
        to_render: list[DemoTrack] = []
        for demo in tracks:
            key = drop.key(demo.track)
            try:
                if key in stored and drop.holds(key, user_metadata(demo.track)):
                    progress.record(TrackOutcome(demo.track, Outcome.SKIPPED))
                    continue
            except S3_ERRORS as error:
                progress.record(TrackOutcome(demo.track, Outcome.FAILED, reason=f"S3: {error}"))
                continue
            to_render.append(demo)
        if to_render:
            _render_and_upload(to_render, drop, progress, max_seconds, sample_rate, render_workers)
    except KeyboardInterrupt:
        raise ImportInterrupted(report) from None
    finally:
        progress.close()
    return report


def _render_and_upload(
    to_render: list[DemoTrack],
    drop: DropBucket,
    progress: ImportProgress,
    max_seconds: float,
    sample_rate: int,
    render_workers: int,
) -> None:
    # forkserver, not fork: this process already runs boto3's threads, and a
    # forked child would inherit their locks mid-use. The server imports
    # mess.corpus (music21) once, and each task gets a fresh child of it
    # (max_tasks_per_child=1): music21 keeps state between scores that makes
    # a later work's repeats fail to expand in a process that played others.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["mess.corpus"])
    by_work: dict[str, list[DemoTrack]] = {}
    for demo in to_render:
        by_work.setdefault(demo.rendition.work, []).append(demo)
    with (
        tempfile.TemporaryDirectory(prefix="mess-demo-") as scratch,
        ProcessPoolExecutor(max_workers=max(1, render_workers), mp_context=context, max_tasks_per_child=1) as pool,
    ):
        futures: dict[Future[list[RenderResult]], list[DemoTrack]] = {}
        for demos in by_work.values():
            jobs = [(demo.rendition, str(Path(scratch) / Path(demo.track.relative_path).name)) for demo in demos]
            futures[pool.submit(render_work, jobs, sample_rate, max_seconds)] = demos
        try:
            for future in as_completed(futures):
                for outcome in _upload_rendered(future, futures[future], drop):
                    progress.record(outcome)
        except KeyboardInterrupt:
            for future in futures:
                future.cancel()
            raise


def _upload_rendered(
    future: Future[list[RenderResult]], demos: list[DemoTrack], drop: DropBucket
) -> list[TrackOutcome]:
    try:
        results = future.result()
    except Exception as error:  # noqa: BLE001 - e.g. a pool process killed for memory; the other works go on
        reason = f"render failed: {type(error).__name__}: {error}"
        return [TrackOutcome(demo.track, Outcome.FAILED, reason=reason) for demo in demos]
    outcomes = []
    for demo, result in zip(demos, results, strict=True):
        path = Path(result.path)
        if result.size_bytes is None:
            outcomes.append(TrackOutcome(demo.track, Outcome.FAILED, reason=result.error))
            continue
        try:
            drop.upload(path, demo.track, user_metadata(demo.track))
            outcomes.append(TrackOutcome(demo.track, Outcome.UPLOADED, result.size_bytes))
        except S3_ERRORS as error:
            outcomes.append(TrackOutcome(demo.track, Outcome.FAILED, reason=f"S3: {error}"))
        finally:
            path.unlink(missing_ok=True)
    return outcomes
