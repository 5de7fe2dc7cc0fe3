"""The demo corpus: music21 works rendered with fluidsynth, several renditions each.

``make run`` fills a fresh system with it, so the whole pipeline has real
music to embed and search without downloading anything. Each work is played
a few ways (plain piano, then other instruments, tempi and keys, the
variations of ``mess.corpus.demo_renditions``), and the renditions of one
work share ``work`` (the corpus id), which makes them a ground truth for
"sounds like".

Which works: ``mess.corpus.demo_works`` names nested corpus files by their
stem alone (``mozart/movement1`` for ``mozart/k155/movement1``), which the
corpus cannot find, and picks whole Beethoven quartets that take minutes to
render, so 14 of its first 40 fail and the run takes most of an hour. Until
that is fixed there, this module plays its own list of short works that
resolve and render with every variation (``DEMO_WORKS``), over three eras.

Rendering is CPU work, so it runs in a small process pool; uploads happen in
this process as renditions come out. Renditions already in the bucket with
the same metadata are not rendered again, so the import resumes like the
file importers do.
"""

import multiprocessing
import tempfile
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from itertools import zip_longest
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

# Corpus ids (paths under music21's corpus, without the extension) of works
# the renderer plays through with every variation. Two traps rule works out:
# the renderer synthesises a whole work before cutting it to --max-seconds,
# so length is rendering time; and music21's MIDI of many quartet movements
# (Mozart K. 155/1, K. 80/1, Haydn Op. 1 No. 1/1-4, Beethoven, Schubert's
# Lindenbaum, Monteverdi) leaves notes without a note-off, which a piano lets
# decay but strings and organ hold for ever, so fluidsynth renders hours of
# audio until its 120 s timeout. Every work below was checked to have no such
# note. (Joplin's Maple Leaf Rag, the one Modern work, fails music21's repeat
# expansion.) Interleaved in this order so any prefix mixes composers and eras.
_CHORALES = tuple(
    f"bach/bwv{number}"
    for number in (
        "1.6", "10.7", "101.7", "102.7", "103.6", "104.6", "108.6", "11.6", "110.7", "111.6", "113.8", "114.7",
        "115.6", "116.6", "117.4", "119.9", "12.7", "120.6", "121.6", "122.6", "123.6", "124.6",
    )
)  # fmt: skip
_MASS_MOVEMENTS = tuple(
    f"palestrina/{name}"
    for name in (
        "Kyrie_00", "Agnus_00", "Benedictus_00", "Sanctus_00_a", "Kyrie_02", "Agnus_01", "Benedictus_02",
        "Sanctus_01_a", "Kyrie_04", "Agnus_02", "Benedictus_04", "Sanctus_02_a", "Agnus_03", "Agnus_04",
    )
)  # fmt: skip
_CLASSICAL_AND_OTHERS = (
    "mozart/k155/movement3",
    "corelli/opus3no1/1grave",
    "haydn/opus1no1/movement5",
    "handel/rinaldo/Lascia_chio_pianga",
    "mozart/k545/movement1_exposition",
)
DEMO_WORKS: tuple[str, ...] = tuple(
    work for trio in zip_longest(_CHORALES, _MASS_MOVEMENTS, _CLASSICAL_AND_OTHERS) for work in trio if work is not None
)


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


def demo_plan(works: int = DEFAULT_WORKS, renditions: int = DEFAULT_RENDITIONS) -> list[Rendition]:
    """The first ``works`` of ``DEMO_WORKS``, each played ``renditions`` ways.

    The ways are ``mess.corpus``'s own variations, read off its first demo
    work, so they stay one list even while the works here differ from its.
    """
    if not 1 <= works <= len(DEMO_WORKS):
        raise ImportSetupError(f"the demo has 1 to {len(DEMO_WORKS)} works, not {works}")
    ways = demo_renditions(1, renditions)
    return [replace(way, work=work) for work in DEMO_WORKS[:works] for way in ways]


def list_demo(works: int = DEFAULT_WORKS, renditions: int = DEFAULT_RENDITIONS) -> list[DemoTrack]:
    """The renditions to render, ``works`` x ``renditions``, always the same ones."""
    out = []
    for rendition in demo_plan(works, renditions):
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
