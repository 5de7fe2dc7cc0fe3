"""`mess-import demo`: music21 works rendered with fluidsynth into the drop prefix as FLAC."""

import io
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf
from music21 import corpus

from mess.contracts import track_id_from_parts
from mess.ingest.importers.cli import main
from mess.ingest.importers.dataset import ImportSetupError
from mess.ingest.importers.demo import DEFAULT_WORKS, MAX_RENDITIONS, describe, list_demo
from mess.runtime.endpoints import StackSettings

from .stored import metadata_of, read_report, stored_objects


def test_two_works_two_renditions_are_rendered_tagged_and_not_rendered_twice(
    stack: StackSettings, importer_env: dict[str, str], s3: Any, tmp_path: Path
) -> None:
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    command = ["demo", "--works", "2", "--renditions", "2", "--max-seconds", "5", "--quiet"]

    assert main([*command, "--report", str(first)]) == 0

    assert (read_report(first)["uploaded"], read_report(first)["failed"]) == (4, 0)
    expected = list_demo(2, 2)
    objects = stored_objects(s3, stack.bucket, f"{stack.drop_prefix}demo/")
    assert set(objects) == {f"{stack.drop_prefix}demo/{demo.track.relative_path}" for demo in expected}
    works: dict[str, set[str]] = {}
    for demo in expected:
        key = f"{stack.drop_prefix}demo/{demo.rendition.name}.flac"
        head = objects[key]
        assert head["ContentType"] == "audio/flac"
        assert head["Metadata"]["mess-dataset"] == "demo"
        assert head["Metadata"]["mess-track-id"] == track_id_from_parts("demo", f"{demo.rendition.name}.flac")
        metadata = metadata_of(head)
        assert metadata.work == demo.rendition.work
        assert metadata.instrument == demo.rendition.instrument
        assert metadata.title is not None and describe(demo.rendition) in metadata.title
        assert metadata.composer and metadata.composer_full and metadata.era
        assert "demo" in metadata.tags
        works.setdefault(metadata.work, set()).add(metadata.instrument)
        body = s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read()
        audio, rate = sf.read(io.BytesIO(body))
        assert rate == 22050
        assert 1.0 < len(audio) / rate <= 5.0 + 1e-6, "rendered, then cut to --max-seconds"
        assert abs(audio).max() > 0.01, "fluidsynth played notes, not silence"
    assert len(works) == 2 and all(len(players) == 2 for players in works.values())

    assert main([*command, "--report", str(second)]) == 0

    assert (read_report(second)["uploaded"], read_report(second)["skipped"]) == (0, 4)
    after = stored_objects(s3, stack.bucket, f"{stack.drop_prefix}demo/")
    assert {k: v["LastModified"] for k, v in after.items()} == {k: v["LastModified"] for k, v in objects.items()}


def test_demo_dry_run_lists_renditions_without_rendering(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--works", "2", "--renditions", "3", "--dry-run"]) == 0
    printed = capsys.readouterr()
    assert len(printed.out.splitlines()) == 6
    assert "demo: 6 tracks, 0 problems" in printed.err


def test_default_demo_is_over_a_hundred_renditions_of_real_corpus_works_in_sibling_groups() -> None:
    plan = list_demo()
    assert len(plan) == DEFAULT_WORKS * 3 >= 100
    by_work: dict[str, list[str]] = {}
    for demo in plan:
        by_work.setdefault(demo.rendition.work, []).append(demo.rendition.instrument)
    assert len(by_work) == DEFAULT_WORKS
    for work, players in by_work.items():
        assert corpus.getWork(work), f"{work} is not in music21's corpus"
        assert players[0] == "piano" and len(set(players)) == 3
    assert len({demo.track.track_id for demo in plan}) == len(plan)
    assert all(demo.track.metadata.composer_full and demo.track.metadata.era for demo in plan)


def test_more_renditions_than_the_corpus_knows_is_a_setup_error() -> None:
    with pytest.raises(ImportSetupError, match="renditions"):
        list_demo(2, MAX_RENDITIONS + 1)
