import numpy as np
import pytest

from mess.corpus import Rendition, demo_renditions, demo_works, render, work_info


def test_demo_works_are_distinct_and_spread_over_eras() -> None:
    works = demo_works(30)
    assert len(works) == len(set(works)) == 30
    assert {work_info(w).era for w in works} >= {"Baroque", "Renaissance"}
    bases = [w.split("-", 1)[0].removesuffix("_old") for w in works]
    assert len(bases) == len(set(bases)), "two variants of one chorale would pass for two works"


def test_renditions_vary_tempo_key_and_instrument_within_bounds() -> None:
    renditions = demo_renditions(2, renditions_per_work=3)
    assert len(renditions) == 6
    for rendition in renditions:
        assert 0.85 <= rendition.tempo_scale <= 1.15
        assert abs(rendition.transpose) <= 2
    assert len({r.instrument for r in renditions[:3]}) == 3


@pytest.mark.parametrize("max_seconds", [5.0, 12.5])
def test_render_is_bounded_stereo_and_audible(max_seconds: float) -> None:
    # monteverdi/madrigal.3.18 writes MIDI that ends hours after its last note;
    # the render must stop at the requested length anyway.
    audio, rate = render(Rendition("monteverdi/madrigal.3.18", 1.1, 2, "strings"), max_seconds=max_seconds)
    assert rate == 22050
    assert audio.shape == (int(max_seconds * rate), 2)
    assert audio.dtype == np.float32
    assert 0.01 < float(np.abs(audio).max()) <= 1.0


def test_full_render_stops_after_the_last_note() -> None:
    audio, rate = render(Rendition("bach/bwv10.7", tempo_scale=2.0))
    # 88 quarter notes at 180 bpm is about 29 s, plus a short release tail.
    assert 25 < audio.shape[0] / rate < 35


def test_transposition_changes_the_pitch_content() -> None:
    plain, _ = render(Rendition("bach/bwv10.7"), max_seconds=4)
    shifted, _ = render(Rendition("bach/bwv10.7", transpose=2), max_seconds=4)
    assert not np.allclose(plain, shifted)
