"""The SMD file-name parser on names from the real dataset."""

from datetime import date

import pytest

from mess.ingest.importers.smd import parse_smd_name, readable_work, smd_metadata


@pytest.mark.parametrize(
    ("stem", "composer", "work", "movement", "performance", "recorded"),
    [
        ("Bach_BWV849-01_001_20090916-SMD", "Bach", "BWV849", "01", "001", date(2009, 9, 16)),
        ("Beethoven_Op031No2-01_002_20090916-SMD", "Beethoven", "Op031No2", "01", "002", date(2009, 9, 16)),
        ("Chopin_Op028-01_003_20100611-SMD", "Chopin", "Op028", "01", "003", date(2010, 6, 11)),
        ("Rachmaninoff_Op036-03_007_20110315-SMD", "Rachmaninoff", "Op036", "03", "007", date(2011, 3, 15)),
        ("Chopin_Op010-03_007_20100611-SMD", "Chopin", "Op010", "03", "007", date(2010, 6, 11)),
        ("Chopin_Op066_006_20100611-SMD", "Chopin", "Op066", None, "006", date(2010, 6, 11)),
        ("Haydn_HobXVINo52-02_008_20110315-SMD", "Haydn", "HobXVINo52", "02", "008", date(2011, 3, 15)),
        ("Ravel_JeuxDEau_008_20110315-SMD", "Ravel", "JeuxDEau", None, "008", date(2011, 3, 15)),
        (
            "Liszt_AnnesDePelerinage-LectureDante_002_20090916-SMD",
            "Liszt",
            "AnnesDePelerinage",
            "LectureDante",
            "002",
            date(2009, 9, 16),
        ),
    ],
)
def test_real_smd_names_parse_into_their_parts(
    stem: str, composer: str, work: str, movement: str | None, performance: str, recorded: date
) -> None:
    name = parse_smd_name(stem)
    assert name is not None
    assert (name.composer, name.work, name.movement, name.performance, name.recorded) == (
        composer,
        work,
        movement,
        performance,
        recorded,
    )


@pytest.mark.parametrize(
    ("work", "readable"),
    [
        ("BWV849", "BWV 849"),
        ("Op031No2", "Op. 31 No. 2"),
        ("Op066", "Op. 66"),
        ("HobXVINo52", "Hob. XVI No. 52"),
        ("KV265", "KV 265"),
        ("WoO080", "WoO 80"),
        ("SZ080", "Sz. 80"),
        ("JeuxDEau", "Jeux D Eau"),
        ("ValsesNoblesEtSentimentales", "Valses Nobles Et Sentimentales"),
    ],
)
def test_catalogue_numbers_read_like_a_concert_programme(work: str, readable: str) -> None:
    assert readable_work(work) == readable


def test_smd_metadata_names_composer_work_movement_and_date() -> None:
    metadata = smd_metadata("Bach_BWV849-01_001_20090916-SMD")
    assert metadata.composer == "Bach"
    assert metadata.composer_full == "Johann Sebastian Bach"
    assert metadata.era == "Baroque"
    assert metadata.work == "BWV 849"
    assert metadata.movement == "01"
    assert metadata.title == "BWV 849, movement 1"
    assert metadata.year == 2009
    assert metadata.instrument == "piano"
    assert metadata.tags == ["smd", "piano", "performance:001", "recorded:2009-09-16"]


def test_smd_spelling_of_scriabin_maps_to_the_shared_composer_table() -> None:
    metadata = smd_metadata("Skryabin_Op008No8_003_20090916-SMD")
    assert (metadata.composer, metadata.composer_full, metadata.era) == ("Scriabin", "Alexander Scriabin", "Romantic")
    assert metadata.work == "Op. 8 No. 8"
    assert metadata.movement is None


def test_unknown_composer_keeps_the_name_from_the_file() -> None:
    metadata = smd_metadata("Hindemith_Suite1922-01_004_20110315-SMD")
    assert metadata.composer == "Hindemith"
    assert metadata.composer_full is None
    assert metadata.era is None


@pytest.mark.parametrize(
    "stem",
    ["Bach_BWV849-01_001_2009091-SMD", "my recording", "Bach_BWV849-01_001_20090916", "Bach_BWV849_20090916-SMD"],
)
def test_a_name_that_is_not_smd_becomes_the_title(stem: str) -> None:
    assert parse_smd_name(stem) is None
    metadata = smd_metadata(stem)
    assert metadata.title == stem
    assert metadata.composer is None
    assert metadata.instrument == "piano"


def test_an_impossible_date_leaves_the_year_unknown_but_keeps_the_rest() -> None:
    metadata = smd_metadata("Bach_BWV849-01_001_20091399-SMD")
    assert metadata.composer == "Bach"
    assert metadata.year is None
