"""Embedder throughput on this CPU: audio seconds embedded per wall second, per backend.

What is timed is the service's own path for a track, minus the network:
audio file bytes -> decode (soundfile) -> mono -> resample (soxr) -> 5 s
chunks -> model -> duration-weighted pooling. The audio is real music: a
Bach chorale and a Palestrina mass movement rendered by mess.corpus (44.1 kHz
stereo WAV), repeated to make each track a minute long.

    .venv/bin/python bench/embedder_throughput.py                 # dsp, tiny mert, MERT-95M shape
    .venv/bin/python bench/embedder_throughput.py --skip-mert-95m  # quicker

Threads: ``dsp`` runs single-threaded (numpy BLAS pinned to one thread), so
its figure is per core; the MERT rows use torch's default threads (all cores)
and say how many. Goal for dsp: at least 200x real time per core. Writes
bench/results/embedder_throughput.json.
"""

import os

# Pin BLAS before numpy is imported: the dsp figure is per core.
for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from mess.embedder.audio import AudioLimits, pool_chunks  # noqa: E402
from mess.embedder.backends.base import EmbeddingBackend  # noqa: E402
from mess.embedder.backends.dsp import DspBackend  # noqa: E402
from mess.embedder.batching import ChunkBatcher  # noqa: E402
from mess.embedder.embedding import ChunkPlan, TrackEmbedder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # the GPU bench's checkpoint writer is reused here
WORKS = ["bach/bwv1.6", "palestrina/Agnus"]
TRACK_SECONDS = 60.0


def music_tracks() -> list[bytes]:
    """Two minute-long 44.1 kHz stereo WAV files of rendered music."""
    from mess.corpus import Rendition, render

    tracks = []
    for work in WORKS:
        audio, rate = render(Rendition(work=work), sample_rate=44100, max_seconds=TRACK_SECONDS)
        repeats = int(np.ceil(TRACK_SECONDS * rate / audio.shape[0]))
        audio = np.tile(audio, (repeats, 1))[: int(TRACK_SECONDS * rate)]
        buffer = io.BytesIO()
        sf.write(buffer, audio, rate, format="WAV", subtype="PCM_16")
        tracks.append(buffer.getvalue())
    return tracks


def measure(backend: EmbeddingBackend, tracks: list[bytes], batch_size: int, min_seconds: float) -> dict[str, Any]:
    with ThreadPoolExecutor(1) as pool:
        embedder = TrackEmbedder(
            backend, ChunkBatcher(backend, pool, batch_size, 0.0), pool, ChunkPlan(5.0, 5.0), AudioLimits()
        )

        def one_pass() -> tuple[float, float]:
            model_s = 0.0
            for data in tracks:
                prepared = embedder.prepare("bench", data, None)
                began = time.perf_counter()
                vectors = []
                for start in range(0, prepared.chunks.count, batch_size):
                    rows = slice(start, start + batch_size)
                    vectors.append(backend.embed_chunks(prepared.chunks.audio[rows], prepared.chunks.lengths[rows]))
                pool_chunks(np.concatenate(vectors), prepared.chunks.weights)
                model_s += time.perf_counter() - began
            return len(tracks) * TRACK_SECONDS, model_s

        one_pass()  # warm-up
        audio_s = model_s = 0.0
        began = time.perf_counter()
        while time.perf_counter() - began < min_seconds or audio_s == 0:
            seconds, in_model = one_pass()
            audio_s += seconds
            model_s += in_model
        wall = time.perf_counter() - began
    return {
        "audio_seconds": audio_s,
        "wall_seconds": wall,
        "end_to_end_x_realtime": audio_s / wall,
        "model_only_x_realtime": audio_s / model_s,
    }


def mert_backend(directory: Path, config: dict[str, Any]) -> EmbeddingBackend:
    import torch  # noqa: F401 - imported here so the dsp row never pays for it
    from embedder_mert_gpu import write_random_checkpoint

    from mess.embedder.backends.mert import MertBackend

    write_random_checkpoint(directory, config)
    return MertBackend(directory, device="cpu", dtype="float32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measure each backend at least this long")
    parser.add_argument("--skip-mert-95m", action="store_true")
    args = parser.parse_args()

    tracks = music_tracks()
    results: list[dict[str, Any]] = []
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores")
    print("audio seconds embedded per wall second (= x real time)")
    print(f"{'backend':<34} {'threads':>7} {'end-to-end':>12} {'model only':>12}")

    def report(label: str, threads: int, row: dict[str, Any]) -> None:
        row.update({"backend": label, "threads": threads})
        results.append(row)
        print(f"{label:<34} {threads:>7} {row['end_to_end_x_realtime']:>11.0f}x {row['model_only_x_realtime']:>11.0f}x")

    report("dsp", 1, measure(DspBackend(), tracks, 32, args.seconds))

    import torch
    from embedder_mert_gpu import MERT_95M_CONFIG, TINY_CONFIG

    with tempfile.TemporaryDirectory(prefix="mert-cpu-bench-") as tmp:
        tiny = mert_backend(Path(tmp) / "tiny", TINY_CONFIG)
        report("mert tiny (2 layers, hidden 32)", torch.get_num_threads(), measure(tiny, tracks, 8, args.seconds))
        if not args.skip_mert_95m:
            full = mert_backend(Path(tmp) / "95m", MERT_95M_CONFIG)
            row = measure(full, tracks[:1], 4, 0.0)
            report("mert MERT-95M shape, fp32", torch.get_num_threads(), row)

    out = ROOT / "bench" / "results" / "embedder_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpu": platform.processor(), "cores": os.cpu_count(), "rows": results}, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
