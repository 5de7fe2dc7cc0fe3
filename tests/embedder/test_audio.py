"""Decoding, checks, resampling, chunking and peaks: the steps before any model."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mess.embedder.audio import (
    AudioLimits,
    AudioRejectedError,
    chunk,
    decode,
    pool_chunks,
    resample,
    waveform_peaks,
)
from mess.embedder.backends.dsp import DspBackend
from mess.embedder.batching import ChunkBatcher
from mess.embedder.embedding import ChecksumMismatchError, ChunkPlan, TrackEmbedder

from .samples import audio_file, tone

LIMITS = AudioLimits(min_seconds=1.0, max_seconds=600.0)


# --- chunking -----------------------------------------------------------------


def test_audio_shorter_than_one_chunk_gives_one_short_chunk() -> None:
    samples = np.ones(700, dtype=np.float32)
    chunks = chunk(samples, chunk_samples=1000, hop_samples=1000, min_samples=100)
    assert chunks.count == 1
    assert chunks.lengths.tolist() == [700]
    assert np.all(chunks.audio[0, :700] == 1) and np.all(chunks.audio[0, 700:] == 0)


def test_exact_multiple_gives_full_chunks_and_no_empty_tail() -> None:
    samples = np.arange(3000, dtype=np.float32)
    chunks = chunk(samples, chunk_samples=1000, hop_samples=1000, min_samples=100)
    assert chunks.count == 3
    assert chunks.lengths.tolist() == [1000, 1000, 1000]
    assert np.array_equal(chunks.audio.ravel(), samples)


def test_short_tail_is_kept_and_weighted_by_its_length() -> None:
    chunks = chunk(np.ones(2250, dtype=np.float32), chunk_samples=1000, hop_samples=1000, min_samples=100)
    assert chunks.lengths.tolist() == [1000, 1000, 250]
    assert chunks.weights.tolist() == [1000.0, 1000.0, 250.0]


def test_tail_too_short_for_one_model_frame_is_dropped() -> None:
    chunks = chunk(np.ones(2050, dtype=np.float32), chunk_samples=1000, hop_samples=1000, min_samples=100)
    assert chunks.lengths.tolist() == [1000, 1000]


def test_overlapping_hop_stops_at_the_chunk_that_reaches_the_end() -> None:
    chunks = chunk(np.ones(2000, dtype=np.float32), chunk_samples=1000, hop_samples=500, min_samples=100)
    # Starts 0, 500, 1000; the chunk at 1000 reaches the end, so no chunk at 1500.
    assert chunks.count == 3
    assert chunks.lengths.tolist() == [1000, 1000, 1000]


def test_pooling_weights_chunks_by_duration_and_normalises() -> None:
    vectors = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    pooled = pool_chunks(vectors, np.array([3000.0, 1000.0]))
    assert pooled == pytest.approx(np.array([3.0, 1.0]) / np.sqrt(10.0), abs=1e-6)
    assert float(np.linalg.norm(pooled)) == pytest.approx(1.0, abs=1e-6)


# --- decoding -------------------------------------------------------------------


def test_stereo_is_mixed_to_mono() -> None:
    left = tone(2.0, 22050)
    stereo = np.stack([left, 0.5 * left], axis=1)
    decoded = decode(audio_file(stereo, 22050, subtype="FLOAT"), LIMITS)
    assert decoded.channels == 2
    assert decoded.samples.ndim == 1
    assert decoded.samples == pytest.approx(0.75 * left, abs=1e-6)


@pytest.mark.parametrize(("subtype", "tolerance"), [("PCM_U8", 1 / 64), ("PCM_16", 1e-4), ("PCM_24", 1e-6)])
def test_8_16_and_24_bit_files_decode_to_the_same_signal(subtype: str, tolerance: float) -> None:
    samples = tone(1.5, 22050)
    decoded = decode(audio_file(samples, 22050, subtype=subtype), LIMITS)
    assert decoded.subtype == subtype
    assert decoded.samples == pytest.approx(samples, abs=tolerance)


@pytest.mark.parametrize("rate", [22050, 44100, 48000])
def test_common_rates_resample_to_the_model_rate_keeping_pitch(rate: int) -> None:
    decoded = decode(audio_file(tone(3.0, rate, frequencies=(440.0,)), rate, "FLAC"), LIMITS)
    at_model = resample(decoded.samples, decoded.sample_rate, 11025)
    assert at_model.shape[0] == pytest.approx(3.0 * 11025, abs=2)
    spectrum = np.abs(np.fft.rfft(at_model * np.hanning(at_model.shape[0])))
    peak_hz = np.argmax(spectrum) * 11025 / at_model.shape[0]
    assert peak_hz == pytest.approx(440.0, abs=1.0)


@pytest.mark.parametrize("rate", [22050, 44100, 48000])
def test_prepared_track_has_whole_chunks_at_the_model_rate(rate: int) -> None:
    backend = DspBackend()
    with ThreadPoolExecutor(1) as pool:
        batcher = ChunkBatcher(backend, pool, batch_size=4, max_wait_s=0.01)
        embedder = TrackEmbedder(backend, batcher, pool, ChunkPlan(5.0, 5.0), LIMITS)
        data = audio_file(np.stack([tone(12.0, rate)] * 2, axis=1), rate, subtype="PCM_16")
        prepared = embedder.prepare("t1", data, None)
    assert prepared.duration_s == pytest.approx(12.0)
    assert prepared.chunks.audio.shape == (3, 5 * 11025)
    assert prepared.chunks.lengths.tolist() == [55125, 55125, pytest.approx(22050, abs=2)]
    assert prepared.peaks.sample_rate == rate


def test_checksum_mismatch_is_refused() -> None:
    backend = DspBackend()
    with ThreadPoolExecutor(1) as pool:
        embedder = TrackEmbedder(backend, ChunkBatcher(backend, pool, 4, 0.01), pool, ChunkPlan(5.0, 5.0), LIMITS)
        with pytest.raises(ChecksumMismatchError) as caught:
            embedder.prepare("t1", audio_file(tone(2.0, 22050), 22050), "0" * 64)
    assert caught.value.kind == "checksum_mismatch"


# --- rejected audio -----------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", "decode"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt this is not audio", "decode"),
        (b"\x00\x01\x02" * 5000, "decode"),
        (audio_file(np.zeros(22050 * 3, dtype=np.float32), 22050), "silent"),
        (audio_file(tone(0.4, 22050), 22050), "too_short"),
        (audio_file(np.full(22050 * 2, np.nan, dtype=np.float32), 22050, subtype="FLOAT"), "decode"),
    ],
    ids=["empty", "bad-header", "noise-bytes", "silence", "too-short", "nan"],
)
def test_unusable_audio_is_rejected_with_its_kind(data: bytes, kind: str) -> None:
    with pytest.raises(AudioRejectedError) as caught:
        decode(data, LIMITS)
    assert caught.value.kind == kind
    assert caught.value.reason


def test_over_long_audio_is_cut_to_the_limit() -> None:
    decoded = decode(audio_file(tone(4.0, 8000), 8000), AudioLimits(min_seconds=1.0, max_seconds=2.5))
    assert decoded.truncated
    assert decoded.duration_s == pytest.approx(2.5)


# --- waveform peaks -------------------------------------------------------------


def test_waveform_peaks_cover_the_track_in_about_2000_pairs() -> None:
    samples = tone(30.0, 44100)
    samples[1234567] = 0.99  # a click the drawing must show
    decoded = decode(audio_file(samples, 44100, subtype="FLOAT"), LIMITS)
    peaks = waveform_peaks("track-1", decoded)
    assert 1990 <= len(peaks.mins) == len(peaks.maxs) <= 2000
    assert peaks.samples_per_peak * len(peaks.mins) >= samples.shape[0]
    assert all(low <= high for low, high in zip(peaks.mins, peaks.maxs, strict=True))
    assert max(peaks.maxs) == pytest.approx(0.99, abs=1e-4)
    assert min(peaks.mins) == pytest.approx(float(samples.min()), abs=1e-4)
    assert peaks.duration_s == pytest.approx(30.0)
