"""The bounds more than one service judges by, defined once.

Ingest accepts a track and the embedder then decodes it: when the two judge
size, shape or silence differently, a track passes ingest and is refused
downstream (or worse, takes the embedder's memory with it). Both call what
is here, so "accepted at ingest" means "the embedder can take it".

* Bytes: no stored audio object is larger than ``MAX_AUDIO_BYTES``.
* Decoded size: memory and CPU grow with samples x channels x rate, not with
  seconds, so the rate, the channel count and the total of decoded samples
  are each bounded (``decoded_size_problem``).
* Silence: a track is silent when the peak of its mono mixdown (the mean of
  its channels, ``mono_mixdown``) over its first ``SILENCE_SPAN_S`` seconds
  stays below ``SILENCE_PEAK`` (``SilenceMeter``). The span is the start the
  embedder embeds, so music that only begins after it is silence to both.
* Metadata: a track's metadata, as JSON, stays under ``MAX_METADATA_BYTES``,
  so every TrackAdded fits in a broker message (``MAX_EVENT_BYTES``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mess.contracts.events import TrackMetadata

#: The largest audio object any service stores, fetches or decodes (uploads, drops, the embedder's read).
MAX_AUDIO_BYTES = 512 * 1024**2

#: Sample rates outside this range are not music files but attacks or corruption: a 655,350 Hz header
#: makes a 3 MB FLAC decode to gigabytes, and a rate of a few Hz makes resampling up to the model's
#: rate inflate a tiny file just as much.
MIN_SAMPLE_RATE = 4_000
MAX_SAMPLE_RATE = 192_000
#: 7.1 surround; wider files are not music recordings, and each channel multiplies the decoding cost.
MAX_CHANNELS = 8
#: frames x channels over the whole file: an hour of 48 kHz stereo. Bounds the CPU time of a full
#: decode whatever the shape of the file (a 192 kHz stereo file may then last 15 minutes).
MAX_DECODED_SAMPLES = 3600 * 48_000 * 2

#: About -80 dBFS.
SILENCE_PEAK = 1e-4
#: Silence is judged over this much of the start of a track: the embedder embeds its first 900 s.
SILENCE_SPAN_S = 900.0

#: Metadata is for people: 64 KiB of JSON is far more than any catalogue holds, and it leaves a
#: TrackAdded (metadata plus ids, URIs and numbers, a few hundred bytes) far below the message limit.
MAX_METADATA_BYTES = 64 * 1024


@dataclass(frozen=True)
class SizeProblem:
    """Why a file's decoded size is refused: a stable ``kind`` and a sentence."""

    kind: str
    message: str


def decoded_size_problem(sample_rate: int, channels: int, frames: int) -> SizeProblem | None:
    """Why audio of this shape may not be decoded, or None. ``frames`` is what the header declares (or what
    was decoded so far); a header that understates it is caught by calling this again while decoding."""
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        return SizeProblem(
            "implausible_rate",
            f"the sample rate is {sample_rate} Hz; accepted: {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz",
        )
    if not 1 <= channels <= MAX_CHANNELS:
        return SizeProblem("too_many_channels", f"the audio has {channels} channels; at most {MAX_CHANNELS} accepted")
    if frames * channels > MAX_DECODED_SAMPLES:
        return SizeProblem(
            "too_many_samples",
            f"the audio decodes to more than {MAX_DECODED_SAMPLES} samples (frames x channels); "
            f"it has at least {frames * channels}",
        )
    return None


def mono_mixdown(block: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The mean of the channels of a (frames, channels) float32 block, as the embedder hears it."""
    channels = block.shape[1]
    if channels == 1:
        return np.ascontiguousarray(block[:, 0])
    # A matrix-vector product in float32: numpy's mean over a narrow axis is several times slower, and the
    # same arithmetic on both sides gives the same peak to the last bit.
    mix = np.full(channels, 1.0 / channels, dtype=np.float32)
    mixed: npt.NDArray[np.float32] = block @ mix
    return mixed


class SilenceMeter:
    """The peak of the mono mixdown over the first ``SILENCE_SPAN_S`` seconds, fed block by block."""

    def __init__(self, sample_rate: int, span_s: float = SILENCE_SPAN_S) -> None:
        self._left = int(span_s * sample_rate)
        self.peak = 0.0

    def add_mono(self, mono: npt.NDArray[np.float32]) -> None:
        """Feed the next mono samples; those past the span are not looked at."""
        if self._left <= 0 or mono.shape[0] == 0:
            return
        judged = mono[: self._left]
        self._left -= judged.shape[0]
        if judged.shape[0]:
            self.peak = max(self.peak, float(np.max(np.abs(judged))))

    def add(self, block: npt.NDArray[np.float32]) -> None:
        """Feed the next (frames, channels) block."""
        if self._left > 0:
            self.add_mono(mono_mixdown(block[: self._left]))

    def silent(self, threshold: float = SILENCE_PEAK) -> bool:
        return self.peak < threshold


def metadata_bytes(metadata: TrackMetadata) -> int:
    """The size of ``metadata`` as it travels in a TrackAdded."""
    return len(metadata.model_dump_json().encode("utf-8"))
