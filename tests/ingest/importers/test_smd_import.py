"""`mess-import smd` against the real S3 endpoint: keys, metadata, idempotency, bad files."""

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mess.contracts import track_id_from_parts
from mess.ingest.importers.cli import main
from mess.runtime.endpoints import StackSettings

from .stored import metadata_of, read_report, stored_objects

GOOD = [
    "Bach_BWV849-01_001_20090916-SMD.wav",
    "Beethoven_Op031No2-01_002_20090916-SMD.wav",
    "Chopin_Op066_006_20100611-SMD.wav",
]


def build_smd(root: Path, write_tone: Callable[..., Path]) -> None:
    """The SMD folder as downloaded: flat, audio beside MIDI of the same names."""
    for index, name in enumerate(GOOD):
        write_tone(root / name, seconds=1.5, hz=220.0 * (index + 1))
        (root / name).with_suffix(".mid").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0")
    write_tone(root / "warm-up take.wav", seconds=1.0)
    (root / "Chopin_Op028-01_003_20100611-SMD.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 50)


def test_smd_import_uploads_each_recording_with_its_parsed_metadata(
    stack: StackSettings, importer_env: dict[str, str], s3: Any, tmp_path: Path, write_tone: Callable[..., Path]
) -> None:
    root = tmp_path / "SMD"
    build_smd(root, write_tone)
    report = tmp_path / "report.json"

    status = main(["smd", str(root), "--quiet", "--report", str(report)])

    assert status == 1, "a corrupt file is reported in the exit status"
    outcome = read_report(report)
    assert (outcome["uploaded"], outcome["skipped"], outcome["failed"], outcome["ignored"]) == (4, 0, 1, 3)
    assert outcome["failures"][0]["path"] == "Chopin_Op028-01_003_20100611-SMD.wav"
    assert "not decodable audio" in outcome["failures"][0]["reason"]

    objects = stored_objects(s3, stack.bucket, stack.drop_prefix)
    assert set(objects) == {f"{stack.drop_prefix}smd/{name}" for name in [*GOOD, "warm-up take.wav"]}
    bach = objects[f"{stack.drop_prefix}smd/{GOOD[0]}"]
    assert bach["Metadata"]["mess-dataset"] == "smd"
    assert bach["Metadata"]["mess-track-id"] == track_id_from_parts("smd", GOOD[0])
    assert bach["ContentType"] == "audio/wav"
    assert bach["ContentLength"] == (root / GOOD[0]).stat().st_size
    metadata = metadata_of(bach)
    assert (metadata.composer, metadata.work, metadata.movement, metadata.year) == ("Bach", "BWV 849", "01", 2009)
    assert metadata_of(objects[f"{stack.drop_prefix}smd/{GOOD[1]}"]).work == "Op. 31 No. 2"
    assert metadata_of(objects[f"{stack.drop_prefix}smd/warm-up take.wav"]).title == "warm-up take"


def test_second_smd_run_uploads_nothing(
    stack: StackSettings, importer_env: dict[str, str], s3: Any, tmp_path: Path, write_tone: Callable[..., Path]
) -> None:
    root = tmp_path / "SMD"
    build_smd(root, write_tone)
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    main(["smd", str(root), "--quiet", "--report", str(first)])
    before = stored_objects(s3, stack.bucket, stack.drop_prefix)

    main(["smd", str(root), "--quiet", "--report", str(second)])

    outcome = read_report(second)
    assert (outcome["uploaded"], outcome["skipped"], outcome["failed"]) == (0, 4, 1)
    after = stored_objects(s3, stack.bucket, stack.drop_prefix)
    assert {k: v["LastModified"] for k, v in after.items()} == {k: v["LastModified"] for k, v in before.items()}


def test_module_entry_point_imports_and_prints_the_counts(
    stack: StackSettings, stack_env: dict[str, str], tmp_path: Path, write_tone: Callable[..., Path]
) -> None:
    root = tmp_path / "SMD"
    write_tone(root / GOOD[0], seconds=1.0)
    env = {"PATH": "/usr/bin:/bin", **stack_env}
    command = [sys.executable, "-m", "mess.ingest.importers", "smd", str(root)]

    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert "smd: uploaded 1" in result.stdout
    assert "skipped 0" in result.stdout and "failed 0" in result.stdout
    assert "import smd" in result.stderr, "the progress bar is drawn on stderr"


def test_missing_bucket_stops_the_import_before_anything_is_read(
    stack: StackSettings, importer_env: dict[str, str], tmp_path: Path, capsys: Any
) -> None:
    (tmp_path / "SMD").mkdir()
    status = main(["smd", str(tmp_path / "SMD"), "--bucket", "mess-no-such-bucket-here"])
    assert status == 2
    assert "does not exist" in capsys.readouterr().err
