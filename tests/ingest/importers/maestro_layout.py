"""A MAESTRO catalogue as the download has it: ``maestro-vX.Y.Z.csv``."""

import csv
from pathlib import Path

COLUMNS = ["canonical_composer", "canonical_title", "split", "year", "midi_filename", "audio_filename", "duration"]


def write_catalogue(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def row(audio: str, split: str = "train", **fields: str) -> dict[str, str]:
    return {
        "canonical_composer": fields.get("composer", "Frédéric Chopin"),
        "canonical_title": fields.get("title", "Etude Op. 10 No. 4 in C-sharp Minor"),
        "split": split,
        "year": fields.get("year", "2004"),
        "midi_filename": audio.replace(".wav", ".midi"),
        "audio_filename": audio,
        "duration": fields.get("duration", "2.0"),
    }
