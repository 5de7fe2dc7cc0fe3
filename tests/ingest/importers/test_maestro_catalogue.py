"""MAESTRO's catalogue: rows from the real CSV, the split filter and missing audio (no S3)."""

from collections.abc import Callable
from pathlib import Path

import pytest

from mess.ingest.importers.dataset import ImportSetupError
from mess.ingest.importers.maestro import (
    find_maestro_csv,
    form_from_title,
    key_from_title,
    list_maestro,
    maestro_metadata,
)

from .maestro_layout import row, write_catalogue


@pytest.mark.parametrize(
    ("title", "key"),
    [
        ("Etude Op. 10 No. 4 in C-sharp Minor", "C-sharp minor"),
        ("Sonata in D Major, K. 576", "D major"),
        ("Prelude and Fugue in B-flat Major, WTC I, BWV 866", "B-flat major"),
        ("Ballade No. 1 in G Minor, Op. 23", "G minor"),
        ("Kreisleriana, Op. 16", None),
    ],
)
def test_key_from_a_real_maestro_title(title: str, key: str | None) -> None:
    assert key_from_title(title) == key


@pytest.mark.parametrize(
    ("title", "form"),
    [
        ("Prelude and Fugue in B-flat Major, WTC I, BWV 866", "prelude and fugue"),
        ("Étude Op. 25 No. 11", "etude"),
        ("Sonata No. 23 in F Minor, Op. 57", "sonata"),
        ("Variations on a Theme of Corelli, Op. 42", "variations"),
        ("Transcendental Etude No. 4", "etude"),
        ("Kreisleriana, Op. 16", None),
    ],
)
def test_form_from_a_real_maestro_title(title: str, form: str | None) -> None:
    assert form_from_title(title) == form


def test_maestro_row_becomes_track_metadata() -> None:
    metadata = maestro_metadata(row("2004/x.wav", split="validation", year="2006"))
    assert metadata.title == "Etude Op. 10 No. 4 in C-sharp Minor"
    assert (metadata.composer, metadata.composer_full, metadata.era) == ("Chopin", "Frederic Chopin", "Romantic")
    assert metadata.year == 2006
    assert metadata.key == "C-sharp minor"
    assert metadata.form == "etude"
    assert metadata.instrument == "piano"
    assert metadata.tags == ["maestro", "piano", "split:validation"]


def test_a_transcription_keeps_both_names_and_the_first_composers_era() -> None:
    metadata = maestro_metadata(row("a.wav", composer="Franz Schubert / Franz Liszt", title="Ständchen"))
    assert metadata.composer == "Schubert"
    assert metadata.composer_full == "Franz Schubert / Franz Liszt"
    assert metadata.era == "Romantic"


def test_newest_catalogue_wins_when_v2_and_v3_lie_side_by_side(tmp_path: Path) -> None:
    write_catalogue(tmp_path / "maestro-v2.0.0.csv", [])
    write_catalogue(tmp_path / "maestro-v3.0.0.csv", [])
    assert find_maestro_csv(tmp_path).name == "maestro-v3.0.0.csv"


def test_no_catalogue_is_a_clear_setup_error(tmp_path: Path) -> None:
    with pytest.raises(ImportSetupError, match=r"no maestro-v\*\.csv"):
        find_maestro_csv(tmp_path)


def test_a_catalogue_without_the_maestro_columns_is_refused(tmp_path: Path) -> None:
    (tmp_path / "maestro-v3.0.0.csv").write_text("title,file\nx,y.wav\n")
    with pytest.raises(ImportSetupError, match="audio_filename"):
        list_maestro(tmp_path)


def test_split_filter_missing_audio_and_escaping_paths(tmp_path: Path, write_tone: Callable[..., Path]) -> None:
    write_tone(tmp_path / "2004" / "a.wav")
    write_tone(tmp_path / "2006" / "b.wav")
    write_catalogue(
        tmp_path / "maestro-v3.0.0.csv",
        [
            row("2004/a.wav", "train"),
            row("2006/b.wav", "test"),
            row("2008/gone.wav", "train"),
            row("../outside.wav", "train"),
        ],
    )
    train = list_maestro(tmp_path, ["train"])
    assert [t.relative_path for t in train.tracks] == ["2004/a.wav"]
    assert train.tracks[0].expected_duration_s == 2.0
    assert [(p.relative_path, p.reason) for p in train.problems] == [
        ("2008/gone.wav", "audio file missing"),
        ("maestro-v3.0.0.csv:5", "bad audio_filename '../outside.wav'"),
    ]
    everything = list_maestro(tmp_path)
    assert [t.relative_path for t in everything.tracks] == ["2004/a.wav", "2006/b.wav"]
    with pytest.raises(ImportSetupError, match="unknown MAESTRO split"):
        list_maestro(tmp_path, ["dev"])
