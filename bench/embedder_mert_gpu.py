"""MERT-v1 on a GPU: throughput (audio seconds per wall second, GPU memory) and bf16 vs fp32 agreement.

Without ``--model-dir`` the model has MERT-v1-95M's real shape (12 layers,
hidden 768, 7-layer CNN front end; ``--shape 330m`` for MERT-v1-330M's) with
random weights: speed does not depend on the values. The checkpoint is
written with MERT's file names and loaded through the service's own path
(``MertBackend``: strict key match, input convention, layer and frame
pooling), so what is timed is what the service runs per batch. With
``--model-dir`` the real MERT directory is loaded instead.

After the timings, when the dtype is not float32, the same directory is
loaded a second time in float32 on the same device and both embed the same
chunks (chords at several pitches and levels); the cosine of each chunk's
two vectors is reported (goal: at least 0.999). With random weights that
figure says how bf16 rounding propagates through this architecture, not how
the published weights behave: run it with ``--model-dir`` for that.

    .venv/bin/python bench/embedder_mert_gpu.py                 # CUDA, bf16, batch 1..64, then bf16 vs fp32
    .venv/bin/python bench/embedder_mert_gpu.py --model-dir models/MERT-v1-95M
    .venv/bin/python bench/embedder_mert_gpu.py --device cpu --tiny --batches 1 2 4 --dtype float32
                                                                # proves it runs on a CPU-only machine

Goal on one H100/H200: at least 3,000x real time for MERT-95M in bf16.
Prints a table, writes bench/results/embedder_mert_gpu.json and a plot next
to it.
"""

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from transformers import HubertConfig, HubertModel

from mess.embedder.backends.mert import MertBackend

ROOT = Path(__file__).resolve().parents[1]

# MERT-v1-95M's config.json as published (HuBERT-base shape at 24 kHz), with
# MERT's own keys; --tiny shrinks it to 2 layers of width 32.
MERT_95M_CONFIG: dict[str, Any] = {
    "_name_or_path": "m-a-p/MERT-v1-95M",
    "architectures": ["MERTModel"],
    "model_type": "mert_model",
    "attention_relax": -1.0,
    "deepnorm": False,
    "feature_extractor_cqt": False,
    "feature_extractor_cqt_bins": 336,
    "sample_rate": 24000,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "conv_dim": [512] * 7,
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_bias": False,
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
    "feat_extract_norm": "group",
    "do_stable_layer_norm": False,
    "mask_time_prob": 0.05,
}
# MERT-v1-330M: 24 pre-LayerNorm layers of width 1024.
MERT_330M_CONFIG: dict[str, Any] = {
    **MERT_95M_CONFIG,
    "_name_or_path": "m-a-p/MERT-v1-330M",
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "do_stable_layer_norm": True,
    "attention_relax": 32.0,
    "mask_time_prob": 0.075,
}
TINY_CONFIG: dict[str, Any] = {
    **MERT_95M_CONFIG,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": [32] * 7,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
}
# MERT-v1's published preprocessor file: raw input.
PREPROCESSOR = {"do_normalize": False, "feature_extractor_type": "Wav2Vec2FeatureExtractor", "sampling_rate": 24000}
COSINE_GOAL = 0.999


def write_random_checkpoint(directory: Path, config: dict[str, Any]) -> Path:
    """config.json, preprocessor_config.json and model.safetensors of a randomly initialised model."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (directory / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR), encoding="utf-8")
    known = set(HubertConfig().to_dict())
    hubert = HubertConfig(
        **{k: v for k, v in config.items() if k in known and k not in {"model_type", "architectures"}}
    )
    model = HubertModel(hubert)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))
    return directory


def chords(count: int, samples: int, rate: int) -> np.ndarray:
    """``count`` chunks of three-note chords with harmonics and a little noise, at varied pitch and level."""
    rng = np.random.default_rng(1)
    t = np.arange(samples) / rate
    out = np.empty((count, samples), dtype=np.float32)
    for row in range(count):
        root = 110.0 * 2 ** (rng.integers(0, 24) / 12)
        signal = np.zeros(samples)
        for ratio in (1.0, 1.26, 1.5):
            for harmonic in (1, 2, 3, 4):
                signal += np.sin(2 * np.pi * root * ratio * harmonic * t + rng.uniform(0, 2 * np.pi)) / harmonic
        signal += 0.02 * rng.standard_normal(samples)
        level = 10 ** (rng.uniform(-30, -3) / 20)
        out[row] = level * signal / np.max(np.abs(signal))
    return out


def cosine_against_float32(
    backend: MertBackend, directory: Path, device: str, chunk: int, rate: int, count: int
) -> dict[str, Any]:
    """Each chunk's vector at the backend's dtype against the same chunk's float32 vector, same device."""
    reference = MertBackend(directory, device=device, dtype="float32", layers="all")
    audio = chords(count, chunk, rate)
    lengths = np.full(count, chunk, dtype=np.int64)
    vectors, exact = [], []
    for start in range(0, count, 16):
        vectors.append(backend.embed_chunks(audio[start : start + 16], lengths[start : start + 16]))
        exact.append(reference.embed_chunks(audio[start : start + 16], lengths[start : start + 16]))
    reference.close()
    low, high = np.concatenate(vectors).astype(np.float64), np.concatenate(exact).astype(np.float64)
    cosines = np.sum(low * high, axis=1) / (np.linalg.norm(low, axis=1) * np.linalg.norm(high, axis=1))
    return {
        "chunks": count,
        "min": float(cosines.min()),
        "p01": float(np.quantile(cosines, 0.01)),
        "mean": float(cosines.mean()),
        "goal": COSINE_GOAL,
        "met": bool(cosines.min() >= COSINE_GOAL),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--chunk-seconds", type=float, default=5.0)
    parser.add_argument("--seconds-per-point", type=float, default=5.0, help="measure each batch size this long")
    parser.add_argument("--shape", choices=["95m", "330m"], default="95m", help="random weights of this shape")
    parser.add_argument("--model-dir", type=Path, help="a real MERT directory instead of random weights")
    parser.add_argument("--tiny", action="store_true", help="2 layers, hidden 32: a smoke run, not a figure")
    parser.add_argument("--cosine-chunks", type=int, default=64, help="chunks compared against float32 (0: skip)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "embedder_mert_gpu.json")
    args = parser.parse_args()

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device here; run with --device cpu --tiny --dtype float32 to check the script runs")
    config = TINY_CONFIG if args.tiny else MERT_330M_CONFIG if args.shape == "330m" else MERT_95M_CONFIG
    if args.model_dir is not None:
        shape = f"{args.model_dir.name} (real weights)"
    elif args.tiny:
        shape = "tiny (2 layers, hidden 32), random weights"
    else:
        shape = (
            f"MERT-v1-{args.shape.upper()} shape ({config['num_hidden_layers']} layers, "
            f"hidden {config['hidden_size']}), random weights"
        )
    rate = int(PREPROCESSOR["sampling_rate"])
    chunk = int(args.chunk_seconds * rate)

    with tempfile.TemporaryDirectory(prefix="mert-bench-") as tmp:
        started = time.perf_counter()
        directory = args.model_dir or write_random_checkpoint(Path(tmp) / "MERT-v1", config)
        backend = MertBackend(directory, device=args.device, dtype=args.dtype)
        load_s = time.perf_counter() - started
        device = torch.device(args.device)
        gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
        print(f"{shape}, {args.dtype} on {gpu_name}; {args.chunk_seconds:g} s chunks; load {load_s:.1f} s")
        print(f"identity: {backend.name}@{backend.revision}/{backend.pooling}/{backend.dim}")
        print(f"{'batch':>6} {'forwards':>9} {'s/forward':>10} {'audio s/s':>11} {'x realtime':>11} {'peak GiB':>9}")

        rng = np.random.default_rng(0)
        rows = []
        for batch in args.batches:
            audio = (0.1 * rng.standard_normal((batch, chunk))).astype(np.float32)
            lengths = np.full(batch, chunk, dtype=np.int64)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            try:
                for _ in range(2):  # warm-up: kernels picked, memory pools grown
                    backend.embed_chunks(audio, lengths)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                forwards, began = 0, time.perf_counter()
                while time.perf_counter() - began < args.seconds_per_point or forwards < 3:
                    backend.embed_chunks(audio, lengths)  # returns numpy: synchronised by the copy
                    forwards += 1
                elapsed = time.perf_counter() - began
            except torch.OutOfMemoryError:
                print(f"{batch:>6}  out of memory")
                rows.append({"batch": batch, "oom": True})
                continue
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            audio_per_s = forwards * batch * args.chunk_seconds / elapsed
            row = {
                "batch": batch,
                "forwards": forwards,
                "seconds_per_forward": elapsed / forwards,
                "audio_seconds_per_second": audio_per_s,
                "peak_gpu_memory_gib": peak,
            }
            rows.append(row)
            print(
                f"{batch:>6} {forwards:>9} {elapsed / forwards:>10.4f} {audio_per_s:>11.1f} "
                f"{audio_per_s:>10.0f}x {peak:>9.2f}"
            )

        cosine: dict[str, Any] | None = None
        if args.dtype != "float32" and args.cosine_chunks > 0:
            cosine = cosine_against_float32(backend, directory, args.device, chunk, rate, args.cosine_chunks)
            print(
                f"{args.dtype} vs float32, {cosine['chunks']} chunks: cosine min {cosine['min']:.6f}, "
                f"p01 {cosine['p01']:.6f}, mean {cosine['mean']:.6f} (goal >= {COSINE_GOAL}: "
                f"{'met' if cosine['met'] else 'NOT met'})"
            )
        backend.close()

    result = {
        "model": shape,
        "dtype": args.dtype,
        "device": gpu_name,
        "chunk_seconds": args.chunk_seconds,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "rows": rows,
        "cosine_vs_float32": cosine,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out = args.out if not args.tiny else args.out.with_name(args.out.stem + "_tiny_smoke.json")
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"wrote {out}")
    measured = [r for r in rows if not r.get("oom")]
    if measured and not args.tiny:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["batch"] for r in measured], [r["audio_seconds_per_second"] for r in measured], marker="o")
        ax.axhline(3000, color="grey", linestyle="--", label="goal: 3,000x real time")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"batch ({args.chunk_seconds:g} s chunks)")
        ax.set_ylabel("audio seconds per second")
        ax.set_title(f"{shape}, {args.dtype}, {gpu_name}", fontsize=9)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"), dpi=120)
        print(f"wrote {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
