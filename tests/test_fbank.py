"""Kaldi compatibility and batching of the torch log-mel filterbank."""

from __future__ import annotations

import kaldi_native_fbank as knf
import numpy as np
import pytest
import torch
from scipy.signal import lfilter

from cdino.config import from_dict
from cdino.errors import ConfigError
from cdino.frontend.fbank import Fbank, FbankConfig

SR = 16000


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: one intra-op thread is fastest and immune to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

# Measured against kaldi_native_fbank on the signal below: mean |diff| ~5e-6, max ~2.5e-4
# (float32 rounding, largest in low-energy bins). Bounds leave room for other FFT libraries.
MEAN_BOUND = 2e-5
MAX_BOUND = 2e-3


def speech_like(seed: int = 0, seconds: float = 2.0) -> np.ndarray:
    """Voiced speech stand-in: harmonics of a moving f0 through three formant resonances,
    syllable gating, a silence gap with very quiet noise, a little background noise;
    peak 0.3 of full scale."""
    rng = np.random.default_rng(seed)
    n = int(SR * seconds)
    t = np.arange(n) / SR
    f0 = rng.uniform(100, 200) * np.exp(0.2 * np.sin(2 * np.pi * 1.3 * t) + 0.1 * np.sin(2 * np.pi * 0.4 * t + 1))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 30))
    for freq, bw in [(rng.uniform(500, 800), 90), (rng.uniform(1000, 1800), 110), (2600, 160)]:
        r = np.exp(-np.pi * bw / SR)
        x = lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * freq / SR), r * r], x)
    x = x * (np.sin(2 * np.pi * 3 * t + rng.uniform(0, 6)) > -0.3)
    x = x / np.abs(x).max() * 0.3 + 1e-3 * rng.standard_normal(n)
    gap = slice(int(0.4 * n), int(0.55 * n))
    x[gap] = 1e-5 * rng.standard_normal(gap.stop - gap.start)  # near-silence: low-energy bins
    return x.astype(np.float32)


def kaldi_fbank(wave: np.ndarray, window: str = "povey", snip_edges: bool = True) -> np.ndarray:
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = window
    opts.frame_opts.snip_edges = snip_edges
    opts.mel_opts.num_bins = 80
    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(SR, (wave.astype(np.float64) * 32768.0).tolist())
    fb.input_finished()
    return np.stack([fb.get_frame(i) for i in range(fb.num_frames_ready)])


@pytest.mark.parametrize("window", ["povey", "hamming", "hanning"])
@pytest.mark.parametrize("snip_edges", [True, False])
def test_matches_kaldi(window: str, snip_edges: bool) -> None:
    wave = speech_like(seed=1)
    ref = kaldi_fbank(wave, window, snip_edges)
    fbank = Fbank(FbankConfig(window=window, snip_edges=snip_edges, mean_norm=False))
    out = fbank(torch.from_numpy(wave)[None])[0].numpy()
    assert out.shape == ref.shape
    diff = np.abs(out - ref)
    print(f"{window} snip_edges={snip_edges}: mean |diff| {diff.mean():.2e}, max {diff.max():.2e}")
    assert diff.mean() < MEAN_BOUND
    assert diff.max() < MAX_BOUND


def test_digital_silence_floors_like_kaldi() -> None:
    wave = speech_like(seed=2, seconds=0.5)
    wave[:2000] = 0.0
    ref = kaldi_fbank(wave)
    out = Fbank(FbankConfig(mean_norm=False))(torch.from_numpy(wave)[None])[0].numpy()
    assert np.allclose(out[:5], np.log(np.finfo(np.float32).eps))
    assert np.abs(out - ref).max() < MAX_BOUND


def test_batch_equals_items() -> None:
    waves = torch.from_numpy(np.stack([speech_like(seed=s, seconds=1.0) for s in range(4)]))
    fbank = Fbank()
    batched = fbank(waves)
    for i in range(len(waves)):
        torch.testing.assert_close(batched[i], fbank(waves[i:i + 1])[0], atol=1e-5, rtol=0)
    assert not torch.allclose(batched[0], batched[1])


@pytest.mark.parametrize("snip_edges", [True, False])
def test_num_frames_and_shapes(snip_edges: bool) -> None:
    fbank = Fbank(FbankConfig(snip_edges=snip_edges, n_mels=40))
    for n in (160, 399, 400, 401, 559, 560, 12345):
        kaldi_frames = n >= 400 or not snip_edges  # knf wants one frame at least
        expected = kaldi_fbank(np.full(n, 0.01, np.float32), snip_edges=snip_edges).shape[0] if kaldi_frames else 0
        assert fbank.num_frames(n) == expected, n
        out = fbank(torch.full((2, n), 0.01))
        assert out.shape == (2, expected, 40)
        assert out.dtype == torch.float32


def test_mean_norm_zero_time_mean() -> None:
    wave = torch.from_numpy(np.stack([speech_like(seed=s, seconds=1.0) for s in range(2)]))
    raw = Fbank(FbankConfig(mean_norm=False))(wave)
    normed = Fbank(FbankConfig(mean_norm=True))(wave)
    assert normed.mean(dim=1).abs().max() < 1e-4
    assert raw.mean(dim=1).abs().max() > 1.0
    torch.testing.assert_close(normed, raw - raw.mean(dim=1, keepdim=True))


def test_autocast_and_input_dtypes_compute_fp32() -> None:
    wave = torch.from_numpy(speech_like(seed=3, seconds=0.5))[None]
    fbank = Fbank()
    ref = fbank(wave)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fbank(wave)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(fbank(wave.double()), ref)


def test_dither_is_seeded_and_small() -> None:
    wave = torch.from_numpy(speech_like(seed=4, seconds=0.5))[None]
    fbank = Fbank(FbankConfig(dither=1.0, mean_norm=False))
    a = fbank(wave, generator=torch.Generator().manual_seed(0))
    b = fbank(wave, generator=torch.Generator().manual_seed(0))
    c = fbank(wave, generator=torch.Generator().manual_seed(1))
    clean = Fbank(FbankConfig(mean_norm=False))(wave)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.equal(a, c)
    # One 16-bit unit of noise barely moves speech frames (it does fill the near-silent gap).
    assert (a - clean).abs().median() < 0.05
    assert (a - clean).abs().max() > 1.0


def test_config_is_strict() -> None:
    assert from_dict(FbankConfig, {"window": "hamming"}).window == "hamming"
    with pytest.raises(ConfigError, match="windw"):
        from_dict(FbankConfig, {"windw": "hamming"})
    with pytest.raises(ConfigError, match="window"):
        from_dict(FbankConfig, {"window": "blackman"})
    with pytest.raises(ConfigError, match="high_freq"):
        from_dict(FbankConfig, {"high_freq": 9000.0})
