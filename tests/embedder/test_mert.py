"""The mert backend, held to MERT's own code.

``fixtures/mert`` holds tiny random checkpoints of MERT-v1-95M's shape and of
MERT-v1-330M's (pre-LayerNorm), each saved by MERT's own modelling code as
``pytorch_model.bin`` (the published ``weight_g``/``weight_v`` names) and as
``model.safetensors``, with the vectors MERT's code computes from them on a
loud and a quiet clip, normalised and raw: every hidden state averaged over
frames (``tools/mert_reference/make_fixtures.py`` made them; its manifest says
with which MERT commit and transformers). The service's loader must give the
same vectors; nothing here compares it with the class it runs.
"""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from mess.embedder.backends import build_backend
from mess.embedder.backends.base import ModelLoadError
from mess.embedder.backends.mert import MertBackend
from mess.embedder.config import Settings

from .samples import TINY_MERT_CONFIG, mert_style_state_dict, random_mert, tone, write_mert_dir

RATE = 24000
FIXTURES = Path(__file__).parent / "fixtures" / "mert"
SHAPES = ("mert-95m", "mert-330m")
WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors")
LEVELS = ("loud", "quiet")
# Observed differences are ~2e-7 (float32 sums in another order, SDPA instead
# of eager attention); the 330M defect this guards against was ~1.
ATOL = 2e-6
RTOL = 1e-5


def _clips() -> dict[str, npt.NDArray[np.float32]]:
    """The clips the fixtures were computed on, by the same arithmetic as the script."""
    loud = np.load(FIXTURES / "audio_pcm16.npy").astype(np.float32) / np.float32(32768)
    return {"loud": loud, "quiet": loud * np.float32(0.01)}


def _expected(shape: str) -> dict[str, npt.NDArray[np.float64]]:
    with np.load(FIXTURES / shape / "expected.npz") as stored:
        return {key: stored[key] for key in stored.files}


def _checkpoint(
    tmp_path: Path, shape: str, weights: str = "model.safetensors", do_normalize: bool | None = False
) -> Path:
    """A model directory from the fixture: one weight file; the published preprocessor file
    (``do_normalize: false``), one that normalises, one without the key (``None``), or none."""
    directory = tmp_path / shape
    directory.mkdir()
    shutil.copyfile(FIXTURES / shape / "config.json", directory / "config.json")
    shutil.copyfile(FIXTURES / shape / weights, directory / weights)
    preprocessor = json.loads((FIXTURES / shape / "preprocessor_config.json").read_text())
    assert preprocessor["do_normalize"] is False  # as MERT-v1 publishes it
    if do_normalize is None:
        del preprocessor["do_normalize"]
    else:
        preprocessor["do_normalize"] = do_normalize
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return directory


def _embed(backend: MertBackend, audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return backend.embed_chunks(audio[None], np.array([audio.shape[0]]))[0]


def _assert_matches(vector: npt.NDArray[np.float32], expected: npt.NDArray[np.float64], what: str) -> None:
    np.testing.assert_allclose(vector, expected, atol=ATOL, rtol=RTOL, err_msg=what)


@pytest.mark.parametrize("weights", WEIGHT_FILES)
@pytest.mark.parametrize("shape", SHAPES)
def test_every_layer_equals_merts_own_code(tmp_path: Path, shape: str, weights: str) -> None:
    directory = _checkpoint(tmp_path, shape, weights)
    expected = _expected(shape)
    layer_count = expected["loud_raw_hidden"].shape[0] - 1
    for layer in range(layer_count + 1):
        backend = MertBackend(directory, device="cpu", layers=str(layer))
        for level, audio in _clips().items():
            _assert_matches(_embed(backend, audio), expected[f"{level}_raw_hidden"][layer], f"layer {layer}, {level}")
    # "last" is MERT's last_hidden_state: after the final LayerNorm in the 330M shape.
    backend = MertBackend(directory, device="cpu", layers="last")
    for level, audio in _clips().items():
        _assert_matches(_embed(backend, audio), expected[f"{level}_raw_last"], f"last, {level}")


@pytest.mark.parametrize("shape", SHAPES)
def test_default_layer_mean_equals_merts_own_code(tmp_path: Path, shape: str) -> None:
    backend = MertBackend(_checkpoint(tmp_path, shape, "pytorch_model.bin"), device="cpu")
    expected = _expected(shape)
    assert backend.pooling.startswith("layers=mean(1,2")
    for level, audio in _clips().items():
        layers = expected[f"{level}_raw_hidden"]
        _assert_matches(_embed(backend, audio), layers[1:].mean(axis=0), f"layers 1..N, {level}")


def test_weighted_layer_choice(tmp_path: Path) -> None:
    directory = _checkpoint(tmp_path, "mert-330m")
    backend = MertBackend(directory, device="cpu", layers="0,2-3", layer_weights=[1.0, 1.0, 2.0])
    assert backend.pooling.startswith("layers=weighted(0:0.25,2:0.25,3:0.5)")
    layers = _expected("mert-330m")["loud_raw_hidden"]
    expected = 0.25 * layers[0] + 0.25 * layers[2] + 0.5 * layers[3]
    _assert_matches(_embed(backend, _clips()["loud"]), expected, "weighted")


@pytest.mark.parametrize("shape", SHAPES)
def test_normalised_input_equals_merts_own_code(tmp_path: Path, shape: str) -> None:
    expected = _expected(shape)
    layer_count = expected["loud_normalised_hidden"].shape[0] - 1
    directory = _checkpoint(tmp_path, shape, do_normalize=True)
    backend = MertBackend(directory, device="cpu", layers=f"0-{layer_count}")
    for level, audio in _clips().items():
        _assert_matches(_embed(backend, audio), expected[f"{level}_normalised_hidden"].mean(axis=0), level)
    assert "/zero-mean unit-variance input/" in backend.pooling


def test_preprocessor_without_do_normalize_normalises_as_wav2vec2featureextractor_does(tmp_path: Path) -> None:
    backend = MertBackend(_checkpoint(tmp_path, "mert-95m", do_normalize=None), device="cpu", layers="1")
    quiet = _clips()["quiet"]
    _assert_matches(_embed(backend, quiet), _expected("mert-95m")["quiet_normalised_hidden"][1], "normalised")


@pytest.mark.parametrize("shape", SHAPES)
def test_missing_preprocessor_means_raw_input_as_mert_v1_publishes(tmp_path: Path, shape: str) -> None:
    directory = _checkpoint(tmp_path, shape)
    (directory / "preprocessor_config.json").unlink()
    backend = MertBackend(directory, device="cpu")
    expected = _expected(shape)
    raw = expected["quiet_raw_hidden"][1:].mean(axis=0)
    normalised = expected["quiet_normalised_hidden"][1:].mean(axis=0)
    # On quiet audio the two conventions give clearly different vectors, so
    # this test tells them apart.
    assert np.abs(raw - normalised).max() > 100 * ATOL
    _assert_matches(_embed(backend, _clips()["quiet"]), raw, "quiet, no preprocessor file")
    assert backend.sample_rate == RATE
    assert "/raw input/" in backend.pooling


def test_safetensors_with_a_prefix_loads_and_still_equals_mert(tmp_path: Path) -> None:
    directory = _checkpoint(tmp_path, "mert-330m")
    state = load_file(str(directory / "model.safetensors"))
    save_file({f"mert_model.{k}": v for k, v in state.items()}, str(directory / "model.safetensors"))
    backend = MertBackend(directory, device="cpu", layers="last")
    _assert_matches(_embed(backend, _clips()["loud"]), _expected("mert-330m")["loud_raw_last"], "prefixed")


def test_identity_names_the_file_loaded_the_dtype_and_the_transformers_major(tmp_path: Path) -> None:
    directory = _checkpoint(tmp_path, "mert-95m", "pytorch_model.bin")
    only_bin = MertBackend(directory, device="cpu")
    assert only_bin.name == "mess/tiny-random-mert-95m"
    assert only_bin.dim == 16
    assert hashlib.sha256((directory / "pytorch_model.bin").read_bytes()).hexdigest()[:16] == only_bin.revision
    major = transformers.__version__.split(".")[0]
    assert only_bin.pooling == f"layers=mean(1,2)/frames=mean/raw input/float32/transformers{major}"
    # With both formats present the safetensors file is the one loaded, and named.
    shutil.copyfile(FIXTURES / "mert-95m" / "model.safetensors", directory / "model.safetensors")
    both = MertBackend(directory, device="cpu")
    assert hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()[:16] == both.revision
    assert both.revision != only_bin.revision


def test_published_configs_extra_keys_are_accepted_and_change_nothing(tmp_path: Path) -> None:
    """MERT's scripts/hf_config files also carry fairseq and CTC leftovers, and model_type hubert."""
    directory = _checkpoint(tmp_path, "mert-330m")
    config = json.loads((directory / "config.json").read_text())
    config.update(
        {
            "model_type": "hubert",
            "architectures": ["MusicHubertModel"],
            "feat_extract_dropout": 0.0,
            "gradient_checkpointing": False,
            "hidden_dropout_prob": 0.1,
            "tokenizer_class": "Wav2Vec2CTCTokenizer",
            "mask_channel_length": 10,
            "mask_channel_min_space": 1,
            "mask_channel_other": 0.0,
            "mask_channel_prob": 0.0,
            "mask_channel_selection": "static",
            "mask_time_min_space": 1,
            "mask_time_other": 0.0,
            "mask_time_selection": "static",
        }
    )
    (directory / "config.json").write_text(json.dumps(config))
    backend = MertBackend(directory, device="cpu")
    expected = _expected("mert-330m")["loud_raw_hidden"][1:].mean(axis=0)
    _assert_matches(_embed(backend, _clips()["loud"]), expected, "published keys")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("layer_scale_init", 0.1),  # a future MERT flag this loader does not know
        ("conv_pos_batch_norm", True),  # HubertConfig knows it, MERT's code does not: it would run a batch norm
    ],
)
def test_unknown_config_keys_are_refused(tmp_path: Path, key: str, value: object) -> None:
    directory = _checkpoint(tmp_path, "mert-95m")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(ModelLoadError, match=rf"unknown config keys \['{key}'\]"):
        MertBackend(directory, device="cpu")


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
