import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import ValidationError

from mess.contracts import (
    TOPIC_EVENTS,
    TrackAdded,
    TrackEmbedded,
    decode_vector,
    encode_vector,
    is_track_id,
    track_id_from_parts,
)
from mess.contracts.events import Event

from .samples import MODEL, SHA, sample_events


def _same(a: Event, b: Event) -> bool:
    left, right = a.model_dump(), b.model_dump()
    if isinstance(a, TrackEmbedded) and isinstance(b, TrackEmbedded):
        assert a.vector.tobytes() == b.vector.tobytes()
        left.pop("vector"), right.pop("vector")
    return left == right


@pytest.mark.parametrize("event", sample_events(), ids=lambda e: type(e).__name__)
def test_event_round_trips_through_json(event: Event) -> None:
    restored = type(event).from_bytes(event.to_bytes())
    assert _same(event, restored)
    assert restored.event_id == event.event_id
    assert restored.occurred_at == event.occurred_at


def test_every_topic_has_a_sample() -> None:
    assert {type(e) for e in sample_events()} == set(TOPIC_EVENTS.values())


@given(
    hnp.arrays(np.float32, st.integers(1, 1024), elements=st.floats(width=32, allow_nan=False, allow_infinity=False))
)
def test_vector_encoding_is_bit_exact(vector: np.ndarray) -> None:
    assert decode_vector(encode_vector(vector)).tobytes() == vector.astype("<f4").tobytes()


def test_vector_is_little_endian_base64_on_the_wire() -> None:
    event = sample_events()[1]
    wire = json.loads(event.to_bytes())
    assert wire["vector"] == encode_vector(np.array([0.5, -0.25, 1e-38, 3.4e38], dtype="<f4"))
    assert encode_vector(np.array([1.0], dtype=">f4")) == "AACAPw=="  # big-endian input is converted


@pytest.mark.parametrize("bad", ["not base64!", "AAA=", "", encode_vector(np.array([np.nan], dtype=np.float32))])
def test_bad_vectors_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="vector"):
        decode_vector(bad)


def test_vector_length_must_match_model_dim() -> None:
    with pytest.raises(ValidationError, match="dim 4"):
        TrackEmbedded(track_id="t1", sha256=SHA, model=MODEL, vector=np.zeros(3, dtype=np.float32))


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    wire = json.loads(sample_events()[0].to_bytes())
    wire["added_in_a_later_release"] = {"x": 1}
    assert TrackAdded.model_validate(wire).track_id == wire["track_id"]


@pytest.mark.parametrize("bad_id", ["", "Upper", "-leading", "a/b", "../etc", "a" * 129, "é"])
def test_track_ids_are_url_safe(bad_id: str) -> None:
    assert not is_track_id(bad_id)
    with pytest.raises(ValidationError):
        TrackAdded(track_id=bad_id, sha256=SHA, audio_uri="s3://b/k", dataset="x")


def test_track_ids_from_parts_are_stable_safe_and_distinct() -> None:
    first = track_id_from_parts("smd", "Bach_BWV849-01_001_20090916-SMD.wav")
    assert first == track_id_from_parts("smd", "Bach_BWV849-01_001_20090916-SMD.wav")
    assert is_track_id(first) and first.startswith("smd-bach_bwv849-01")
    assert track_id_from_parts("x", "a b") != track_id_from_parts("x", "a-b")
    assert is_track_id(track_id_from_parts("folder", "日本/" + "x" * 300))
