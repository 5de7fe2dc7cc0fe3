"""`mess-import maestro` against the real S3 endpoint, on a MAESTRO v3 folder in its real layout."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mess.contracts import track_id_from_parts
from mess.ingest.importers.cli import main
from mess.runtime.endpoints import StackSettings

from .maestro_layout import row, write_catalogue
from .stored import metadata_of, read_report, stored_objects

TRAIN = "2004/MIDI-Unprocessed_SMF_02_R1_2004_01-05_ORIG_MID--AUDIO_02_R1_2004_05_Track05_wav.wav"
TRAIN_TRUNCATED = "2004/MIDI-Unprocessed_SMF_12_01_2004_01-05_ORIG_MID--AUDIO_12_R1_2004_02_Track02_wav.wav"
TEST = "2006/MIDI-Unprocessed_07_R1_2006_01-04_ORIG_MID--AUDIO_07_R1_2006_01_Track01_wav.wav"
MISSING = "2008/MIDI-Unprocessed_01_R1_2008_01-04_ORIG_MID--AUDIO_01_R1_2008_wav--1.wav"


def build_maestro(root: Path, write_tone: Callable[..., Path]) -> None:
    write_tone(root / TRAIN, seconds=2.0, channels=2)
    write_tone(root / TRAIN_TRUNCATED, seconds=1.0, channels=2)
    write_tone(root / TEST, seconds=2.5, channels=2)
    (root / "LICENSE").write_text("CC BY-NC-SA 4.0\n")
    write_catalogue(
        root / "maestro-v3.0.0.csv",
        [
            row(TRAIN, "train", composer="Johann Sebastian Bach", title="Prelude and Fugue in D Minor, WTC I, BWV 851"),
            row(TRAIN_TRUNCATED, "train", duration="412.8"),
            row(TEST, "test", composer="Claude Debussy", title="Estampes", year="2006", duration="2.5"),
            row(MISSING, "train", year="2008"),
        ],
    )


def test_maestro_train_split_is_imported_with_catalogue_metadata_and_problems_reported(
    stack: StackSettings, importer_env: dict[str, str], s3: Any, tmp_path: Path, write_tone: Callable[..., Path]
) -> None:
    root = tmp_path / "maestro-v3.0.0"
    build_maestro(root, write_tone)
    report = tmp_path / "report.json"

    status = main(["maestro", str(root), "--split", "train", "--quiet", "--report", str(report)])

    assert status == 1
    outcome = read_report(report)
    assert (outcome["uploaded"], outcome["skipped"], outcome["failed"]) == (1, 0, 2)
    reasons = {failure["path"]: failure["reason"] for failure in outcome["failures"]}
    assert reasons[MISSING] == "audio file missing"
    assert "catalogue says 412.8 s" in reasons[TRAIN_TRUNCATED]

    objects = stored_objects(s3, stack.bucket, stack.drop_prefix)
    key = f"{stack.drop_prefix}maestro/{TRAIN}"
    assert set(objects) == {key}
    head = objects[key]
    assert head["Metadata"]["mess-dataset"] == "maestro"
    assert head["Metadata"]["mess-track-id"] == track_id_from_parts("maestro", TRAIN)
    metadata = metadata_of(head)
    assert metadata.title == "Prelude and Fugue in D Minor, WTC I, BWV 851"
    assert (metadata.composer, metadata.composer_full, metadata.era) == ("Bach", "Johann Sebastian Bach", "Baroque")
    assert (metadata.year, metadata.key, metadata.form) == (2004, "D minor", "prelude and fugue")
    assert "split:train" in metadata.tags


def test_maestro_without_a_split_filter_takes_every_split_then_skips_them_all(
    stack: StackSettings, importer_env: dict[str, str], s3: Any, tmp_path: Path, write_tone: Callable[..., Path]
) -> None:
    root = tmp_path / "maestro-v3.0.0"
    build_maestro(root, write_tone)
    first, second = tmp_path / "first.json", tmp_path / "second.json"

    main(["maestro", str(root), "--quiet", "--report", str(first)])
    main(["maestro", str(root), "--quiet", "--report", str(second)])

    assert read_report(first)["uploaded"] == 2
    assert (read_report(second)["uploaded"], read_report(second)["skipped"]) == (0, 2)
    objects = stored_objects(s3, stack.bucket, f"{stack.drop_prefix}maestro/")
    debussy = metadata_of(objects[f"{stack.drop_prefix}maestro/{TEST}"])
    assert (debussy.composer, debussy.era, debussy.year) == ("Debussy", "Modern", 2006)
    assert "split:test" in debussy.tags
