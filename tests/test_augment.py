"""Batched augmentation (reverb, noise, speed) and random crops."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from cdino.config import from_dict
from cdino.errors import ConfigError, DataError
from cdino.frontend.augment import (AugmentBanks, AugmentConfig, Augmenter, add_noise, mulaw, reverberate,
                                    speed_perturb)
from cdino.frontend.crop import random_crops

SR = 16000


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: one intra-op thread is fastest and immune to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def banks() -> AugmentBanks:
    return AugmentBanks.simulated(seed=0, n_rirs=12, n_clips=8, clip_seconds=1.0, rir_seconds=0.5)


def speech_batch(batch: int, n: int, seed: int = 0) -> torch.Tensor:
    """Harmonic bursts of random f0 and level (a cheap stand-in for speech crops)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / SR
    f0 = 100 + 150 * torch.rand(batch, 1, generator=g)
    x = sum(torch.sin(2 * torch.pi * k * f0 * t) / k for k in range(1, 8))
    gate = (torch.sin(2 * torch.pi * 3 * t + 6 * torch.rand(batch, 1, generator=g)) > 0).float()
    return 0.2 * torch.rand(batch, 1, generator=g) * x * gate + 1e-3 * torch.randn(batch, n, generator=g)


def snr_db(clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(clean.double().square().mean(-1) / (noisy - clean).double().square().mean(-1))


# ----------------------------------------------------------------------------- noise


def test_add_noise_hits_snr() -> None:
    wave = speech_batch(6, 8000)
    noise = torch.randn(6, 8000) * torch.tensor([1e-3, 0.1, 1.0, 3.0, 0.5, 0.02])[:, None]
    target = torch.tensor([-5.0, 0.0, 7.5, 15.0, 22.0, 30.0])
    out = add_noise(wave, noise, target)
    assert (snr_db(wave, out) - target).abs().max() < 0.1


def test_forward_noise_matches_drawn_snr_per_category(banks: AugmentBanks) -> None:
    cfg = AugmentConfig(reverb_prob=0.0, noise_prob=1.0)
    aug = Augmenter(cfg, banks)
    wave = speech_batch(96, 6000)
    out, info = aug(wave, torch.Generator().manual_seed(1), return_info=True)
    assert info["noise"].all() and not info["reverb"].any()
    assert (snr_db(wave, out) - info["snr_db"]).abs().max() < 0.1
    for c, name in enumerate(aug.categories):
        rows = info["category"] == c
        assert rows.sum() > 10, name  # every category is drawn
        lo, hi = cfg.snr_range(name)
        assert info["snr_db"][rows].min() >= lo and info["snr_db"][rows].max() <= hi
        speakers = info["n_speakers"][rows]
        if name == "speech":
            assert speakers.min() >= 3 and speakers.max() <= 7 and len(speakers.unique()) > 2
        else:
            assert (speakers == 1).all()


def test_babble_sums_several_clips(banks: AugmentBanks) -> None:
    only_speech = AugmentBanks(banks.rirs, {"speech": banks.noises["speech"]})
    wave = speech_batch(16, 4000)
    one = Augmenter(AugmentConfig(reverb_prob=0, noise_prob=1, babble_speakers=(1, 1)), only_speech)
    many = Augmenter(AugmentConfig(reverb_prob=0, noise_prob=1, babble_speakers=(6, 6)), only_speech)
    n1 = one(wave, torch.Generator().manual_seed(0)) - wave
    n6 = many(wave, torch.Generator().manual_seed(0)) - wave
    # A sum of independent talkers is less peaky (lower kurtosis) than a single one.
    def kurtosis(x: torch.Tensor) -> torch.Tensor:
        return (x.pow(4).mean(-1) / x.square().mean(-1).square()).median()
    assert kurtosis(n6) < kurtosis(n1)


# ----------------------------------------------------------------------------- reverb


def test_fft_reverb_equals_direct_convolution() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 50))
    h = rng.standard_normal((3, 20)) * 0.3
    peaks = np.array([0, 3, 19])
    h[np.arange(3), peaks] = 2.0
    out = reverberate(torch.from_numpy(x), torch.from_numpy(h))
    for b in range(3):
        ref = np.convolve(x[b], h[b])[peaks[b]:peaks[b] + 50]
        np.testing.assert_allclose(out[b].numpy(), ref, atol=1e-10)


def test_forward_reverb_uses_normalised_rir(banks: AugmentBanks) -> None:
    for norm in ("energy", "peak"):
        aug = Augmenter(AugmentConfig(reverb_prob=1.0, noise_prob=0.0, rir_norm=norm), banks)
        wave = speech_batch(4, 3000, seed=2)
        out, info = aug(wave, torch.Generator().manual_seed(3), return_info=True)
        assert info["reverb"].all()
        for b in range(4):
            h = banks.rirs[info["rir"][b]].double().numpy()
            peak = int(np.abs(h).argmax())
            h = h / (np.sqrt((h ** 2).sum()) if norm == "energy" else abs(h[peak]))
            ref = np.convolve(wave[b].double().numpy(), h)[peak:peak + 3000]
            np.testing.assert_allclose(out[b].numpy(), ref, atol=1e-4)


def test_simulated_banks(banks: AugmentBanks) -> None:
    assert banks.rirs.shape == (12, 8000) and banks.rirs.dtype == torch.float32
    assert set(banks.noises) == {"noise", "speech", "music"}
    for clips in banks.noises.values():
        assert clips.shape == (8, 16000) and torch.isfinite(clips).all()
        assert (clips.square().mean(-1) > 0).all()
        assert not torch.allclose(clips[0], clips[1])
    assert torch.isfinite(banks.rirs).all()
    assert ((banks.rt60 >= 0.2) & (banks.rt60 <= 0.9)).all()
    # the direct path is the largest sample
    assert (banks.rirs.abs().argmax(-1) < 0.005 * SR).all()


def test_simulated_rirs_decay_at_their_rt60() -> None:
    bank = AugmentBanks.simulated(seed=5, n_rirs=10, n_clips=1, clip_seconds=0.1, rir_seconds=1.0)
    energy = bank.rirs.double().square()
    edc = 10 * torch.log10(energy.flip(-1).cumsum(-1).flip(-1) / energy.sum(-1, keepdim=True))  # Schroeder
    for b in range(10):
        curve = edc[b].numpy()
        fit = (curve < -15) & (curve > -35)  # late tail, past the direct sound and early reflections
        t = np.arange(len(curve))[fit] / SR
        slope = np.polyfit(t, curve[fit], 1)[0]  # dB per second
        rt60 = -60.0 / slope
        assert abs(rt60 - float(bank.rt60[b])) < 0.15 * float(bank.rt60[b]), (rt60, float(bank.rt60[b]))


# ----------------------------------------------------------------------------- whole augmenter


def test_zero_probabilities_are_identity(banks: AugmentBanks) -> None:
    aug = Augmenter(AugmentConfig(reverb_prob=0, noise_prob=0, reverb_noise_prob=0), banks)
    wave = speech_batch(5, 2000)
    assert torch.equal(aug(wave, torch.Generator().manual_seed(0)), wave)
    assert torch.equal(Augmenter(AugmentConfig(reverb_prob=0, noise_prob=0))(wave), wave)  # no banks needed


def test_shape_dtype_device_and_determinism(banks: AugmentBanks) -> None:
    aug = Augmenter(AugmentConfig(reverb_prob=0.3, noise_prob=0.3, reverb_noise_prob=0.3,
                                  speed_perturb=True), banks)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        wave = speech_batch(16, 4000).to(dtype)
        out = aug(wave, torch.Generator().manual_seed(7))
        assert out.shape == wave.shape and out.dtype == dtype and out.device == wave.device
        assert torch.isfinite(out.float()).all()
    wave = speech_batch(16, 4000)
    a, info = aug(wave, torch.Generator().manual_seed(7), return_info=True)
    b = aug(wave, torch.Generator().manual_seed(7))
    c = aug(wave, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    untouched = ~info["reverb"] & ~info["noise"] & (info["speed"] == 1)
    assert torch.equal(a[untouched], wave[untouched]) and not torch.equal(a[~untouched], wave[~untouched])
    # the CPU path computing only chosen rows equals the accelerator path computing all rows
    full = Augmenter(aug.cfg, banks, compact=False)
    torch.testing.assert_close(full(wave, torch.Generator().manual_seed(7)), a, atol=1e-5, rtol=0)


def test_noise_longer_than_clips_wraps(banks: AugmentBanks) -> None:
    aug = Augmenter(AugmentConfig(reverb_prob=0, noise_prob=1), banks)
    wave = speech_batch(8, 40000)  # 2.5 s crops, 1 s noise clips
    out, info = aug(wave, torch.Generator().manual_seed(0), return_info=True)
    assert (snr_db(wave, out) - info["snr_db"]).abs().max() < 0.1


def test_speed_perturb() -> None:
    ramp = torch.arange(10, dtype=torch.float32).repeat(3, 1)
    out = speed_perturb(ramp, torch.tensor([1.0, 0.5, 2.0]))
    torch.testing.assert_close(out[0], ramp[0])
    torch.testing.assert_close(out[1], torch.arange(10) * 0.5)
    torch.testing.assert_close(out[2], torch.tensor([0, 2, 4, 6, 8, 0, 0, 0, 0, 0.0]))


def test_config_validation(banks: AugmentBanks) -> None:
    with pytest.raises(ConfigError, match="sum to at most 1"):
        from_dict(AugmentConfig, {"reverb_prob": 0.6, "noise_prob": 0.6})
    with pytest.raises(ConfigError, match="babble"):
        from_dict(AugmentConfig, {"category_weights": {"babble": 1.0}})
    with pytest.raises(ConfigError, match="speech_snr"):
        from_dict(AugmentConfig, {"speech_snr": [30, 10]})
    assert from_dict(AugmentConfig, {"music_snr": [0, 5]}).music_snr == (0.0, 5.0)
    with pytest.raises(ConfigError, match="no room impulse"):
        Augmenter(AugmentConfig(), AugmentBanks(torch.zeros(0, 10), banks.noises))


# ----------------------------------------------------------------------------- banks from folders


def test_from_dirs(tmp_path) -> None:
    rng = np.random.default_rng(0)
    musan = tmp_path / "musan"
    musan.mkdir()
    files = {"n1": ("noise", 3.0), "n2": ("noise", 2.5), "s1": ("speech", 0.5), "m1": ("music", 4.0)}
    audio = {}
    for utt, (_, seconds) in files.items():
        audio[utt] = (rng.uniform(-0.5, 0.5, int(seconds * SR)) * 32768).round() / 32768
        sf.write(musan / f"{utt}.wav", audio[utt], SR, subtype="PCM_16")
    (musan / "wav.scp").write_text("".join(f"{u} {u}.wav\n" for u in files))  # relative paths
    (musan / "utt2category").write_text("".join(f"{u} {c}\n" for u, (c, _) in files.items()))
    rirs = tmp_path / "rirs"
    rirs.mkdir()
    for i, n in enumerate((3000, 20000)):
        h = np.zeros(n)
        h[10 + i] = 0.9
        h[100:] = 0.01
        sf.write(rirs / f"r{i}.wav", h, SR, subtype="FLOAT")
    (rirs / "wav.scp").write_text(f"r0 {rirs / 'r0.wav'}\nr1 {rirs / 'r1.wav'}\n")

    bank = AugmentBanks.from_dirs(musan, rirs, clip_seconds=1.0, max_per_category=None, rir_seconds=0.5)
    assert bank.noises["noise"].shape == (2, SR) and bank.noises["music"].shape == (1, SR)
    assert bank.rirs.shape == (2, 8000)
    assert bank.rirs[0, 3000:].abs().max() == 0 and bank.rirs[1, 10] == 0 and bank.rirs[1, 11] == pytest.approx(0.9)
    # a clip is a contiguous piece of its file; a short file is tiled
    music = bank.noises["music"][0].double().numpy()
    full = audio["m1"]
    start = int(np.flatnonzero(np.isclose(full, music[0]) & np.isclose(np.roll(full, -1), music[1]))[0])
    np.testing.assert_allclose(music, full[start:start + SR], atol=1e-6)
    speech = bank.noises["speech"][0].double().numpy()
    np.testing.assert_allclose(speech, np.resize(audio["s1"], SR), atol=1e-6)
    # a capped subset
    assert AugmentBanks.from_dirs(musan, None, clip_seconds=1.0, max_per_category=1).noises["noise"].shape == (1, SR)

    (musan / "utt2category").write_text("n1 noise\nn2 traffic\ns1 speech\nm1 music\n")
    with pytest.raises(DataError, match="utt2category.*traffic"):
        AugmentBanks.from_dirs(musan, None)
    (musan / "utt2category").unlink()
    with pytest.raises(DataError, match="utt2category: file not found"):
        AugmentBanks.from_dirs(musan, None)


# ----------------------------------------------------------------------------- crops


def test_random_crops_are_slices_of_the_valid_region() -> None:
    batch, total, crop = 6, 1000, 300
    lengths = torch.tensor([1000, 800, 301, 300, 120, 7])
    wave = torch.full((batch, total), float("nan"))  # padding must never be read
    for b, n in enumerate(lengths.tolist()):
        wave[b, :n] = torch.arange(n, dtype=torch.float32) + 10000 * b
    out = random_crops(wave, lengths, crop, n_crops=5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (batch, 5, crop)
    assert torch.isfinite(out).all()
    for b, n in enumerate(lengths.tolist()):
        pos = out[b] - 10000 * b  # sample positions
        start = pos[:, :1]
        if n >= crop:
            assert torch.equal(pos, start + torch.arange(crop)), b  # contiguous
            assert (start >= 0).all() and (start + crop <= n).all()
        else:
            assert torch.equal(pos, (start + torch.arange(crop)) % n), b  # tiled from an offset
    starts = out[0, :, 0]
    assert len(starts.unique()) == 5  # random positions
    again = random_crops(wave, lengths, crop, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_random_crops_longer_than_the_batch_tile() -> None:
    lengths = torch.tensor([50, 13])
    wave = torch.full((2, 60), float("nan"))
    wave[0, :50] = torch.arange(50.0)
    wave[1, :13] = torch.arange(13.0)
    out = random_crops(wave, lengths, crop_samples=100, n_crops=3, generator=torch.Generator().manual_seed(1))
    assert out.shape == (2, 3, 100)
    for b, n in enumerate(lengths.tolist()):
        start = out[b, :, :1]
        assert torch.equal(out[b], (start + torch.arange(100)) % n)


def _band_db(x: torch.Tensor, f: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    power = torch.fft.rfft(x, dim=-1).abs().square()
    return 10 * torch.log10(power[:, (f >= lo) & (f < hi)].mean(-1))


def test_channels_limit_the_band_keep_the_level_and_leave_the_other_draws(banks: AugmentBanks) -> None:
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    x = torch.randn(64, 16000, generator=torch.Generator().manual_seed(1)) * 0.1
    base = AugmentConfig(reverb_prob=0.3, noise_prob=0.3)
    plain, info = Augmenter(base, banks)(x, gen(), return_info=True)
    both, info2 = Augmenter(from_dict(AugmentConfig, {"reverb_prob": 0.3, "noise_prob": 0.3,
                                                      "channel_prob": 1.0}), banks)(x, gen(), return_info=True)
    for key in ("reverb", "noise", "rir", "category", "snr_db"):  # the channel draws come after these
        assert torch.equal(info[key], info2[key]), key
    only = Augmenter(AugmentConfig(reverb_prob=0.0, noise_prob=0.0, channel_prob=1.0, channel_telephone=0.5))
    out, d = only(x, gen(), return_info=True)
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1), rtol=1e-4, atol=0)
    f = torch.fft.rfftfreq(16000, 1 / 16000)
    mid = _band_db(out, f, 1000, 2500)
    tel = d["telephone"]
    assert 0 < int(tel.sum()) < 64
    # telephone rows: little below 150 Hz or above 5 kHz (white input is flat)
    assert (_band_db(out[tel], f, 20, 150) < mid[tel] - 15).all()
    assert (_band_db(out[tel], f, 5000, 8000) < mid[tel] - 15).all()
    # wideband rows cut where their low-pass edge says
    wide = ~tel & (d["lowpass"] < 5000)
    assert wide.any()
    for i in wide.nonzero().squeeze(1).tolist():
        edge = float(d["lowpass"][i])
        above = _band_db(out[i:i + 1], f, min(edge * 1.3, 7000), 8000)
        assert above < mid[i] - 12, (edge, float(above), float(mid[i]))
    # μ-law: at most 256 levels of a row's peak-normalised samples
    q = mulaw(x[:2])
    levels = torch.unique(torch.round(q[0] / q[0].abs().max() * 1e5))
    assert len(levels) <= 256 and not torch.equal(q, x[:2])
    with pytest.raises(ConfigError, match="channel_prob"):
        AugmentConfig(channel_prob=1.5).validate()


def test_feature_masks_zero_spans_of_bands_and_frames() -> None:
    from cdino.frontend.augment import mask_features

    feats = torch.randn(16, 120, 80) + 5.0  # no zeros of its own
    cfg = AugmentConfig(freq_masks=2, freq_mask_width=10, time_masks=1, time_mask_width=20)
    out = mask_features(feats, cfg, torch.Generator().manual_seed(0))
    zero = out == 0
    bands = zero.all(1)  # (B, F): bands masked over every frame
    frames = zero.all(2)  # (B, T)
    assert bands.any() and frames.any()
    assert (bands.sum(1) <= 20).all() and (frames.sum(1) <= 20).all()
    kept = ~zero
    assert torch.equal(out[kept], feats[kept])
    # a masked band is a contiguous span in each row (at most two spans)
    for row in bands:
        edges = torch.diff(row.int()).abs().sum()
        assert edges <= 4
    again = mask_features(feats, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert torch.equal(mask_features(feats, AugmentConfig()), feats)  # off by default
