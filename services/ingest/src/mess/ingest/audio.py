"""Deciding whether bytes are audio we accept, by decoding all of them.

The header alone is not enough: a truncated FLAC or a garbled OGG opens
fine and only fails (or yields nothing) once decoded, and silence can only be
found by looking at every sample. Decoding runs block by block from a file
object, so a long track never sits in memory as one array.

What "too big" and "silent" mean is ``mess.contracts.limits``'s, shared with
the embedder: the rate, the channel count and the decoded samples are
bounded before decoding starts (and again while it runs, for a header that
understates the length), and silence is the peak of the mono mixdown over
the span the embedder embeds.
"""

import re
from dataclasses import dataclass
from typing import IO

import numpy as np
import soundfile as sf

from mess.contracts.limits import SilenceMeter, decoded_size_problem

# soundfile's format name -> the extension audio is stored under. RF64 and
# WAVEX are WAV files with large-file or multichannel headers.
ACCEPTED_FORMATS: dict[str, str] = {
    "WAV": "wav",
    "WAVEX": "wav",
    "RF64": "wav",
    "FLAC": "flac",
    "OGG": "ogg",
    "MP3": "mp3",
}
_BLOCK_FRAMES = 65536


@dataclass(frozen=True)
class AudioLimits:
    min_duration_s: float
    max_duration_s: float
    silence_peak: float


@dataclass(frozen=True)
class AudioFacts:
    """What decoding told us about an accepted file."""

    format: str
    extension: str
    duration_s: float
    sample_rate: int
    channels: int
    peak: float  # of the mono mixdown, over the span silence is judged on


class UnacceptableAudioError(Exception):
    """The bytes are not audio we accept; ``kind`` is stable, ``message`` is for people."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def inspect_audio(source: IO[bytes], limits: AudioLimits) -> AudioFacts:
    """Decode ``source`` from its current position to the end, or raise UnacceptableAudioError."""
    try:
        audio = sf.SoundFile(source)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise UnacceptableAudioError(
            "not_audio", f"the file is not audio that can be decoded (WAV, FLAC, OGG or MP3 expected): {_reason(exc)}"
        ) from exc
    with audio:
        extension = ACCEPTED_FORMATS.get(audio.format)
        if extension is None:
            raise UnacceptableAudioError(
                "unsupported_format", f"{audio.format} audio is not accepted; send WAV, FLAC, OGG or MP3"
            )
        if audio.samplerate <= 0 or audio.channels <= 0:
            raise UnacceptableAudioError(
                "corrupt", f"the header declares {audio.samplerate} Hz and {audio.channels} channels"
            )
        # Before a single block is decoded: the cost of decoding (here and in the embedder) is set by these.
        too_big = decoded_size_problem(audio.samplerate, audio.channels, max(audio.frames, 0))
        if too_big is not None:
            raise UnacceptableAudioError(too_big.kind, too_big.message)
        truncated = _truncation(audio)
        if truncated is not None:
            raise UnacceptableAudioError("corrupt", truncated)
        # Refuse an overlong file from its header before spending minutes decoding it.
        declared_s = audio.frames / audio.samplerate if audio.frames > 0 else 0.0
        if declared_s > limits.max_duration_s:
            raise _too_long(declared_s, limits)
        frames, peak = _decode(audio, limits)
        sample_rate, channels, format_name = audio.samplerate, audio.channels, audio.format
    if frames == 0:
        raise UnacceptableAudioError("corrupt", "no audio could be decoded from the file")
    duration_s = frames / sample_rate
    if duration_s < limits.min_duration_s:
        raise UnacceptableAudioError(
            "too_short", f"the audio lasts {duration_s:.2f} s; the shortest accepted is {limits.min_duration_s:g} s"
        )
    if duration_s > limits.max_duration_s:
        raise _too_long(duration_s, limits)
    if peak < limits.silence_peak:
        raise UnacceptableAudioError(
            "silent", f"the audio is silent (peak amplitude {peak:.2e}, below the threshold {limits.silence_peak:.0e})"
        )
    return AudioFacts(
        format=format_name,
        extension=extension,
        duration_s=duration_s,
        sample_rate=sample_rate,
        channels=channels,
        peak=peak,
    )


def _decode(audio: sf.SoundFile, limits: AudioLimits) -> tuple[int, float]:
    frames = 0
    silence = SilenceMeter(audio.samplerate)
    max_frames = int(limits.max_duration_s * audio.samplerate) + 1
    try:
        for block in audio.blocks(blocksize=_BLOCK_FRAMES, dtype="float32", always_2d=True):
            if block.size == 0:
                continue
            frames += block.shape[0]
            if not np.all(np.isfinite(block)):
                raise UnacceptableAudioError("corrupt", "the audio decodes to NaN or infinite samples")
            silence.add(block)
            # A header can understate the length (MP3 without a Xing frame); stop once it is too long anyway.
            if frames > max_frames:
                raise _too_long(frames / audio.samplerate, limits)
            too_big = decoded_size_problem(audio.samplerate, audio.channels, frames)
            if too_big is not None:
                raise UnacceptableAudioError(too_big.kind, too_big.message)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise UnacceptableAudioError("corrupt", f"decoding failed after {frames} frames: {_reason(exc)}") from exc
    return frames, silence.peak


# libsndfile's log of a WAV-family header: "data : <declared> (should be <what the file holds>)".
_DATA_CHUNK = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# What streaming writers put in a data chunk size they could not know: not a claim about the length.
_UNKNOWN_DATA_SIZES = frozenset({0, 0xFFFFFFFF, 0x7FFFFFFF})


def _truncation(audio: sf.SoundFile) -> str | None:
    """Why a WAV-family file is cut short, or None. libsndfile quietly plays what is there, so a WAV
    whose upload broke off would pass as a shorter track; its header still says how long it should be."""
    if audio.format not in ("WAV", "WAVEX", "RF64"):
        return None
    found = _DATA_CHUNK.search(audio.extra_info)
    if found is None:
        return None
    declared, held = int(found.group(1)), int(found.group(2))
    if declared in _UNKNOWN_DATA_SIZES or declared <= held:
        return None
    return f"the file is truncated: its header declares {declared} bytes of audio, it holds {held}"


def _too_long(duration_s: float, limits: AudioLimits) -> UnacceptableAudioError:
    return UnacceptableAudioError(
        "too_long", f"the audio lasts at least {duration_s:.1f} s; the longest accepted is {limits.max_duration_s:g} s"
    )


def _reason(exc: BaseException) -> str:
    # libsndfile names the Python file object in its message ("Error opening <_io.BytesIO ...>: ..."); keep only why.
    text = str(exc)
    return text.rsplit(": ", 1)[-1].strip() if ": " in text else text
