"""MERT-v1 (95M or 330M) from a local model directory, run by transformers' HubertModel.

MERT-v1 checkpoints are published with their own ``MERTConfig``/``MERTModel``
(``trust_remote_code``; ``scripts/mert_hf`` in ``yizhilll/MERT``). Without the
CQT front end and without deepnorm, that model *is* a HuBERT: the same modules
under the same state-dict keys, a post-LayerNorm encoder for the 95M model and
a pre-LayerNorm one (``do_stable_layer_norm: true``) for the 330M model. So the
directory is loaded into ``HubertModel`` directly, no remote code runs, and
anything the real MERT would do differently is refused up front:

* ``feature_extractor_cqt: true`` adds a CQT branch whose features are
  concatenated before the projection: HubertModel has no such branch;
* ``deepnorm: true`` scales the residual connections: HubertModel does not;
* any ``config.json`` key not on the allow-list below: a key this loader does
  not know could change what MERT computes, and would otherwise be dropped.

``attention_relax`` is accepted: MERT uses it only inside its deepnorm layers,
so with deepnorm off (the only case accepted) it changes nothing.

One difference between transformers versions is undone here: on transformers
4.x (which MERT's code runs on) the last entry of ``hidden_states`` is the
encoder's output after its final LayerNorm; on 5.x it is the last layer's
output *before* it, which for the pre-LayerNorm 330M model is another vector.
The last layer is therefore always taken from ``last_hidden_state``.

``tests/embedder/fixtures/mert`` holds tiny checkpoints of both shapes saved
by MERT's own code, with the vectors MERT's code computes from them
(``tools/mert_reference/make_fixtures.py``); the tests hold this loader to
them, layer by layer, for both weight formats and both input conventions.

The state dict must match the model exactly (``strict=True``): a missing or
unexpected key, or a shape that differs, stops the service with the list.
Only two renames are applied, both well known: an optional top-level prefix
(``mert_model.``/``hubert.``), and the old weight-norm names ``weight_g`` /
``weight_v`` of the positional convolution, which newer torch calls
``parametrizations.weight.original0/1``.
"""

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import transformers
from safetensors.torch import load_file as load_safetensors
from transformers import HubertConfig, HubertModel

from mess.embedder.backends.base import ChunkBatch, ChunkLengths, ChunkVectors, EmbeddingBackend, ModelLoadError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"

MERT_SAMPLE_RATE = 24000
# Wav2Vec2FeatureExtractor's zero-mean unit-variance normalisation epsilon.
NORMALISE_EPSILON = 1e-7
# MERTConfig's keys (scripts/mert_hf/configuration_MERT.py) that build the
# modules or change what they compute, with MERTConfig's defaults. All of them
# go to HubertConfig explicitly, so where HubertConfig's own default differs
# (today or in a later transformers), MERT's still applies.
MERT_COMPUTE_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "feat_proj_layer_norm": True,
    "layer_norm_eps": 1e-5,
    "feat_extract_norm": "group",
    "feat_extract_activation": "gelu",
    "conv_dim": [512] * 7,
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_bias": False,
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
    "do_stable_layer_norm": False,
    # These two only decide whether the checkpoint holds masked_spec_embed,
    # a training-time parameter; the strict load then expects it or not.
    "mask_time_prob": 0.05,
    "mask_feature_prob": 0.0,
}
# HubertConfig settings MERT's code has no notion of, pinned to what MERT
# computes: its positional convolution is weight-normed, never batch-normed.
_HUBERT_ONLY_SETTINGS: dict[str, Any] = {"conv_pos_batch_norm": False}
# MERT switches HubertModel cannot follow: accepted only when off.
_REFUSED_WHEN_ON = {
    "feature_extractor_cqt": (
        "this MERT variant adds a CQT front end that HubertModel does not have, so it is not supported "
        "(use MERT-v1-95M or MERT-v1-330M)"
    ),
    "deepnorm": "deepnorm rescales residual connections, which HubertModel does not do, so it is not supported",
}
# Keys of MERT-v1's published configs that cannot change an inference forward.
_INERT_KEYS = frozenset(
    {
        # dropout and LayerDrop: off in inference mode
        "hidden_dropout",
        "hidden_dropout_prob",
        "activation_dropout",
        "attention_dropout",
        "feat_proj_dropout",
        "feat_extract_dropout",
        "final_dropout",
        "layerdrop",
        # SpecAugment masking: training only (fairseq's mask_channel_* too)
        "apply_spec_augment",
        "mask_time_length",
        "mask_time_min_masks",
        "mask_time_min_space",
        "mask_time_other",
        "mask_time_selection",
        "mask_feature_length",
        "mask_feature_min_masks",
        "mask_channel_length",
        "mask_channel_min_space",
        "mask_channel_other",
        "mask_channel_prob",
        "mask_channel_selection",
        # heads, losses and tokens of models built on MERTModel, not in it
        "vocab_size",
        "tokenizer_class",
        "ctc_loss_reduction",
        "ctc_zero_infinity",
        "use_weighted_layer_sum",
        "classifier_proj_size",
        "pad_token_id",
        "bos_token_id",
        "eos_token_id",
        # training and initialisation
        "initializer_range",
        "gradient_checkpointing",
        # read only by deepnorm layers and the CQT branch, both refused when on
        "attention_relax",
        "feature_extractor_cqt_bins",
        # MERTConfig recomputes it from conv_dim
        "num_feat_extract_layers",
        # describe the files: name, code, versions, stored dtype, rate (checked below)
        "_name_or_path",
        "architectures",
        "auto_map",
        "model_type",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "sample_rate",
    }
)
_KNOWN_CONFIG_KEYS = frozenset(MERT_COMPUTE_DEFAULTS) | frozenset(_REFUSED_WHEN_ON) | _INERT_KEYS
_KNOWN_PREFIXES = ("mert_model.", "hubert.", "model.")
_WEIGHT_NORM_RENAMES = {
    "encoder.pos_conv_embed.conv.weight_g": "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
    "encoder.pos_conv_embed.conv.weight_v": "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
}


@dataclass(frozen=True)
class LayerSelection:
    """Which hidden states to average: indices into (transformer input, layer 1, ..., layer N)."""

    layers: tuple[int, ...]
    weights: tuple[float, ...]

    @classmethod
    def parse(cls, spec: str, weights: Sequence[float] | None, layer_count: int) -> "LayerSelection":
        """``all`` (layers 1..N), ``last``, ``7`` or ``4,5,6`` or ``4-8``.

        0 is the transformer's input: the projected CNN features plus the
        positional convolution (then the encoder's input LayerNorm in the
        post-LayerNorm 95M shape; the 330M shape normalises inside each layer).
        """
        spec = spec.strip().lower()
        if spec == "all":
            layers = tuple(range(1, layer_count + 1))
        elif spec == "last":
            layers = (layer_count,)
        else:
            picked: list[int] = []
            for part in spec.split(","):
                part = part.strip()
                if "-" in part:
                    low, high = (int(x) for x in part.split("-", 1))
                    picked.extend(range(low, high + 1))
                elif part:
                    picked.append(int(part))
            layers = tuple(picked)
        if not layers:
            raise ModelLoadError(f"layer selection {spec!r} selects no layer")
        outside = [layer for layer in layers if not 0 <= layer <= layer_count]
        if outside:
            raise ModelLoadError(f"layers {outside} do not exist: the model has layers 0..{layer_count}")
        if weights is None:
            chosen = tuple(1.0 / len(layers) for _ in layers)
        else:
            if len(weights) != len(layers):
                raise ModelLoadError(f"{len(weights)} layer weights given for {len(layers)} layers {list(layers)}")
            if any(w < 0 for w in weights) or sum(weights) <= 0:
                raise ModelLoadError("layer weights must be >= 0 and not all 0")
            total = float(sum(weights))
            chosen = tuple(float(w) / total for w in weights)
        return cls(layers=layers, weights=chosen)

    def describe(self) -> str:
        if len(set(self.weights)) == 1:
            return "mean(" + ",".join(str(layer) for layer in self.layers) + ")"
        pairs = ",".join(f"{layer}:{w:.4g}" for layer, w in zip(self.layers, self.weights, strict=True))
        return f"weighted({pairs})"


@dataclass(frozen=True)
class MertCheckpoint:
    """What is on disk, validated, before any tensor is built."""

    directory: Path
    config: HubertConfig
    raw_config: dict[str, Any]
    sample_rate: int
    normalise: bool
    weight_files: tuple[Path, ...]
    name: str


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(value, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    return value


def _weight_files(directory: Path) -> tuple[Path, ...]:
    for index_name in (SAFETENSORS_INDEX, TORCH_INDEX):
        index = directory / index_name
        if index.exists():
            weight_map = _read_json(index).get("weight_map", {})
            shards = sorted({str(name) for name in weight_map.values()})
            if not shards:
                raise ModelLoadError(f"{index} lists no shard files")
            missing = [name for name in shards if not (directory / name).exists()]
            if missing:
                raise ModelLoadError(f"{index} names shard files that are missing: {missing}")
            return tuple(directory / name for name in shards)
    for single in (SAFETENSORS_FILE, TORCH_FILE):
        if (directory / single).exists():
            return (directory / single,)
    raise ModelLoadError(
        f"no weights in {directory}: expected {SAFETENSORS_FILE} or {TORCH_FILE} (or a sharded *.index.json)"
    )


def inspect_checkpoint(directory: Path, name: str | None = None) -> MertCheckpoint:
    """Read and check config, preprocessor and weight file names; refuse what HubertModel cannot run."""
    if not directory.is_dir():
        raise ModelLoadError(
            f"model directory {directory} does not exist (the README says how to put MERT weights in place)"
        )
    config_path = directory / CONFIG_FILE
    if not config_path.exists():
        raise ModelLoadError(f"{config_path} is missing")
    raw = _read_json(config_path)
    unknown = sorted(set(raw) - _KNOWN_CONFIG_KEYS)
    if unknown:
        raise ModelLoadError(
            f"{config_path}: unknown config keys {unknown}; MERT's code might compute differently with them and "
            "this loader would ignore them, so it refuses. A key known not to change an inference forward can "
            "be added to the allow-list in mess/embedder/backends/mert.py"
        )
    for key, reason in _REFUSED_WHEN_ON.items():
        if raw.get(key):
            raise ModelLoadError(f"{config_path}: {key} is true; {reason}")
    model_type = str(raw.get("model_type", ""))
    if model_type not in {"mert_model", "hubert"}:
        raise ModelLoadError(f"{config_path}: model_type {model_type!r} is neither a MERT nor a HuBERT model")
    fields = {key: raw.get(key, default) for key, default in MERT_COMPUTE_DEFAULTS.items()}
    try:
        config = HubertConfig(**fields, **_HUBERT_ONLY_SETTINGS)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{config_path}: not a valid HuBERT configuration: {exc}") from exc

    sample_rate = int(raw.get("sample_rate", MERT_SAMPLE_RATE))
    # MERT-v1's published preprocessor_config.json says do_normalize: false,
    # and so do its pretraining configs: raw input is MERT's default.
    normalise = False
    preprocessor = directory / PREPROCESSOR_FILE
    if preprocessor.exists():
        pre = _read_json(preprocessor)
        pre_rate = int(pre.get("sampling_rate", sample_rate))
        if "sample_rate" in raw and pre_rate != sample_rate:
            raise ModelLoadError(
                f"{preprocessor} says {pre_rate} Hz but {config_path} says {sample_rate} Hz; fix one of them"
            )
        sample_rate = pre_rate
        # A file without the key gets Wav2Vec2FeatureExtractor's own default.
        normalise = bool(pre.get("do_normalize", True))
    else:
        log.warning(
            "%s is missing; assuming MERT-v1's %d Hz and raw input (its published do_normalize: false)",
            preprocessor,
            sample_rate,
        )
    if sample_rate <= 0:
        raise ModelLoadError(f"invalid sample rate {sample_rate}")
    label = name or str(raw.get("_name_or_path") or directory.name)
    return MertCheckpoint(
        directory=directory,
        config=config,
        raw_config=raw,
        sample_rate=sample_rate,
        normalise=normalise,
        weight_files=_weight_files(directory),
        name=label,
    )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(8 * 1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(files: Sequence[Path]) -> str:
    """The model's revision: the sha256 of the weight file loaded (``sha256sum`` gives the same;
    ``model.safetensors`` when a directory holds both formats), or for a sharded checkpoint the
    sha256 of the ``name:sha256`` lines of its shards in name order."""
    if len(files) == 1:
        return _file_sha256(files[0])
    lines = "".join(f"{path.name}:{_file_sha256(path)}\n" for path in sorted(files, key=lambda p: p.name))
    return hashlib.sha256(lines.encode()).hexdigest()


def _load_state_dict(files: Sequence[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            if path.suffix == ".safetensors":
                part = load_safetensors(str(path), device="cpu")
            else:
                loaded = torch.load(str(path), map_location="cpu", weights_only=True)
                if not isinstance(loaded, Mapping):
                    raise ModelLoadError(f"{path} does not hold a state dict")
                part = dict(loaded)
        except ModelLoadError:
            raise
        except Exception as exc:  # any unreadable weight file is a load failure
            raise ModelLoadError(f"cannot read weights {path}: {exc}") from exc
        state.update(part)
    return state


def normalise_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apply the two known renames (prefix, old weight-norm names); nothing else."""
    keys = list(state)
    for prefix in _KNOWN_PREFIXES:
        if keys and all(k.startswith(prefix) for k in keys):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
            break
    return {_WEIGHT_NORM_RENAMES.get(k, k): v for k, v in state.items()}


def _describe_keys(keys: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... and {len(keys) - limit} more" if len(keys) > limit else "")


def strict_load(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists what did not match."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing keys ({len(missing)}): {_describe_keys(missing)}")
        if unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): {_describe_keys(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatches ({len(mismatched)}): {_describe_keys(mismatched)}")
        raise ModelLoadError(f"checkpoint {source} does not match its config.json: " + "; ".join(problems))
    model.load_state_dict(dict(state), strict=True)


def transformers_major() -> int:
    return int(transformers.__version__.split(".", 1)[0])


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {requested!r} asked for, but torch sees no CUDA device")
    return device


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if requested not in choices:
        raise ModelLoadError(f"dtype {requested!r} is not one of auto, {', '.join(choices)}")
    dtype = choices[requested]
    if device.type == "cpu" and dtype != torch.float32:
        raise ModelLoadError(f"{requested} on CPU is slow and not bit-reproducible here; use float32 on CPU")
    return dtype


class MertBackend(EmbeddingBackend):
    """MERT in inference mode; pools the chosen layers, then valid frames, per chunk."""

    default_chunk_seconds = 5.0

    def __init__(
        self,
        directory: Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        layers: str = "all",
        layer_weights: Sequence[float] | None = None,
        name: str | None = None,
    ) -> None:
        checkpoint = inspect_checkpoint(directory, name)
        self.checkpoint = checkpoint
        self.name = checkpoint.name
        self.sample_rate = checkpoint.sample_rate
        self.torch_device = resolve_device(device)
        self.device = str(self.torch_device)
        self.dtype = resolve_dtype(dtype, self.torch_device)
        config = checkpoint.config
        self.selection = LayerSelection.parse(layers, layer_weights, int(config.num_hidden_layers))
        self.dim = int(config.hidden_size)
        # One output frame needs the conv stack's whole receptive field.
        receptive = 1
        for kernel, stride in reversed(list(zip(config.conv_kernel, config.conv_stride, strict=True))):
            receptive = (receptive - 1) * stride + kernel
        self.min_chunk_samples = int(receptive)

        state = normalise_state_dict(_load_state_dict(checkpoint.weight_files))
        digest = weights_sha256(checkpoint.weight_files)
        self.revision = digest[:16]
        # Random init is skipped: every parameter is overwritten by the strict load.
        with torch.device("meta"):
            model = HubertModel(config)
        model = model.to_empty(device="cpu")
        strict_load(model, state, str(directory))
        del state
        model.train(False)  # inference: no dropout, no SpecAugment masking
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self.model: torch.nn.Module = torch.nn.Module.to(model, device=self.torch_device, dtype=self.dtype)
        self._check_hidden_state_count(int(config.num_hidden_layers))
        norm = "zero-mean unit-variance input" if checkpoint.normalise else "raw input"
        dtype_name = str(self.dtype).removeprefix("torch.")
        # The numeric type and transformers' major version are part of the
        # identity: bf16 and fp32 vectors of one checkpoint differ, and a new
        # transformers major has changed what HubertModel returns before, so
        # neither kind of vector may share an index with the other.
        self.pooling = (
            f"layers={self.selection.describe()}/frames=mean/{norm}/{dtype_name}/transformers{transformers_major()}"
        )
        log.info(
            "loaded %s (revision %s = sha256 of %s) on %s as %s: %d layers, dim %d, pooling %s",
            self.name,
            self.revision,
            ", ".join(path.name for path in checkpoint.weight_files),
            self.device,
            dtype_name,
            config.num_hidden_layers,
            self.dim,
            self.pooling,
        )

    def _check_hidden_state_count(self, layer_count: int) -> None:
        """One forward of the shortest input: the model must return the input and every layer.

        Layer indices are positions in ``hidden_states``; should a transformers
        release count them differently, this stops the start-up instead of
        pooling the wrong layers.
        """
        with torch.inference_mode():
            probe = torch.zeros((1, self.min_chunk_samples), device=self.torch_device, dtype=self.dtype)
            count = len(self.model(probe, output_hidden_states=True, return_dict=True).hidden_states)
        if count != layer_count + 1:
            raise ModelLoadError(
                f"transformers {transformers.__version__} returns {count} hidden states for {layer_count} layers, "
                f"not {layer_count + 1}; this loader does not support that version"
            )

    def _normalised(self, audio: npt.NDArray[np.float32]) -> torch.Tensor:
        """Wav2Vec2FeatureExtractor's per-example zero-mean unit-variance input.

        Row by row in float64 on purpose: a reduction over a (batch, samples)
        tensor splits its sums differently for different batch sizes, and the
        last bit of a chunk's vector would then depend on its batch neighbours.
        """
        rows = np.empty(audio.shape, dtype=np.float32)
        for row in range(audio.shape[0]):
            values = audio[row].astype(np.float64)
            if self.checkpoint.normalise:
                values = (values - values.mean()) / np.sqrt(values.var() + NORMALISE_EPSILON)
            rows[row] = values
        return torch.from_numpy(rows)

    def _forward(self, audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """(batch, samples) unpadded audio -> (batch, dim) pooled over layers and frames."""
        with torch.inference_mode():
            inputs = self._normalised(audio).to(self.torch_device, dtype=self.dtype, non_blocking=True)
            output = self.model(inputs, output_hidden_states=True, return_dict=True)
            # The last layer comes from last_hidden_state: transformers 5.x
            # records it before the pre-LayerNorm encoder's final LayerNorm
            # (MERT-v1-330M), MERT's code on 4.x after it. The two agree for
            # the 95M shape, whose last layer ends in its own LayerNorm.
            hidden = (*output.hidden_states[:-1], output.last_hidden_state)
            pooled = hidden[self.selection.layers[0]].float() * self.selection.weights[0]
            for layer, weight in zip(self.selection.layers[1:], self.selection.weights[1:], strict=True):
                pooled = pooled + hidden[layer].float() * weight
            # Frame means row by row, for the same reason as the normalisation.
            means = torch.stack([pooled[row].mean(dim=0) for row in range(pooled.shape[0])])
            result: npt.NDArray[np.float32] = means.cpu().numpy().astype(np.float32)
            return result

    def embed_chunks(self, chunks: ChunkBatch, lengths: ChunkLengths) -> ChunkVectors:
        # Full chunks run as one batch with no padding and no attention mask;
        # a short final chunk runs alone at its true length. So no chunk ever
        # sees padding (which would shift the first conv layer's group norm),
        # and a chunk's vector does not depend on which tracks share its batch.
        out = np.zeros((chunks.shape[0], self.dim), dtype=np.float32)
        full = np.flatnonzero(lengths >= chunks.shape[1])
        if full.size:
            out[full] = self._forward(chunks[full])
        for row in np.flatnonzero(lengths < chunks.shape[1]):
            out[row] = self._forward(chunks[row : row + 1, : int(lengths[row])])[0]
        return out

    def close(self) -> None:
        del self.model
        if self.torch_device.type == "cuda":
            torch.cuda.empty_cache()
