"""Rendering music21 corpus works to audio with fluidsynth."""

import copy
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import music21
import numpy as np
import numpy.typing as npt
import soundfile as sf
from music21 import corpus, instrument, tempo

SOUNDFONTS = (
    Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
    Path("/usr/share/sounds/sf2/default-GM.sf2"),
)

# General MIDI programs that sound clearly different from one another.
INSTRUMENTS: dict[str, int] = {
    "piano": 0,
    "harpsichord": 6,
    "organ": 19,
    "guitar": 24,
    "violin": 40,
    "strings": 48,
    "choir": 52,
    "flute": 73,
}

_COMPOSERS: dict[str, tuple[str, str]] = {
    # corpus folder -> (full name, era)
    "bach": ("Johann Sebastian Bach", "Baroque"),
    "handel": ("George Frideric Handel", "Baroque"),
    "corelli": ("Arcangelo Corelli", "Baroque"),
    "monteverdi": ("Claudio Monteverdi", "Renaissance"),
    "palestrina": ("Giovanni Pierluigi da Palestrina", "Renaissance"),
    "josquin": ("Josquin des Prez", "Renaissance"),
    "haydn": ("Joseph Haydn", "Classical"),
    "mozart": ("Wolfgang Amadeus Mozart", "Classical"),
    "beethoven": ("Ludwig van Beethoven", "Classical"),
    "schubert": ("Franz Schubert", "Romantic"),
    "schumann": ("Robert Schumann", "Romantic"),
    "chopin": ("Frederic Chopin", "Romantic"),
    "verdi": ("Giuseppe Verdi", "Romantic"),
    "joplin": ("Scott Joplin", "Modern"),
}


class RenderError(RuntimeError):
    pass


@dataclass(frozen=True)
class Rendition:
    """One way of playing a corpus work, e.g. ``Rendition("bach/bwv10.7", 1.1, -2, "violin")``."""

    work: str
    tempo_scale: float = 1.0
    transpose: int = 0
    instrument: str = "piano"

    @property
    def name(self) -> str:
        slug = self.work.replace("/", "-").replace(".", "_")
        return f"{slug}--{self.instrument}-t{round(self.tempo_scale * 100)}-k{self.transpose:+d}"


@dataclass(frozen=True)
class WorkInfo:
    work: str
    title: str
    composer: str
    composer_full: str
    era: str
    form: str | None


def work_info(work: str) -> WorkInfo:
    folder = work.split("/", 1)[0]
    full, era = _COMPOSERS.get(folder, (folder.title(), "Unknown"))
    title = work.split("/", 1)[-1]
    form = "chorale" if folder == "bach" and title.startswith("bwv") else None
    if folder == "palestrina":
        form = "mass"
    return WorkInfo(work=work, title=title, composer=full.split()[-1], composer_full=full, era=era, form=form)


def soundfont() -> Path:
    for path in SOUNDFONTS:
        if path.exists():
            return path
    raise RenderError("no General MIDI soundfont found: apt-get install fluid-soundfont-gm")


@lru_cache(maxsize=64)
def _parse(work: str) -> music21.stream.Score:
    parsed = corpus.parse(work)
    if not isinstance(parsed, music21.stream.Score):
        raise RenderError(f"{work} is not a single score")
    return parsed


def _prepare(rendition: Rendition) -> music21.stream.Score:
    score = copy.deepcopy(_parse(rendition.work))
    if rendition.transpose:
        score = score.transpose(rendition.transpose)
    program = INSTRUMENTS[rendition.instrument]
    marks = list(score.recurse().getElementsByClass(tempo.MetronomeMark))
    base_bpm = float(marks[0].number) if marks and marks[0].number else 90.0
    for mark in marks:
        mark.activeSite.remove(mark)
    for part in score.parts:
        for old in list(part.recurse().getElementsByClass(instrument.Instrument)):
            old.activeSite.remove(old)
        player = instrument.Instrument()
        player.midiProgram = program
        part.insert(0, player)
    score.parts[0].insert(0, tempo.MetronomeMark(number=base_bpm * rendition.tempo_scale))
    return score


def render_to_file(
    rendition: Rendition, path: Path, sample_rate: int = 22050, max_seconds: float | None = None
) -> Path:
    """Render to an audio file whose format follows the suffix (.wav, .flac, .ogg)."""
    audio, rate = render(rendition, sample_rate=sample_rate, max_seconds=max_seconds)
    sf.write(str(path), audio, rate)
    return path


def render(
    rendition: Rendition, sample_rate: int = 22050, max_seconds: float | None = None
) -> tuple[npt.NDArray[np.float32], int]:
    """Stereo float32 audio (frames x 2) and its sample rate."""
    binary = shutil.which("fluidsynth")
    if binary is None:
        raise RenderError("fluidsynth is not installed: apt-get install fluidsynth")
    score = _prepare(rendition)
    with tempfile.TemporaryDirectory(prefix="mess-render-") as tmp:
        midi_path = Path(tmp) / "score.mid"
        wav_path = Path(tmp) / "score.wav"
        midi = music21.midi.translate.streamToMidiFile(score)
        midi.open(str(midi_path), "wb")
        try:
            midi.write()
        finally:
            midi.close()
        result = subprocess.run(  # noqa: S603 - fixed arguments, our own files
            [
                binary,
                "-ni",
                "-q",
                "-g",
                "0.7",
                "-r",
                str(sample_rate),
                "-F",
                str(wav_path),
                str(soundfont()),
                str(midi_path),
            ],
            capture_output=True,
            check=False,
            timeout=120,
        )
        if result.returncode != 0 or not wav_path.exists():
            raise RenderError(f"fluidsynth failed on {rendition.name}: {result.stderr.decode(errors='replace')[:500]}")
        audio, rate = sf.read(str(wav_path), dtype="float32", always_2d=True)
    if max_seconds is not None:
        audio = audio[: int(max_seconds * rate)]
    return np.ascontiguousarray(audio), int(rate)


def demo_works(count: int) -> list[str]:
    """``count`` distinct works, spread over composers and eras, always the same ones."""
    pools = [
        [f"bach/{p.stem}" for p in sorted(corpus.getComposer("bach"), key=str) if p.suffix == ".mxl"],
        [
            f"palestrina/{p.stem}"
            for p in sorted(corpus.getComposer("palestrina"), key=str)
            if p.suffix in {".krn", ".mxl"}
        ],
        [f"mozart/{p.stem}" for p in sorted(corpus.getComposer("mozart"), key=str) if p.suffix == ".mxl"],
        [f"beethoven/{p.stem}" for p in sorted(corpus.getComposer("beethoven"), key=str) if p.suffix == ".mxl"],
        [f"haydn/{p.stem}" for p in sorted(corpus.getComposer("haydn"), key=str) if p.suffix == ".mxl"],
    ]
    chosen: list[str] = []
    position = 0
    while len(chosen) < count and any(position < len(pool) for pool in pools):
        for pool in pools:
            if position < len(pool) and len(chosen) < count and pool[position] not in chosen:
                chosen.append(pool[position])
        position += 1
    return chosen


def demo_renditions(works: int, renditions_per_work: int = 3) -> list[Rendition]:
    """Each work played several ways: the first plain, the others varied in
    instrument, tempo (within +-15 %) and key (within two semitones)."""
    variations = [
        (1.0, 0, "piano"),
        (1.1, 2, "strings"),
        (0.9, -1, "organ"),
        (1.05, -2, "flute"),
        (0.88, 1, "guitar"),
    ]
    out = []
    for work in demo_works(works):
        for scale, shift, player in variations[:renditions_per_work]:
            out.append(Rendition(work=work, tempo_scale=scale, transpose=shift, instrument=player))
    return out
