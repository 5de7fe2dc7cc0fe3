"""What an importer finds in a dataset: tracks to upload and problems to report.

Listing a dataset only reads names and catalogues; the audio itself is opened
later, one file at a time, by the import run. A file that is missing or not
decodable is a ``DatasetProblem``: reported and skipped, never fatal, because
one bad file in a 100 GB dataset must not stop the other thousand.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import soundfile as sf

from mess.contracts import TrackMetadata, track_id_from_parts
from mess.contracts.ids import DATASET_PATTERN

# What the ingest service can decode (soundfile/libsndfile), with the
# Content-Type the object is stored under.
AUDIO_TYPES: dict[str, str] = {
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".mp3": "audio/mpeg",
}

# A dataset name becomes a folder of the drop prefix and the first part of
# every track id, so it is held to the id alphabet (and the ingest service
# checks a drop's dataset and claimed id by the same rule).
DATASET_NAME = re.compile(DATASET_PATTERN)

# A catalogue's duration and the file's may differ by rounding and by
# encoder padding; more than this means the file is not the recording the
# catalogue describes (typically a truncated download).
DURATION_TOLERANCE_S = 1.0
DURATION_TOLERANCE_RATIO = 0.01


class ImportSetupError(Exception):
    """The import cannot start at all (no such folder, no catalogue, no bucket)."""


class BadAudioError(ValueError):
    """A file that is not audio the ingest service could register."""


@dataclass(frozen=True)
class DatasetTrack:
    """One recording of a dataset, ready to upload."""

    dataset: str
    relative_path: str  # POSIX path inside the dataset: the S3 key and the track id derive from it
    metadata: TrackMetadata
    source: Path | None = None  # the file on disk; None while a demo rendition is not rendered yet
    expected_duration_s: float | None = None  # what the dataset's catalogue says, checked against the file

    @property
    def track_id(self) -> str:
        return track_id_from_parts(self.dataset, self.relative_path)

    @property
    def content_type(self) -> str:
        return AUDIO_TYPES.get(PurePosixPath(self.relative_path).suffix.lower(), "application/octet-stream")


@dataclass(frozen=True)
class DatasetProblem:
    relative_path: str
    reason: str


@dataclass
class DatasetListing:
    dataset: str
    tracks: list[DatasetTrack] = field(default_factory=list)
    problems: list[DatasetProblem] = field(default_factory=list)  # found while listing, e.g. missing audio
    ignored: int = 0  # files that are not audio (MIDI, PDFs, hidden files)


def check_dataset_name(name: str) -> str:
    if not DATASET_NAME.fullmatch(name):
        raise ImportSetupError(
            f"dataset name {name!r} must match {DATASET_NAME.pattern} (it becomes a folder and an id)"
        )
    return name


def existing_folder(root: Path) -> Path:
    if not root.is_dir():
        raise ImportSetupError(f"{root} is not a folder")
    return root


def is_audio_name(name: str) -> bool:
    """Audio by extension, minus hidden files: macOS leaves ``._name.wav``
    resource forks beside real files, and they are not audio."""
    return not name.startswith(".") and PurePosixPath(name).suffix.lower() in AUDIO_TYPES


def check_audio(path: Path, expected_duration_s: float | None = None) -> float:
    """Open the file and decode its first second; returns its duration in seconds.

    A cheap check, not the ingest service's full validation (silence, length
    limits): it catches what a dataset download typically gets wrong, empty,
    truncated or mislabelled files, without reading gigabytes twice.
    """
    try:
        size = path.stat().st_size
    except OSError as error:
        raise BadAudioError(f"cannot read the file: {error.strerror or error}") from error
    if size == 0:
        raise BadAudioError("empty file")
    try:
        with sf.SoundFile(str(path)) as audio:
            if audio.samplerate <= 0 or audio.frames <= 0:
                raise BadAudioError("no audio frames")
            audio.read(min(audio.frames, audio.samplerate), dtype="float32")
            duration = float(audio.frames) / float(audio.samplerate)
    except (RuntimeError, sf.SoundFileError) as error:
        # libsndfile's message names the problem ("Format not recognised",
        # "Internal psf_fseek() failed"); keep it for the report.
        raise BadAudioError(f"not decodable audio: {error}") from error
    if expected_duration_s is not None:
        allowed = DURATION_TOLERANCE_S + DURATION_TOLERANCE_RATIO * expected_duration_s
        if abs(duration - expected_duration_s) > allowed:
            raise BadAudioError(
                f"audio lasts {duration:.1f} s but the catalogue says {expected_duration_s:.1f} s "
                "(truncated or wrong file?)"
            )
    return duration
