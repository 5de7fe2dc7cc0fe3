"""The S3 user metadata an importer attaches: agreed keys, ASCII, under S3's 2 KB."""

from collections.abc import Callable
from pathlib import Path

import pytest

from mess.contracts import TrackMetadata, track_id_from_parts
from mess.ingest.importers.dataset import BadAudioError, DatasetTrack, check_audio
from mess.ingest.importers.drop import USER_METADATA_BUDGET, user_metadata


def metadata_size(entries: dict[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in entries.items())


def test_user_metadata_carries_dataset_id_and_ascii_json() -> None:
    track = DatasetTrack(
        dataset="maestro",
        relative_path="2004/Étude.wav",
        metadata=TrackMetadata(title="Étude in C-sharp minor", composer="Chopin", year=2004, tags=["split:train"]),
    )
    entries = user_metadata(track)
    assert entries["mess-dataset"] == "maestro"
    assert entries["mess-track-id"] == track_id_from_parts("maestro", "2004/Étude.wav")
    assert entries["mess-metadata"].isascii()
    assert TrackMetadata.model_validate_json(entries["mess-metadata"]) == track.metadata


def test_oversized_metadata_is_cut_to_fit_tags_first() -> None:
    tags = [f"folder-{i:03d}-{'x' * 20}" for i in range(120)]
    title = "Ω" * 2000  # every character escapes to six bytes
    track = DatasetTrack(dataset="folder", relative_path="a.wav", metadata=TrackMetadata(title=title, tags=tags))
    entries = user_metadata(track)
    assert metadata_size(entries) <= USER_METADATA_BUDGET < 2048
    fitted = TrackMetadata.model_validate_json(entries["mess-metadata"])
    assert fitted.title is not None and fitted.title.startswith("ΩΩΩ") and fitted.title.endswith("...")
    assert 0 < len(fitted.tags) < len(tags)
    assert fitted.tags == tags[: len(fitted.tags)]


def test_a_file_that_is_not_audio_is_refused_with_the_reason(tmp_path: Path) -> None:
    fake = tmp_path / "fake.wav"
    fake.write_bytes(b"RIFF but not really a wave file" * 10)
    with pytest.raises(BadAudioError, match="not decodable audio"):
        check_audio(fake)
    empty = tmp_path / "empty.flac"
    empty.touch()
    with pytest.raises(BadAudioError, match="empty file"):
        check_audio(empty)


def test_a_file_shorter_than_its_catalogue_entry_is_refused(tmp_path: Path, write_tone: Callable[..., Path]) -> None:
    path = write_tone(tmp_path / "short.wav", seconds=2.0)
    assert check_audio(path, expected_duration_s=2.0) == pytest.approx(2.0)
    with pytest.raises(BadAudioError, match=r"catalogue says 300\.0 s"):
        check_audio(path, expected_duration_s=300.0)
