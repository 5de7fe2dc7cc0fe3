"""Saarland Music Data (SMD): piano recordings named ``Composer_Work-Mvt_NNN_YYYYMMDD-SMD``.

The SMD MIDI-Audio piano collection is one flat folder in which every
recording's name carries its metadata, e.g.
``Bach_BWV849-01_001_20090916-SMD.wav`` is Bach, BWV 849, movement 01,
performance 001, recorded on 2009-09-16. The real names vary: catalogue
numbers with a sub-number (``Beethoven_Op031No2-01``, ``Haydn_HobXVINo52-02``),
works without movements (``Chopin_Op066``), named works
(``Ravel_JeuxDEau``, ``Liszt_AnnesDePelerinage-LectureDante``). The same
folder holds the MIDI files under the same names; only the audio is imported.
A file whose name does not follow the pattern is still imported, with its
file name as the title, because the recording is worth more than its name.
"""

import os
import re
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from mess.contracts import TrackMetadata
from mess.ingest.importers.composers import find_composer
from mess.ingest.importers.dataset import DatasetListing, DatasetTrack, existing_folder, is_audio_name

DATASET = "smd"

_NAME = re.compile(
    r"^(?P<composer>[A-Za-z]+)_(?P<piece>[A-Za-z0-9-]+?)_(?P<performance>\d{1,4})_(?P<date>\d{8})-SMD$",
)
# Catalogue numbers as SMD spells them: BWV849, Op031No2, HobXVINo52, KV265, WoO080, SZ080.
_CATALOGUE = re.compile(
    r"^(?P<catalogue>BWV|KV|K|WoO|SZ|Sz|Op|Hob|D|L|S)(?P<group>[IVX]+)?(?P<number>\d+)?(?:No(?P<sub>\d+))?(?P<rest>.*)$"
)
_CATALOGUE_NAMES = {"BWV": "BWV", "KV": "KV", "K": "K.", "WoO": "WoO", "SZ": "Sz.", "Sz": "Sz.", "Op": "Op."}
_CATALOGUE_NAMES |= {"Hob": "Hob.", "D": "D.", "L": "L.", "S": "S."}
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


@dataclass(frozen=True)
class SmdName:
    """What an SMD file name says."""

    composer: str
    work: str  # as written in the name, e.g. "Op031No2"
    movement: str | None  # "01", or a named part such as "LectureDante"
    performance: str  # "001"
    recorded: date | None


def parse_smd_name(stem: str) -> SmdName | None:
    """The parts of an SMD file name (without extension); None if it is not one."""
    match = _NAME.fullmatch(stem)
    if match is None:
        return None
    piece = match["piece"]
    work, _, movement = piece.rpartition("-") if "-" in piece else (piece, "", "")
    try:
        recorded: date | None = datetime.strptime(match["date"], "%Y%m%d").date()
    except ValueError:
        recorded = None
    return SmdName(
        composer=match["composer"],
        work=work,
        movement=movement or None,
        performance=match["performance"],
        recorded=recorded,
    )


def readable_work(work: str) -> str:
    """``Op031No2`` -> ``Op. 31 No. 2``, ``HobXVINo52`` -> ``Hob. XVI No. 52``, ``JeuxDEau`` -> ``Jeux D Eau``."""
    match = _CATALOGUE.fullmatch(work)
    if match and (match["number"] or match["sub"]):
        parts = [_CATALOGUE_NAMES[match["catalogue"]]]
        if match["group"]:
            parts.append(match["group"])
        if match["number"]:
            parts.append(str(int(match["number"])))
        if match["sub"]:
            parts.append(f"No. {int(match['sub'])}")
        if match["rest"]:
            parts.append(_split_camel(match["rest"]))
        return " ".join(parts)
    return _split_camel(work)


def _split_camel(text: str) -> str:
    return _CAMEL.sub(" ", text).replace("-", " ").strip()


def smd_metadata(stem: str) -> TrackMetadata:
    name = parse_smd_name(stem)
    if name is None:
        return TrackMetadata(title=stem, instrument="piano", tags=["smd", "piano"])
    known = find_composer(name.composer)
    work = readable_work(name.work)
    if name.movement is None:
        title = work
    elif name.movement.isdigit():
        title = f"{work}, movement {int(name.movement)}"
    else:
        title = f"{work}: {_split_camel(name.movement)}"
    tags = ["smd", "piano", f"performance:{name.performance}"]
    if name.recorded is not None:
        tags.append(f"recorded:{name.recorded.isoformat()}")
    return TrackMetadata(
        title=title,
        composer=known.name if known else name.composer,
        composer_full=known.full if known else None,
        era=known.era if known else None,
        work=work,
        movement=name.movement,
        instrument="piano",
        year=name.recorded.year if name.recorded else None,
        tags=tags,
    )


def list_smd(root: Path) -> DatasetListing:
    """Every audio file under ``root`` (the flat SMD folder; sub-folders are read too)."""
    listing = DatasetListing(dataset=DATASET)
    for folder, dirs, files in os.walk(existing_folder(root)):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not is_audio_name(name):
                listing.ignored += 1
                continue
            path = Path(folder) / name
            relative = path.relative_to(root).as_posix()
            listing.tracks.append(
                DatasetTrack(dataset=DATASET, relative_path=relative, metadata=smd_metadata(path.stem), source=path)
            )
    return listing
