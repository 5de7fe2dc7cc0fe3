"""The mert backend on a tiny, randomly initialised MERT-shaped checkpoint, loaded the real way."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mess.embedder.backends import build_backend
from mess.embedder.backends.base import ModelLoadError
from mess.embedder.backends.mert import MertBackend
from mess.embedder.config import Settings

from .samples import TINY_MERT_CONFIG, mert_style_state_dict, random_mert, tone, write_mert_dir

RATE = 24000


def _reference(model: torch.nn.Module, audio: np.ndarray, layers: list[int], weights: list[float]) -> np.ndarray:
    """What MERT's model card does: normalise, forward, take hidden states, average frames."""
    values = audio.astype(np.float64)
    values = (values - values.mean()) / np.sqrt(values.var() + 1e-7)
    with torch.inference_mode():
        hidden = model(torch.from_numpy(values.astype(np.float32))[None], output_hidden_states=True).hidden_states
    pooled = sum(hidden[layer][0].double() * w for layer, w in zip(layers, weights, strict=True))
    assert isinstance(pooled, torch.Tensor)
    return pooled.mean(dim=0).numpy()


def test_tiny_mert_loads_through_the_real_path_and_matches_hubert(tmp_path: Path) -> None:
    model = random_mert(TINY_MERT_CONFIG, seed=3)
    directory = write_mert_dir(tmp_path / "m", state=mert_style_state_dict(model))
    backend = MertBackend(directory, device="cpu")

    assert backend.name == "m-a-p/MERT-v1-95M"
    assert backend.dim == 32
    assert backend.sample_rate == RATE
    weights_hash = hashlib.sha256((directory / "pytorch_model.bin").read_bytes()).hexdigest()
    assert weights_hash.startswith(backend.revision)
    assert "layers=mean(1,2)" in backend.pooling

    audio = tone(5.0, RATE)
    vector = backend.embed_chunks(audio[None], np.array([audio.shape[0]]))[0]
    expected = _reference(model, audio, [1, 2], [0.5, 0.5])
    # Loaded weights, not a fresh random init: the output is the reference model's.
    assert vector == pytest.approx(expected, abs=1e-5)


def test_safetensors_with_new_style_keys_and_a_prefix_loads_too(tmp_path: Path) -> None:
    model = random_mert(TINY_MERT_CONFIG, seed=4)
    state = {f"hubert.{k}": v for k, v in model.state_dict().items()}
    directory = write_mert_dir(tmp_path / "m", state=state, weights="model.safetensors")
    backend = MertBackend(directory, device="cpu", layers="last")
    audio = tone(2.0, RATE, seed=1)
    vector = backend.embed_chunks(audio[None], np.array([audio.shape[0]]))[0]
    assert vector == pytest.approx(_reference(model, audio, [2], [1.0]), abs=1e-5)


def test_weighted_layer_choice(tmp_path: Path) -> None:
    model = random_mert(TINY_MERT_CONFIG, seed=5)
    directory = write_mert_dir(tmp_path / "m", state=mert_style_state_dict(model))
    backend = MertBackend(directory, device="cpu", layers="0-2", layer_weights=[1.0, 1.0, 2.0])
    assert backend.pooling.startswith("layers=weighted(0:0.25,1:0.25,2:0.5)")
    audio = tone(3.0, RATE, seed=2)
    vector = backend.embed_chunks(audio[None], np.array([audio.shape[0]]))[0]
    assert vector == pytest.approx(_reference(model, audio, [0, 1, 2], [0.25, 0.25, 0.5]), abs=1e-5)


def test_short_final_chunk_runs_at_its_true_length(tiny_mert_dir: Path) -> None:
    backend = MertBackend(tiny_mert_dir, device="cpu")
    audio = tone(1.3, RATE, seed=7)
    padded = np.zeros((1, 5 * RATE), dtype=np.float32)
    padded[0, : audio.shape[0]] = audio
    from_padded = backend.embed_chunks(padded, np.array([audio.shape[0]]))[0]
    alone = backend.embed_chunks(audio[None], np.array([audio.shape[0]]))[0]
    assert np.array_equal(from_padded, alone)


def test_same_audio_gives_the_same_vector_to_the_last_bit_whatever_the_batch(tiny_mert_dir: Path) -> None:
    backend = MertBackend(tiny_mert_dir, device="cpu")
    chunks = np.stack([tone(5.0, RATE, (f, f * 1.5), seed=i) for i, f in enumerate((110.0, 196.0, 261.6, 330.0))])
    lengths = np.array([5 * RATE, 5 * RATE, 5 * RATE, 3 * RATE])
    together = backend.embed_chunks(chunks, lengths)
    again = backend.embed_chunks(chunks, lengths)
    reordered = backend.embed_chunks(chunks[[3, 1, 0]], lengths[[3, 1, 0]])
    alone = backend.embed_chunks(chunks[1:2], lengths[1:2])
    assert np.array_equal(together, again)
    assert np.array_equal(together[0], reordered[2])
    assert np.array_equal(together[3], reordered[0])
    assert np.array_equal(together[1], alone[0])
    # A fresh load of the same directory gives the same vectors too.
    assert np.array_equal(MertBackend(tiny_mert_dir, device="cpu").embed_chunks(chunks, lengths), together)


def test_factory_builds_mert_from_settings(tiny_mert_dir: Path) -> None:
    backend = build_backend(Settings(backend="mert", model_dir=tiny_mert_dir, device="cpu", model_name="mert-tiny"))
    assert isinstance(backend, MertBackend)
    assert backend.name == "mert-tiny"


# --- refused checkpoints --------------------------------------------------------


def _config_with(**changes: object) -> dict[str, object]:
    return {**TINY_MERT_CONFIG, **changes}


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path) -> None:
    state = mert_style_state_dict(random_mert(TINY_MERT_CONFIG))
    del state["encoder.layers.1.feed_forward.output_dense.weight"]
    state["encoder.layers.7.attention.q_proj.weight"] = torch.zeros(32, 32)
    directory = write_mert_dir(tmp_path / "m", state=state)
    with pytest.raises(ModelLoadError) as caught:
        MertBackend(directory, device="cpu")
    message = str(caught.value)
    assert "missing keys (1): encoder.layers.1.feed_forward.output_dense.weight" in message
    assert "unexpected keys (1): encoder.layers.7.attention.q_proj.weight" in message


def test_checkpoint_of_another_size_is_refused(tmp_path: Path) -> None:
    bigger = _config_with(hidden_size=48, intermediate_size=96, conv_dim=[48] * 7)
    state = mert_style_state_dict(random_mert(bigger))
    directory = write_mert_dir(tmp_path / "m", config=TINY_MERT_CONFIG, state=state)
    with pytest.raises(ModelLoadError, match=r"shape mismatches \(\d+\): .*\(48, 48\) != \(32, 32\)"):
        MertBackend(directory, device="cpu")


def test_checkpoint_with_fewer_layers_than_its_config_is_refused(tmp_path: Path) -> None:
    state = mert_style_state_dict(random_mert(_config_with(num_hidden_layers=1)))
    directory = write_mert_dir(tmp_path / "m", config=TINY_MERT_CONFIG, state=state)
    with pytest.raises(ModelLoadError, match=r"missing keys \(\d+\): encoder\.layers\.1\."):
        MertBackend(directory, device="cpu")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"feature_extractor_cqt": True}, "feature_extractor_cqt is true"),
        ({"deepnorm": True}, "deepnorm is true"),
        ({"model_type": "wav2vec2"}, "neither a MERT nor a HuBERT model"),
    ],
)
def test_unsupported_variants_are_refused_before_loading(
    tmp_path: Path, changes: dict[str, object], reason: str
) -> None:
    directory = write_mert_dir(tmp_path / "m", config=_config_with(**changes))
    with pytest.raises(ModelLoadError, match=reason):
        MertBackend(directory, device="cpu")


def test_attention_relax_is_accepted_because_it_changes_nothing_without_deepnorm(tmp_path: Path) -> None:
    directory = write_mert_dir(tmp_path / "m", config=_config_with(attention_relax=32.0))
    assert MertBackend(directory, device="cpu").dim == 32


def test_directory_without_weights_is_refused(tmp_path: Path) -> None:
    directory = write_mert_dir(tmp_path / "m")
    (directory / "pytorch_model.bin").unlink()
    with pytest.raises(ModelLoadError, match="no weights in"):
        MertBackend(directory, device="cpu")


def test_rate_disagreement_between_config_and_preprocessor_is_refused(tmp_path: Path) -> None:
    directory = write_mert_dir(tmp_path / "m")
    preprocessor = json.loads((directory / "preprocessor_config.json").read_text())
    (directory / "preprocessor_config.json").write_text(json.dumps({**preprocessor, "sampling_rate": 16000}))
    with pytest.raises(ModelLoadError, match="16000 Hz"):
        MertBackend(directory, device="cpu")


@pytest.mark.parametrize(("layers", "weights"), [("13", None), ("1,2", [1.0]), ("", None)])
def test_impossible_layer_choices_are_refused(tiny_mert_dir: Path, layers: str, weights: list[float] | None) -> None:
    with pytest.raises(ModelLoadError):
        MertBackend(tiny_mert_dir, device="cpu", layers=layers, layer_weights=weights)


def test_half_precision_on_cpu_is_refused(tiny_mert_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="float32 on CPU"):
        MertBackend(tiny_mert_dir, device="cpu", dtype="bfloat16")
