"""Write the mert backend's reference fixtures with MERT's own code.

``tests/embedder/fixtures/mert/`` holds two tiny, randomly initialised
checkpoints, one of MERT-v1-95M's shape (post-LayerNorm encoder) and one of
MERT-v1-330M's (``do_stable_layer_norm: true``, ``attention_relax: 32``), each
saved by ``MERTModel.save_pretrained`` as ``pytorch_model.bin`` and as
``model.safetensors``, and the vectors MERT's own code computes from them:
every hidden state and ``last_hidden_state``, averaged over frames, for one
loud and one quiet clip, with ``Wav2Vec2FeatureExtractor`` normalising and
not. ``tests/embedder/test_mert.py`` checks the service's loader against
them, so the loader is compared with the authors' code, never with itself.

MERT's modelling code is not part of this repository. The script runs it
from a checkout of ``yizhilll/MERT`` on GitHub (Apache-2.0;
``scripts/mert_hf/configuration_MERT.py`` and ``modeling_MERT.py``), in a
throwaway environment holding the transformers version MERT's README asks
for, never in the project's own virtual environment::

    python3.11 -m venv /tmp/mert-ref
    /tmp/mert-ref/bin/pip install torch==2.13.0          # the CPU build
    /tmp/mert-ref/bin/pip install --no-deps transformers==4.38.2
    /tmp/mert-ref/bin/pip install "huggingface-hub>=0.19.3,<1.0" "numpy<2" \\
        safetensors pyyaml regex requests packaging filelock tqdm
    git clone <yizhilll/MERT> /tmp/MERT
    /tmp/mert-ref/bin/python tools/mert_reference/make_fixtures.py \\
        --mert /tmp/MERT --mert-commit "$(git -C /tmp/MERT rev-parse HEAD)" \\
        --out tests/embedder/fixtures/mert

The output is deterministic for a given MERT commit, torch and transformers;
``manifest.json`` records them, with the sha256 of every file written.
"""

import argparse
import contextlib
import hashlib
import importlib
import json
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

RATE = 24000
SECONDS = 1.0
QUIET_GAIN = 0.01  # -40 dB: where normalising the input or not matters most

# Tiny sizes shared by both shapes: a few kB of weights, yet every module
# MERT-v1 has (7-layer conv front end with MERT's kernels and strides, so the
# 400-sample receptive field and 320-sample hop are the real ones; feature
# projection with its LayerNorm; weight-normed positional convolution; encoder).
TINY = {
    "hidden_size": 16,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "conv_dim": [12] * 7,
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "num_conv_pos_embeddings": 8,
    "num_conv_pos_embedding_groups": 2,
}

# The switches of MERT-v1's published configs (MERT's scripts/hf_config and
# its pretraining configs: group-norm extractor, no conv bias, no CQT branch,
# no deepnorm; the 330M model is pre-LayerNorm with attention_relax 32).
SHAPES: dict[str, dict[str, Any]] = {
    "mert-95m": {
        "num_hidden_layers": 2,
        "do_stable_layer_norm": False,
        "attention_relax": -1.0,
        "mask_time_prob": 0.05,
        "seed": 95,
    },
    "mert-330m": {
        "num_hidden_layers": 3,
        "do_stable_layer_norm": True,
        "attention_relax": 32.0,
        "mask_time_prob": 0.075,
        "seed": 330,
    },
}
COMMON = {
    "feat_extract_norm": "group",
    "feat_extract_activation": "gelu",
    "conv_bias": False,
    "feat_proj_layer_norm": True,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "feature_extractor_cqt": False,
    "feature_extractor_cqt_bins": 336,
    "deepnorm": False,
    "sample_rate": RATE,
}


def import_mert(checkout: Path) -> tuple[Any, Any]:
    """MERTConfig and MERTModel from the checkout, imported as the package MERT ships them as."""
    source = checkout / "scripts" / "mert_hf"
    files = ("configuration_MERT.py", "modeling_MERT.py")
    missing = [name for name in files if not (source / name).exists()]
    if missing:
        sys.exit(f"{source} lacks {missing}: --mert must be a checkout of yizhilll/MERT")
    package = Path(tempfile.mkdtemp(prefix="mert-hf-")) / "mert_hf"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    for name in files:
        shutil.copyfile(source / name, package / name)
    sys.path.insert(0, str(package.parent))
    configuration = importlib.import_module("mert_hf.configuration_MERT")
    modeling = importlib.import_module("mert_hf.modeling_MERT")
    return configuration.MERTConfig, modeling.MERTModel


@contextlib.contextmanager
def legacy_weight_norm() -> Iterator[None]:
    """Build with torch's old weight norm, as MERT-v1's published checkpoints were.

    Their positional convolution is stored as ``weight_g``/``weight_v``;
    transformers 4.38 picks the old ``nn.utils.weight_norm`` when torch has no
    parametrized one, so hiding that one while the model is built gives the
    published key names.
    """
    parametrizations = torch.nn.utils.parametrizations
    saved = parametrizations.weight_norm
    delattr(parametrizations, "weight_norm")
    try:
        yield
    finally:
        parametrizations.weight_norm = saved


def randomise_norms_and_biases(model: torch.nn.Module, seed: int) -> None:
    """Move every LayerNorm/GroupNorm scale off 1 and every bias off 0.

    A fresh init leaves them at 1 and 0, where a missing or misplaced
    LayerNorm could hide better; random values make every module count.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if name.endswith("bias"):
                parameter.copy_(0.2 * noise)
            elif "layer_norm.weight" in name or name.endswith("weight_g"):
                parameter.mul_(1.0 + 0.25 * noise)


def clip(seed: int) -> np.ndarray:
    """One second of a chord with a little noise, as 16-bit PCM (exact in any float arithmetic)."""
    t = np.arange(int(SECONDS * RATE)) / RATE
    signal = np.zeros_like(t)
    for frequency in (220.0, 277.18, 329.63):
        for harmonic in (1, 2, 3):
            signal += np.sin(2 * np.pi * frequency * harmonic * t) / harmonic
    signal += 0.02 * np.random.default_rng(seed).standard_normal(t.shape[0])
    return np.round(0.5 * 32767 * signal / np.max(np.abs(signal))).astype(np.int16)


def inputs_from_pcm(pcm: np.ndarray) -> dict[str, np.ndarray]:
    """The two clips the tests feed: the PCM at its level, and 40 dB quieter (the tests do the same arithmetic)."""
    loud = pcm.astype(np.float32) / np.float32(32768)
    return {"loud": loud, "quiet": loud * np.float32(QUIET_GAIN)}


def reference_vectors(model: Any, audio: np.ndarray, normalise: bool) -> tuple[np.ndarray, np.ndarray]:
    """What MERT's model card does: feature extractor, forward, hidden states, mean over frames."""
    from transformers import Wav2Vec2FeatureExtractor

    processor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=RATE, padding_value=0.0, do_normalize=normalise, return_attention_mask=True
    )
    inputs = processor(audio, sampling_rate=RATE, return_tensors="pt")
    with torch.no_grad():
        output = model(**inputs, output_hidden_states=True)
    hidden = torch.stack(output.hidden_states).squeeze(1)  # (layers + 1, frames, dim)
    if not torch.equal(hidden[-1], output.last_hidden_state[0]):
        sys.exit("on this transformers the last hidden state is not last_hidden_state: not MERT's reference stack")
    return hidden.double().mean(dim=1).numpy(), output.last_hidden_state[0].double().mean(dim=0).numpy()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_shape(name: str, spec: dict[str, Any], mert_config: Any, mert_model: Any, out: Path, pcm: np.ndarray) -> None:
    from transformers import Wav2Vec2FeatureExtractor

    directory = out / name
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    settings = {k: v for k, v in spec.items() if k != "seed"}
    config = mert_config(**TINY, **COMMON, **settings)
    # As on the hub: the config names MERT's code for AutoModel users.
    config.auto_map = {"AutoConfig": "configuration_MERT.MERTConfig", "AutoModel": "modeling_MERT.MERTModel"}
    config._name_or_path = f"mess/tiny-random-{name}"

    torch.manual_seed(spec["seed"])
    with legacy_weight_norm():
        model = mert_model(config)
    randomise_norms_and_biases(model, spec["seed"])
    model.eval()
    # pytorch_model.bin keeps the published weight_g/weight_v names ...
    model.save_pretrained(directory, safe_serialization=False)
    # ... model.safetensors is what MERT's code writes on today's torch
    # (parametrizations.weight.original0/1); the same weights, so both files
    # must give the vectors below.
    current = mert_model(config)
    current.load_state_dict(model.state_dict())
    current.eval()
    with tempfile.TemporaryDirectory() as tmp:
        current.save_pretrained(tmp, safe_serialization=True)
        shutil.copyfile(Path(tmp) / "model.safetensors", directory / "model.safetensors")
    # MERT-v1's published preprocessor: 24 kHz, do_normalize false.
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=RATE, padding_value=0.0, do_normalize=False, return_attention_mask=True
    ).save_pretrained(directory)

    expected: dict[str, np.ndarray] = {}
    for level, audio in inputs_from_pcm(pcm).items():
        for normalise in (False, True):
            key = f"{level}_{'normalised' if normalise else 'raw'}"
            expected[f"{key}_hidden"], expected[f"{key}_last"] = reference_vectors(model, audio, normalise)
    np.savez(directory / "expected.npz", **expected)

    # Each file, read back by MERT's own from_pretrained, must give the same vectors.
    for weights in ("pytorch_model.bin", "model.safetensors"):
        with tempfile.TemporaryDirectory() as tmp:
            for file in ("config.json", "preprocessor_config.json", weights):
                shutil.copyfile(directory / file, Path(tmp) / file)
            reloaded = mert_model.from_pretrained(tmp).eval()
            for level, audio in inputs_from_pcm(pcm).items():
                hidden, _ = reference_vectors(reloaded, audio, False)
                if not np.array_equal(hidden, expected[f"{level}_raw_hidden"]):
                    sys.exit(f"{name}/{weights} read back by MERT's code gives other vectors: not written right")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mert", type=Path, required=True, help="a checkout of yizhilll/MERT")
    parser.add_argument("--mert-commit", required=True, help="the commit the checkout holds (git rev-parse HEAD)")
    parser.add_argument("--out", type=Path, default=Path("tests/embedder/fixtures/mert"))
    args = parser.parse_args()

    import transformers

    if not transformers.__version__.startswith("4.38."):
        sys.exit(f"transformers {transformers.__version__}: run this with 4.38, the version MERT's code is run on")
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    mert_config, mert_model = import_mert(args.mert)
    commit = args.mert_commit

    args.out.mkdir(parents=True, exist_ok=True)
    pcm = clip(seed=16)
    np.save(args.out / "audio_pcm16.npy", pcm)
    for name, spec in SHAPES.items():
        write_shape(name, spec, mert_config, mert_model, args.out, pcm)

    files = sorted(p for p in args.out.rglob("*") if p.is_file() and p.name not in {"manifest.json", "README.md"})
    manifest = {
        "made_by": "tools/mert_reference/make_fixtures.py",
        "mert_repository": "yizhilll/MERT",
        "mert_commit": commit,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "audio": {
            "file": "audio_pcm16.npy",
            "rate": RATE,
            "loud": "pcm / 32768 as float32",
            "quiet": f"(pcm / 32768 as float32) * float32({QUIET_GAIN})",
        },
        "expected": {
            "<level>_<raw|normalised>_hidden": "(layers + 1, dim) float64: each hidden state averaged over frames",
            "<level>_<raw|normalised>_last": "(dim,) float64: last_hidden_state averaged over frames",
            "normalised": "Wav2Vec2FeatureExtractor(do_normalize=True); raw: do_normalize=False",
        },
        "shapes": {name: dict(spec) | TINY | COMMON for name, spec in SHAPES.items()},
        "sha256": {str(p.relative_to(args.out)): sha256(p) for p in files},
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    total = sum(p.stat().st_size for p in files)
    print(f"wrote {len(files)} files, {total / 1024:.0f} KiB, to {args.out}")


if __name__ == "__main__":
    main()
