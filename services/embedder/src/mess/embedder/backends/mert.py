"""MERT-v1 (95M or 330M) from a local model directory, run by transformers' HubertModel.

MERT-v1 checkpoints are published with their own ``MERTConfig``/``MERTModel``
(``trust_remote_code``). Without the CQT front end and without deepnorm, that
model *is* a HuBERT: the same modules under the same state-dict keys. So the
directory is loaded into ``HubertModel`` directly, no remote code runs, and
anything the real MERT would do differently is refused up front:

* ``feature_extractor_cqt: true`` adds a CQT branch whose features are
  concatenated before the projection: HubertModel has no such branch;
* ``deepnorm: true`` scales the residual connections: HubertModel does not.

``attention_relax`` is accepted: MERT uses it only inside its deepnorm layers,
and there it is softmax's shift invariance (a numerical guard for fp16), not a
different function.

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
_KNOWN_PREFIXES = ("mert_model.", "hubert.", "model.")
_WEIGHT_NORM_RENAMES = {
    "encoder.pos_conv_embed.conv.weight_g": "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
    "encoder.pos_conv_embed.conv.weight_v": "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
}


@dataclass(frozen=True)
class LayerSelection:
    """Which hidden states to average: indices into (embeddings, layer 1, ..., layer N)."""

    layers: tuple[int, ...]
    weights: tuple[float, ...]

    @classmethod
    def parse(cls, spec: str, weights: Sequence[float] | None, layer_count: int) -> "LayerSelection":
        """``all`` (layers 1..N), ``last``, ``7`` or ``4,5,6`` or ``4-8``; 0 is the CNN embedding output."""
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
    if raw.get("feature_extractor_cqt"):
        raise ModelLoadError(
            f"{config_path}: feature_extractor_cqt is true; this MERT variant adds a CQT front end that "
            "HubertModel does not have, so it is not supported (use MERT-v1-95M or MERT-v1-330M)"
        )
    if raw.get("deepnorm"):
        raise ModelLoadError(
            f"{config_path}: deepnorm is true; deepnorm rescales residual connections, which HubertModel "
            "does not do, so this checkpoint is not supported"
        )
    model_type = str(raw.get("model_type", ""))
    if model_type not in {"mert_model", "hubert"}:
        raise ModelLoadError(f"{config_path}: model_type {model_type!r} is neither a MERT nor a HuBERT model")
    known = set(HubertConfig().to_dict())
    # Everything else (auto_map, architectures, MERT's own switches checked
    # above, sample_rate) describes the checkpoint, not the HuBERT modules.
    hubert_fields = {k: v for k, v in raw.items() if k in known and k not in {"model_type", "architectures"}}
    try:
        config = HubertConfig(**hubert_fields)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{config_path}: not a valid HuBERT configuration: {exc}") from exc

    sample_rate = int(raw.get("sample_rate", MERT_SAMPLE_RATE))
    normalise = True
    preprocessor = directory / PREPROCESSOR_FILE
    if preprocessor.exists():
        pre = _read_json(preprocessor)
        pre_rate = int(pre.get("sampling_rate", sample_rate))
        if "sample_rate" in raw and pre_rate != sample_rate:
            raise ModelLoadError(
                f"{preprocessor} says {pre_rate} Hz but {config_path} says {sample_rate} Hz; fix one of them"
            )
        sample_rate = pre_rate
        normalise = bool(pre.get("do_normalize", True))
    else:
        log.warning(
            "%s is missing; assuming MERT's %d Hz with zero-mean unit-variance input", preprocessor, sample_rate
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
    """The model's revision: the sha256 of its weight file (``sha256sum`` gives the same), or
    for a sharded checkpoint the sha256 of the ``name:sha256`` lines of its shards in name order."""
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
        norm = "zero-mean unit-variance input" if checkpoint.normalise else "raw input"
        self.pooling = f"layers={self.selection.describe()}/frames=mean/{norm}"
        log.info(
            "loaded %s (revision %s) on %s as %s: %d layers, dim %d, pooling %s",
            self.name,
            self.revision,
            self.device,
            str(self.dtype).removeprefix("torch."),
            config.num_hidden_layers,
            self.dim,
            self.pooling,
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
            hidden = output.hidden_states
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
