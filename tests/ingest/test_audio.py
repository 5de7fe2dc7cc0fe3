"""Audio validation by decoding (unit: bytes in memory, no network)."""

import io

import pytest

from mess.ingest.audio import AudioLimits, UnacceptableAudioError, inspect_audio

from .service_harness import tone

LIMITS = AudioLimits(min_duration_s=1.0, max_duration_s=10.0, silence_peak=1e-4)


@pytest.mark.parametrize(("fmt", "extension"), [("WAV", "wav"), ("FLAC", "flac"), ("OGG", "ogg"), ("MP3", "mp3")])
def test_accepted_formats_report_their_facts(fmt: str, extension: str) -> None:
    facts = inspect_audio(io.BytesIO(tone(seconds=2.0, fmt=fmt, rate=22050)), LIMITS)
    assert facts.extension == extension
    assert facts.sample_rate == 22050
    assert facts.channels == 1
    # MP3 encoders pad the start and end; lossless formats are exact.
    assert facts.duration_s == pytest.approx(2.0, abs=0.1 if fmt == "MP3" else 1e-6)
    assert 0.2 < facts.peak <= 1.0


def _rejection(data: bytes, limits: AudioLimits = LIMITS) -> str:
    with pytest.raises(UnacceptableAudioError) as caught:
        inspect_audio(io.BytesIO(data), limits)
    assert caught.value.message
    return caught.value.kind


def test_text_is_not_audio() -> None:
    assert _rejection(b"hello, this is not music\n" * 100) == "not_audio"


def test_empty_file_is_not_audio() -> None:
    assert _rejection(b"") == "not_audio"


def test_truncated_flac_is_corrupt() -> None:
    flac = tone(seconds=3.0, fmt="FLAC")
    assert _rejection(flac[: len(flac) // 2]) == "corrupt"


def test_silence_is_refused() -> None:
    assert _rejection(tone(seconds=3.0, amplitude=0.0)) == "silent"
    # Quiet is not silent: -60 dBFS is still music (a fade, a pianissimo).
    assert inspect_audio(io.BytesIO(tone(seconds=3.0, amplitude=0.001)), LIMITS).peak > LIMITS.silence_peak


def test_duration_limits() -> None:
    assert _rejection(tone(seconds=0.5)) == "too_short"
    assert _rejection(tone(seconds=11.0)) == "too_long"
    inspect_audio(io.BytesIO(tone(seconds=1.0)), LIMITS)  # the limit itself is accepted


def test_other_sound_formats_are_refused_by_name() -> None:
    assert _rejection(tone(fmt="AIFF", subtype="PCM_16")) == "unsupported_format"


def test_truncated_wav_is_corrupt() -> None:
    # libsndfile plays the part that is there; the header still says how much should be.
    audio = tone(seconds=3.0)
    assert _rejection(audio[: len(audio) // 3]) == "corrupt"


def test_wav_written_by_a_stream_with_an_unknown_length_is_accepted() -> None:
    # A streaming writer (ffmpeg to a pipe) cannot know the length and leaves 0xFFFFFFFF: no truncation claim.
    audio = bytearray(tone(seconds=2.0))
    data = audio.index(b"data")
    audio[data + 4 : data + 8] = (0xFFFFFFFF).to_bytes(4, "little")
    assert inspect_audio(io.BytesIO(bytes(audio)), LIMITS).duration_s == pytest.approx(2.0)
