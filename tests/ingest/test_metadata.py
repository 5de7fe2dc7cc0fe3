"""Control characters in track metadata (unit)."""

import pytest

from mess.contracts.events import TrackMetadata
from mess.ingest.metadata import control_character_problem
from mess.ingest.uploads import UploadError, metadata_from_form


@pytest.mark.parametrize("bad", ["a\x00b", "clear\x1b[2J", "bell\x07", "line\nbreak", "del\x7f"])
def test_control_characters_are_named(bad: str) -> None:
    problem = control_character_problem(TrackMetadata(composer=bad))
    assert problem is not None and "composer" in problem


def test_clean_text_passes_including_unicode_and_shell_characters() -> None:
    metadata = TrackMetadata(title="Tr\u00e4umerei \u2013 \u591c\u60f3\u66f2", composer="$(id); `x`", tags=["a b"])
    assert control_character_problem(metadata) is None


def test_a_file_name_with_a_nul_byte_is_bad_metadata_before_anything_is_stored() -> None:
    with pytest.raises(UploadError) as caught:
        metadata_from_form({}, "evil\x00.wav", 2000)
    assert (caught.value.status_code, caught.value.kind) == (422, "bad_metadata")
    assert "file name" in caught.value.message
