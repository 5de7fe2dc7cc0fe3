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


def _trim(score: music21.stream.Score, quarter_lengths: float) -> music21.stream.Score:
    """The opening measures covering ``quarter_lengths``: rendering a whole
    quartet movement to keep its first 30 seconds would waste minutes."""
    measures = list(score.parts[0].getElementsByClass(music21.stream.Measure))
    if not measures or measures[-1].offset < quarter_lengths:
        return score
    last = next(m for m in measures if m.offset >= quarter_lengths)
    trimmed = score.measures(measures[0].number, last.number)  # type: ignore[no-untyped-call]
    return trimmed if isinstance(trimmed, music21.stream.Score) else score


def _prepare(rendition: Rendition, max_seconds: float | None = None) -> music21.stream.Score:
    score = copy.deepcopy(_parse(rendition.work))
    if rendition.transpose:
        score = score.transpose(rendition.transpose)
    program = INSTRUMENTS[rendition.instrument]
    marks = list(score.recurse().getElementsByClass(tempo.MetronomeMark))
    base_bpm = float(marks[0].number) if marks and marks[0].number else 90.0
    if max_seconds is not None:
        # One spare second so the cut lands in music, not in the release tail.
        score = _trim(score, (max_seconds + 1.0) / 60.0 * base_bpm * rendition.tempo_scale)
        marks = list(score.recurse().getElementsByClass(tempo.MetronomeMark))
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
    score = _prepare(rendition, max_seconds)
    bpm = _first_bpm(score)
    # The score's own length plus a release tail bounds the render: some corpus
    # MIDI ends hours after its last note, and fluidsynth would render it all.
    seconds = float(score.highestTime) * 60.0 / bpm + 3.0
    if max_seconds is not None:
        seconds = min(seconds, max_seconds)
    wanted = int(seconds * sample_rate) * 2 * 2  # stereo, 16-bit
    with tempfile.TemporaryDirectory(prefix="mess-render-") as tmp:
        midi_path = Path(tmp) / "score.mid"
        midi = music21.midi.translate.streamToMidiFile(score)
        midi.open(str(midi_path), "wb")
        try:
            midi.write()
        finally:
            midi.close()
        command = [binary, "-ni", "-q", "-g", "0.7", "-r", str(sample_rate), "-T", "raw", "-O", "s16"]
        command += ["-F", "/dev/stdout", str(soundfont()), str(midi_path)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # noqa: S603
        raw = bytearray()
        try:
            assert process.stdout is not None
            while len(raw) < wanted:
                block = process.stdout.read(min(1 << 16, wanted - len(raw)))
                if not block:
                    break
                raw += block
        finally:
            process.kill()
            _, stderr = process.communicate(timeout=30)
    if len(raw) < 4 * sample_rate // 10:
        raise RenderError(f"fluidsynth rendered nothing for {rendition.name}: {stderr.decode(errors='replace')[:500]}")
    usable = len(raw) - len(raw) % 4
    audio = np.frombuffer(bytes(raw[:usable]), dtype="<i2").reshape(-1, 2).astype(np.float32) / 32768.0
    return np.ascontiguousarray(audio), sample_rate


def _first_bpm(score: music21.stream.Score) -> float:
    marks = list(score.recurse().getElementsByClass(tempo.MetronomeMark))
    return float(marks[0].number) if marks and marks[0].number else 90.0


# Works that parse slowly (minutes) or not at all in music21's corpus.
_UNUSABLE = frozenset({"beethoven/opus132", "beethoven/opus133"})
# Composer folders the demo draws from, in turn. Only these three large
# collections render reliably in a second or two: several of the quartet
# movements have repeats music21 cannot expand, or MIDI that keeps fluidsynth
# busy for minutes (seen with mozart/k155/movement2 and beethoven/opus18no1).
_DEMO_COMPOSERS = ("bach", "palestrina", "monteverdi")
_SCORE_SUFFIXES = (".mxl", ".krn", ".xml", ".musicxml")


def _corpus_works(composer: str) -> list[str]:
    """Work ids (paths under the corpus root, no suffix) of one composer, one per score."""
    works: dict[str, str] = {}
    for path in sorted(corpus.getComposer(composer), key=str):
        if path.suffix not in _SCORE_SUFFIXES:
            continue
        relative = str(path).split("/corpus/", 1)[-1]
        work = relative.rsplit(".", 1)[0]
        # Prefer MusicXML when a work exists in several encodings.
        if work not in works or path.suffix == ".mxl":
            works[work] = relative
    # Some works come in variants (``bwv112.5`` and ``bwv112.5-sc``,
    # ``bwv18.5-lz`` and ``bwv18.5-w``, ``madrigal.3.1`` and ``madrigal.3.1_old``):
    # the same music under two ids would pass for two works that sound alike,
    # so keep one per base id.
    seen: set[str] = set()
    distinct = []
    for work in works:
        base = work.split("-", 1)[0].removesuffix("_old")
        if work not in _UNUSABLE and base not in seen:
            seen.add(base)
            distinct.append(work)
    return distinct


def demo_works(count: int) -> list[str]:
    """``count`` distinct works, spread over composers and eras, always the same ones."""
    pools = [_corpus_works(composer) for composer in _DEMO_COMPOSERS]
    chosen: list[str] = []
    position = 0
    while len(chosen) < count and any(position < len(pool) for pool in pools):
        for pool in pools:
            if position < len(pool) and len(chosen) < count:
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
