"""Real music without downloads.

music21 ships about 3,000 real scores; fluidsynth with the General MIDI
soundfont renders one in well under a second. A ``Rendition`` is one way of
playing a work (tempo, transposition, instrument), so several renditions of
one work are a ground truth for "sounds like": the demo corpus, the DSP
embedder's tests and the end-to-end test all use them. Needs the Debian
packages ``fluidsynth`` and ``fluid-soundfont-gm``.
"""

from mess.corpus.render import (
    INSTRUMENTS,
    RenderError,
    Rendition,
    WorkInfo,
    demo_renditions,
    demo_works,
    render,
    render_to_file,
    work_info,
)

__all__ = [
    "INSTRUMENTS",
    "RenderError",
    "Rendition",
    "WorkInfo",
    "demo_renditions",
    "demo_works",
    "render",
    "render_to_file",
    "work_info",
]
