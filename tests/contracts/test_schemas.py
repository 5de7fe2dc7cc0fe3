import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mess.contracts.schemas import breaking_changes, check_directory, current_schemas, render, schema_filename

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "libs" / "contracts" / "schemas"
ADDED = "mess.tracks.added.v1"
FAILED = "mess.tracks.failed.v1"


def test_checked_in_schemas_match_the_models() -> None:
    """Regenerate with `make schemas` after an (additive) model change."""
    for topic, schema in current_schemas().items():
        assert (SCHEMA_DIR / schema_filename(topic)).read_text() == render(schema), topic


def test_checked_in_schemas_are_compatible() -> None:
    assert check_directory(SCHEMA_DIR) == {topic: [] for topic in current_schemas()}


def _schema(topic: str) -> dict:
    return copy.deepcopy(current_schemas()[topic])


def test_adding_an_optional_field_is_allowed() -> None:
    old = _schema(ADDED)
    new = _schema(ADDED)
    new["properties"]["loudness_lufs"] = {"anyOf": [{"type": "number"}, {"type": "null"}], "default": None}
    assert breaking_changes(old, new) == []


def test_removed_field_is_breaking() -> None:
    old = _schema(ADDED)
    new = _schema(ADDED)
    del new["properties"]["dataset"]
    new["required"].remove("dataset")
    assert breaking_changes(old, new) == ["$.dataset: field removed or renamed"]


def test_renamed_field_is_breaking() -> None:
    old = _schema(ADDED)
    new = _schema(ADDED)
    new["properties"]["data_set"] = new["properties"].pop("dataset")
    new["required"] = ["data_set" if r == "dataset" else r for r in new["required"]]
    problems = breaking_changes(old, new)
    assert "$.dataset: field removed or renamed" in problems
    assert "$.data_set: new field is required (new fields must be optional)" in problems


def test_changed_type_is_breaking() -> None:
    old = _schema(ADDED)
    new = _schema(ADDED)
    new["properties"]["size_bytes"] = {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert breaking_changes(old, new) == ["$.size_bytes: type changed from integer to null|string"]


def test_nested_changes_are_found_through_refs() -> None:
    old = _schema(ADDED)
    new = _schema(ADDED)
    new["$defs"]["TrackMetadata"]["properties"]["year"] = {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert breaking_changes(old, new) == ["$.metadata.year: type changed from integer to null|string"]


def test_optional_made_required_is_breaking() -> None:
    old = _schema(FAILED)
    new = _schema(FAILED)
    new["required"].append("source_topic")
    assert breaking_changes(old, new) == ["$.source_topic: optional field made required"]


def test_removed_enum_value_is_breaking() -> None:
    old = _schema(FAILED)
    new = _schema(FAILED)
    new["properties"]["stage"]["enum"].remove("query")
    assert breaking_changes(old, new) == ["$.stage: enum values removed: ['query']"]


def test_the_ci_check_fails_on_a_deliberately_broken_copy(tmp_path: Path) -> None:
    """The same command CI runs exits non-zero when a checked-in field disappears from a model."""
    for topic, schema in current_schemas().items():
        (tmp_path / schema_filename(topic)).write_text(render(schema))
    ok = subprocess.run(
        [sys.executable, "-m", "mess.dev.cli", "schemas", "check", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr

    # Pretend the checked-in schema had a field that the current model lacks.
    path = tmp_path / schema_filename(ADDED)
    broken = json.loads(path.read_text())
    broken["properties"]["bpm"] = {"type": "number"}
    broken["required"].append("bpm")
    path.write_text(json.dumps(broken))
    failed = subprocess.run(
        [sys.executable, "-m", "mess.dev.cli", "schemas", "check", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 1
    assert "BREAKING mess.tracks.added.v1: $.bpm: field removed or renamed" in failed.stderr


@pytest.mark.parametrize("topic", sorted(current_schemas()))
def test_every_event_declares_the_envelope(topic: str) -> None:
    properties = current_schemas()[topic]["properties"]
    assert {"event_id", "occurred_at", "schema_version"} <= set(properties)
