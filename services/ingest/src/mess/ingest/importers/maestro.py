"""MAESTRO v2/v3: piano performances catalogued in ``maestro-v*.csv``.

The download is the CSV (columns canonical_composer, canonical_title, split,
year, midi_filename, audio_filename, duration) beside one folder per year
holding the audio, e.g. ``2004/MIDI-Unprocessed_..._wav.wav``;
``audio_filename`` is the path relative to the CSV's folder. The MIDI-only
download has the same CSV but no audio: every row is then reported as
missing rather than failing the run.
"""

import csv
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from mess.contracts import TrackMetadata
from mess.ingest.importers.composers import find_composer, fold, surname
from mess.ingest.importers.dataset import (
    DatasetListing,
    DatasetProblem,
    DatasetTrack,
    ImportSetupError,
    existing_folder,
)

DATASET = "maestro"
SPLITS = ("train", "validation", "test")
REQUIRED_COLUMNS = ("canonical_composer", "canonical_title", "split", "year", "audio_filename", "duration")

_CSV_NAME = re.compile(r"^maestro-v(\d+)\.(\d+)\.(\d+)\.csv$")
_KEY = re.compile(r"\bin ([A-G])(?:[- ]?(flat|sharp|♭|♯|b))? (major|minor)\b", re.IGNORECASE)
# Longest first, so "prelude and fugue" wins over "prelude".
_FORMS = (
    ("prelude and fugue", "prelude and fugue"),
    ("sonatina", "sonatina"),
    ("sonata", "sonata"),
    ("etude", "etude"),
    ("study", "etude"),
    ("etudes", "etude"),
    ("prelude", "prelude"),
    ("fugue", "fugue"),
    ("nocturne", "nocturne"),
    ("ballade", "ballade"),
    ("scherzo", "scherzo"),
    ("waltz", "waltz"),
    ("valse", "waltz"),
    ("mazurka", "mazurka"),
    ("polonaise", "polonaise"),
    ("impromptu", "impromptu"),
    ("fantasie", "fantasy"),
    ("fantasia", "fantasy"),
    ("fantasy", "fantasy"),
    ("rhapsody", "rhapsody"),
    ("variations", "variations"),
    ("rondo", "rondo"),
    ("partita", "partita"),
    ("suite", "suite"),
    ("toccata", "toccata"),
    ("barcarolle", "barcarolle"),
    ("berceuse", "berceuse"),
    ("intermezzo", "intermezzo"),
    ("capriccio", "capriccio"),
    ("romance", "romance"),
    ("transcendental", "etude"),
)


def find_maestro_csv(root: Path) -> Path:
    """The newest ``maestro-vX.Y.Z.csv`` in ``root``."""
    found = []
    for path in existing_folder(root).iterdir():
        match = _CSV_NAME.fullmatch(path.name)
        if match:
            found.append((tuple(int(part) for part in match.groups()), path))
    if not found:
        raise ImportSetupError(f"no maestro-v*.csv in {root} (is this the MAESTRO folder?)")
    return max(found)[1]


def key_from_title(title: str) -> str | None:
    """``Sonata in C-sharp Minor, Op. 27`` -> ``C-sharp minor``."""
    match = _KEY.search(title)
    if match is None:
        return None
    accidental = {"flat": "-flat", "b": "-flat", "♭": "-flat", "sharp": "-sharp", "♯": "-sharp"}
    return f"{match[1].upper()}{accidental.get((match[2] or '').lower(), '')} {match[3].lower()}"


def form_from_title(title: str) -> str | None:
    """The musical form the title names first (``Prelude and Fugue in ...`` -> ``prelude and fugue``)."""
    folded = fold(title)
    best: tuple[int, int, str] | None = None
    for word, form in _FORMS:
        match = re.search(rf"\b{re.escape(word)}\b", folded)
        if match and (best is None or (match.start(), -len(word)) < best[:2]):
            best = (match.start(), -len(word), form)
    return best[2] if best else None


def maestro_metadata(row: dict[str, str]) -> TrackMetadata:
    canonical = (row.get("canonical_composer") or "").strip()
    title = (row.get("canonical_title") or "").strip() or None
    split = (row.get("split") or "").strip()
    # Transcriptions name two composers ("Franz Schubert / Franz Liszt"); the
    # first wrote the music, so it decides composer and era.
    first = canonical.split("/")[0].strip()
    known = find_composer(first) if first else None
    tags = ["maestro", "piano"]
    if split:
        tags.append(f"split:{split}")
    try:
        year: int | None = int((row.get("year") or "").strip())
    except ValueError:
        year = None
    return TrackMetadata(
        title=title,
        composer=known.name if known else (surname(first) or None),
        composer_full=(known.full if known and "/" not in canonical else canonical) or None,
        era=known.era if known else None,
        form=form_from_title(title) if title else None,
        key=key_from_title(title) if title else None,
        instrument="piano",
        year=year,
        tags=tags,
    )


def _duration(row: dict[str, str]) -> float | None:
    try:
        value = float((row.get("duration") or "").strip())
    except ValueError:
        return None
    return value if value > 0 else None


def list_maestro(root: Path, splits: Iterable[str] = (), csv_path: Path | None = None) -> DatasetListing:
    """Every CSV row of the chosen splits (all when none) whose audio is present; the rest as problems."""
    csv_path = csv_path or find_maestro_csv(root)
    wanted = set(splits)
    unknown = wanted - set(SPLITS)
    if unknown:
        raise ImportSetupError(f"unknown MAESTRO split(s) {sorted(unknown)}; the splits are {', '.join(SPLITS)}")
    listing = DatasetListing(dataset=DATASET)
    seen: set[str] = set()
    try:
        with csv_path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing_columns = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing_columns:
                raise ImportSetupError(f"{csv_path} lacks the MAESTRO column(s) {', '.join(missing_columns)}")
            for line, row in enumerate(reader, start=2):
                if wanted and (row.get("split") or "").strip() not in wanted:
                    continue
                audio = (row.get("audio_filename") or "").strip()
                relative = PurePosixPath(audio)
                if not audio or relative.is_absolute() or ".." in relative.parts:
                    listing.problems.append(DatasetProblem(f"{csv_path.name}:{line}", f"bad audio_filename {audio!r}"))
                    continue
                if audio in seen:
                    continue
                seen.add(audio)
                path = root / relative
                if not path.is_file():
                    listing.problems.append(DatasetProblem(audio, "audio file missing"))
                    continue
                listing.tracks.append(
                    DatasetTrack(
                        dataset=DATASET,
                        relative_path=relative.as_posix(),
                        metadata=maestro_metadata(row),
                        source=path,
                        expected_duration_s=_duration(row),
                    )
                )
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ImportSetupError(f"cannot read {csv_path}: {error}") from error
    return listing
