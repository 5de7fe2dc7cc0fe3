"""``mess-import <smd|maestro|folder|demo> ...``: the importers' command line.

Endpoints and the bucket come from the shared ``MESS_*`` settings
(``StackSettings``), like every service, so the command imports into
whatever stack the environment names. Exit status: 0 when every track is in
the bucket, 1 when some failed (the rest were imported; re-run to retry
them), 2 when the import could not start, 130 when interrupted (re-run to
resume).
"""

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from mess.ingest.importers import demo, folder, maestro, smd
from mess.ingest.importers.dataset import DatasetListing, ImportSetupError
from mess.ingest.importers.drop import DropBucket, user_metadata
from mess.ingest.importers.run import ImportInterrupted, ImportReport, import_listing
from mess.runtime.endpoints import StackSettings

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_CANNOT_START = 2
EXIT_INTERRUPTED = 130
FAILURES_SHOWN = 20


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bucket", help="bucket to import into (default: MESS_BUCKET)")
    common.add_argument("--drop-prefix", help="prefix the S3 worker watches (default: MESS_DROP_PREFIX)")
    common.add_argument("--jobs", type=_positive_int, default=4, help="files uploaded at once (default 4)")
    common.add_argument("--limit", type=_positive_int, help="import only the first N tracks (to try a dataset out)")
    common.add_argument("--dry-run", action="store_true", help="list keys and metadata; upload nothing")
    common.add_argument("--report", type=Path, help="write the full outcome, every failure included, as JSON here")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bar; only the summary and errors")

    parser = argparse.ArgumentParser(
        prog="mess-import",
        description="Upload a dataset, with its metadata, into the drop prefix the ingest service watches.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{smd,maestro,folder,demo}")

    smd_parser = commands.add_parser("smd", parents=[common], help="Saarland Music Data (SMD) piano recordings")
    smd_parser.add_argument("root", type=Path, help="the folder holding the *-SMD.wav (or .mp3) files")

    maestro_parser = commands.add_parser("maestro", parents=[common], help="MAESTRO v2/v3 piano performances")
    maestro_parser.add_argument("root", type=Path, help="the folder holding maestro-v*.csv and the year folders")
    maestro_parser.add_argument(
        "--split", action="append", choices=maestro.SPLITS, default=[], help="import only this split (repeatable)"
    )
    maestro_parser.add_argument("--csv", type=Path, help="the catalogue, if not the newest maestro-v*.csv in root")

    folder_parser = commands.add_parser("folder", parents=[common], help="any folder tree of wav/flac/ogg/mp3 files")
    folder_parser.add_argument("root", type=Path)
    folder_parser.add_argument("--dataset", default=folder.DATASET, help="dataset name (default: folder)")

    demo_parser = commands.add_parser("demo", parents=[common], help="render music21 corpus works with fluidsynth")
    demo_parser.add_argument("--works", type=_positive_int, default=demo.DEFAULT_WORKS)
    demo_parser.add_argument(
        "--renditions",
        type=_positive_int,
        choices=range(1, demo.MAX_RENDITIONS + 1),
        default=demo.DEFAULT_RENDITIONS,
        help=f"renditions per work, 1 to {demo.MAX_RENDITIONS} (default {demo.DEFAULT_RENDITIONS})",
    )
    demo_parser.add_argument("--max-seconds", type=_positive_float, default=demo.DEFAULT_MAX_SECONDS)
    demo_parser.add_argument("--sample-rate", type=_positive_int, default=demo.DEFAULT_SAMPLE_RATE)
    demo_parser.add_argument("--render-workers", type=_positive_int, default=demo.DEFAULT_RENDER_WORKERS)
    return parser


def _listing(args: argparse.Namespace) -> DatasetListing:
    if args.command == "smd":
        return smd.list_smd(args.root)
    if args.command == "maestro":
        return maestro.list_maestro(args.root, args.split, args.csv)
    return folder.list_folder(args.root, args.dataset)


def _print_dry_run(listing: DatasetListing, bucket: str, drop_prefix: str) -> None:
    for track in listing.tracks:
        key = f"{drop_prefix}{track.dataset}/{track.relative_path}"
        print(json.dumps({"key": f"s3://{bucket}/{key}", **user_metadata(track)}, ensure_ascii=False))
    for problem in listing.problems:
        print(f"problem {problem.relative_path}: {problem.reason}", file=sys.stderr)
    print(f"{listing.dataset}: {len(listing.tracks)} tracks, {len(listing.problems)} problems", file=sys.stderr)


def _finish(report: ImportReport, report_path: Path | None) -> None:
    print(report.summary())
    for problem in report.failures[:FAILURES_SHOWN]:
        print(f"  failed {problem.relative_path}: {problem.reason}", file=sys.stderr)
    if report.failed > FAILURES_SHOWN:
        hint = f" (all in {report_path})" if report_path else " (--report FILE lists them all)"
        print(f"  ... and {report.failed - FAILURES_SHOWN} more{hint}", file=sys.stderr)
    if report_path is not None:
        report_path.write_text(json.dumps(report.as_json(), indent=2, ensure_ascii=False) + "\n")


def run(args: argparse.Namespace, settings: StackSettings) -> int:
    bucket = args.bucket or settings.bucket
    drop_prefix = settings.drop_prefix if args.drop_prefix is None else args.drop_prefix
    demo_tracks = demo.list_demo(args.works, args.renditions) if args.command == "demo" else []
    listing = demo.demo_listing(demo_tracks) if args.command == "demo" else _listing(args)
    if args.limit is not None:
        listing.tracks = listing.tracks[: args.limit]
        demo_tracks = demo_tracks[: args.limit]
    if args.dry_run:
        _print_dry_run(listing, bucket, drop_prefix)
        return EXIT_OK
    drop = DropBucket.connect(settings, bucket=bucket, drop_prefix=drop_prefix, connections=max(10, args.jobs * 4))
    try:
        if args.command == "demo":
            report = demo.import_demo(
                demo_tracks,
                drop,
                max_seconds=args.max_seconds,
                sample_rate=args.sample_rate,
                render_workers=args.render_workers,
                quiet=args.quiet,
            )
        else:
            report = import_listing(listing, drop, jobs=args.jobs, quiet=args.quiet)
    except ImportInterrupted as stopped:
        _finish(stopped.report, args.report)
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    _finish(report, args.report)
    return EXIT_SOME_FAILED if report.failed else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = StackSettings()
    except ValidationError as error:
        print(f"mess-import: bad MESS_* settings: {error}", file=sys.stderr)
        return EXIT_CANNOT_START
    try:
        return run(args, settings)
    except ImportSetupError as error:
        print(f"mess-import: {error}", file=sys.stderr)
        return EXIT_CANNOT_START
