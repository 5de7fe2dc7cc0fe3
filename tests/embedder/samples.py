"""Audio and checkpoints the embedder tests build themselves: no downloads."""

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile as sf
import torch
from transformers import HubertConfig, HubertModel

# A MERT-v1 config.json as published (MERTConfig, trust_remote_code), shrunk:
# 2 layers, hidden 32. The keys that only MERT has are kept on purpose.
TINY_MERT_CONFIG: dict[str, Any] = {
    "_name_or_path": "m-a-p/MERT-v1-95M",
    "architectures": ["MERTModel"],
    "auto_map": {"AutoConfig": "configuration_MERT.MERTConfig", "AutoModel": "modeling_MERT.MERTModel"},
    "model_type": "mert_model",
    "attention_relax": -1.0,
    "deepnorm": False,
    "feature_extractor_cqt": False,
    "feature_extractor_cqt_bins": 336,
    "sample_rate": 24000,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": [32, 32, 32, 32, 32, 32, 32],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_bias": False,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
    "feat_extract_norm": "group",
    "feat_extract_activation": "gelu",
    "feat_proj_layer_norm": True,
    "do_stable_layer_norm": False,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "mask_time_prob": 0.05,
    "mask_feature_prob": 0.0,
    "torch_dtype": "float32",
    "transformers_version": "4.25.1",
}

MERT_PREPROCESSOR: dict[str, Any] = {
    "do_normalize": True,
    "feature_extractor_type": "Wav2Vec2FeatureExtractor",
    "feature_size": 1,
    "padding_side": "right",
    "padding_value": 0,
    "return_attention_mask": True,
    "sampling_rate": 24000,
}


def hubert_config(config: dict[str, Any]) -> HubertConfig:
    known = set(HubertConfig().to_dict())
    return HubertConfig(**{k: v for k, v in config.items() if k in known and k not in {"model_type", "architectures"}})


def random_mert(config: dict[str, Any], seed: int = 0) -> HubertModel:
    torch.manual_seed(seed)
    return HubertModel(hubert_config(config)).train(False)


def mert_style_state_dict(model: HubertModel) -> dict[str, torch.Tensor]:
    """The keys as MERT's published checkpoints have them: old weight-norm names."""
    renamed = {}
    for key, value in model.state_dict().items():
        key = key.replace("parametrizations.weight.original0", "weight_g")
        key = key.replace("parametrizations.weight.original1", "weight_v")
        renamed[key] = value.clone()
    return renamed


def write_mert_dir(
    directory: Path,
    config: dict[str, Any] | None = None,
    state: dict[str, torch.Tensor] | None = None,
    weights: str = "pytorch_model.bin",
    seed: int = 0,
) -> Path:
    """A model directory with MERT's file names; weights random unless given."""
    config = dict(TINY_MERT_CONFIG if config is None else config)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (directory / "preprocessor_config.json").write_text(json.dumps(MERT_PREPROCESSOR), encoding="utf-8")
    if state is None:
        state = mert_style_state_dict(random_mert(config, seed))
    if weights.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(directory / weights))
    else:
        torch.save(state, directory / weights)
    return directory


def tone(
    seconds: float, rate: int, frequencies: tuple[float, ...] = (220.0, 330.0), amplitude: float = 0.4, seed: int = 0
) -> npt.NDArray[np.float32]:
    """A chord of harmonic tones with a little noise, so every model sees real content."""
    t = np.arange(int(seconds * rate)) / rate
    signal = np.zeros_like(t)
    for f in frequencies:
        for harmonic in (1, 2, 3):
            signal += np.sin(2 * np.pi * f * harmonic * t) / harmonic
    signal += 0.01 * np.random.default_rng(seed).standard_normal(t.shape[0])
    return (amplitude * signal / np.max(np.abs(signal))).astype(np.float32)


def audio_file(samples: npt.NDArray[np.float32], rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()
