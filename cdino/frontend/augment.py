"""Batched data augmentation for speaker embeddings: reverberation, additive noise and channel.

Each crop of a batch independently gets nothing, reverberation, additive noise, or
reverberation then noise, with the configured probabilities (and optionally a speed
perturbation first and a channel last). Everything runs on the batch's device with index
arithmetic:

* reverberation — FFT convolution with a room impulse response (RIR) drawn from a bank,
  the RIR normalised to unit energy (or to its direct-path peak), the output aligned
  to the direct path and cut to the input length;
* additive noise — a MUSAN-style category (``noise``, ``speech``, ``music``) drawn by
  weight, a random segment of a random clip, scaled to an SNR drawn uniformly from the
  category's range (noise 0–15, speech 10–30, music 5–15 dB, computed from each item's
  powers); ``speech`` is babble: the sum of 3–7 clips, each at unit power;
* speed perturbation — resampling by linear interpolation (0.9 / 1.0 / 1.1), cut or
  zero-padded back to the input length; off by default;
* feature masks — SpecAugment-style: after the fbank, a few random bands of mel
  channels and of frames per crop are set to 0 (the mean, after mean normalisation), so
  no single band (a session's hum, its noise floor above a band limit) can carry a
  decision; off by default (``freq_masks``, ``time_masks``);
* channel — what a microphone, a line and a codec do to a recording: band limits
  (a random high-pass and low-pass, or a telephone band of about 300–3400 Hz followed by
  8-bit μ-law companding) and a random equaliser (low shelf, high shelf and a peak, each
  within ±``channel_eq_db``), applied in the frequency domain; off by default
  (``channel_prob``). Crops cut from one recording share its channel, so a
  self-supervised objective that pairs them can match channels instead of voices;
  a different channel per crop takes that shortcut away.

Banks come from the ``cdino prepare musan`` / ``cdino prepare rirs`` folders
(:meth:`AugmentBanks.from_dirs`) or are simulated (:meth:`AugmentBanks.simulated`:
exponentially decaying room responses, coloured noise and hum, synthetic talkers,
synthetic music), so tests and demos need no download.

Randomness comes from one draw per call from the given ``torch.Generator``, so the
output is deterministic given the generator's state. On CPU only the rows that are
augmented are computed; on an accelerator all rows are computed and selected with
``torch.where``, which avoids host synchronisation.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from scipy.signal import lfilter
from torch import Tensor, nn

from cdino.console import progress_bar
from cdino.errors import ConfigError, DataError

CATEGORIES = ("noise", "speech", "music")  # MUSAN's noise categories


@dataclass
class AugmentConfig:
    """What happens to each crop: reverberation and/or additive noise, at which levels."""

    reverb_prob: float = 0.3  # probability of reverberation only
    noise_prob: float = 0.3  # probability of additive noise only
    reverb_noise_prob: float = 0.0  # probability of reverberation followed by additive noise
    category_weights: dict[str, float] = field(
        default_factory=lambda: {"noise": 1.0, "speech": 1.0, "music": 1.0})  # relative odds of each noise category
    noise_snr: tuple[float, float] = (0.0, 15.0)  # SNR range (dB) of the 'noise' category
    speech_snr: tuple[float, float] = (10.0, 30.0)  # SNR range (dB) of babble ('speech')
    music_snr: tuple[float, float] = (5.0, 15.0)  # SNR range (dB) of the 'music' category
    babble_speakers: tuple[int, int] = (3, 7)  # number of speech clips summed into babble (inclusive range)
    rir_norm: Literal["energy", "peak"] = "energy"  # RIRs scaled to unit energy or to a unit direct-path peak
    speed_perturb: bool = False  # resample each crop by a speed drawn from `speeds`
    speeds: tuple[float, ...] = (0.9, 1.0, 1.1)  # speed factors, drawn uniformly
    channel_prob: float = 0.0  # probability of a random channel (band limits, equaliser, maybe a telephone band and μ-law), applied last
    channel_telephone: float = 0.3  # share of those channels that are telephone: 250–400 Hz to 3.0–3.6 kHz band and μ-law
    channel_highpass_hz: tuple[float, float] = (20.0, 250.0)  # range of the high-pass edge of a wideband channel
    channel_lowpass_hz: tuple[float, float] = (3500.0, 8000.0)  # range of the low-pass edge of a wideband channel (8000: none at 16 kHz)
    channel_eq_db: float = 6.0  # largest gain of the channel's equaliser sections (low shelf, high shelf, one peak)
    freq_masks: int = 0  # SpecAugment-style masks over mel bands per crop (after fbank and mean normalisation; masked bands set to 0)
    freq_mask_width: int = 10  # widest frequency mask, in mel bands (each mask's width drawn from 0..this)
    time_masks: int = 0  # masks over frames per crop
    time_mask_width: int = 20  # widest time mask, in frames

    def validate(self) -> None:
        probs = (self.reverb_prob, self.noise_prob, self.reverb_noise_prob)
        if any(not 0.0 <= p <= 1.0 for p in probs) or sum(probs) > 1.0 + 1e-9:
            raise ConfigError("reverb_prob, noise_prob, reverb_noise_prob must lie in [0, 1] "
                              f"and sum to at most 1, got {probs}")
        for name in self.category_weights:
            if name not in CATEGORIES:
                raise ConfigError(f"category_weights: unknown noise category '{name}' "
                                  f"(expected {'|'.join(CATEGORIES)})")
            if self.category_weights[name] < 0:
                raise ConfigError(f"category_weights.{name}: must be >= 0")
        for name in ("noise_snr", "speech_snr", "music_snr"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ConfigError(f"{name}: low end {lo} is above high end {hi}")
        lo, hi = self.babble_speakers
        if not 1 <= lo <= hi:
            raise ConfigError(f"babble_speakers: need 1 <= low <= high, got {self.babble_speakers}")
        if not self.speeds or any(s <= 0 for s in self.speeds):
            raise ConfigError(f"speeds: need at least one positive factor, got {self.speeds}")
        if self.rir_norm not in ("energy", "peak"):
            raise ConfigError(f"rir_norm: {self.rir_norm!r} is not one of 'energy', 'peak'")
        for name in ("channel_prob", "channel_telephone"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name}: must lie in [0, 1], got {getattr(self, name)}")
        for name in ("channel_highpass_hz", "channel_lowpass_hz"):
            lo, hi = getattr(self, name)
            if not 0.0 <= lo <= hi:
                raise ConfigError(f"{name}: need 0 <= low <= high, got {[lo, hi]}")
        if not 0.0 <= self.channel_eq_db <= 24.0:
            raise ConfigError(f"channel_eq_db: must lie in [0, 24], got {self.channel_eq_db}")
        for name in ("freq_masks", "freq_mask_width", "time_masks", "time_mask_width"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")

    def snr_range(self, category: str) -> tuple[float, float]:
        return getattr(self, f"{category}_snr")


# --------------------------------------------------------------------------- banks


def _smooth_noise(rng: np.random.Generator, n: int, sample_rate: int, rate_hz: float) -> np.ndarray:
    """A slowly varying random curve (unit-variance knots every 1/rate_hz s, linearly joined)."""
    knots = int(n / sample_rate * rate_hz) + 2
    return np.interp(np.arange(n), np.linspace(0, n, knots), rng.standard_normal(knots))


def _wavetable(amplitudes: np.ndarray, size: int = 2048) -> np.ndarray:
    """One period of a sum of harmonics with the given amplitudes."""
    phase = 2 * np.pi * np.arange(size) / size
    k = np.arange(1, len(amplitudes) + 1)[:, None]
    return (amplitudes[:, None] * np.sin(k * phase)).sum(0)


def _resonator(freq: float, bandwidth: float, sample_rate: int) -> np.ndarray:
    """Denominator of a two-pole resonance at ``freq`` Hz with ``bandwidth`` Hz."""
    r = np.exp(-np.pi * bandwidth / sample_rate)
    return np.array([1.0, -2 * r * np.cos(2 * np.pi * freq / sample_rate), r * r])


def _unit_rms(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.sqrt(np.mean(x ** 2))), 1e-12)


def simulated_rirs(rng: np.random.Generator, n: int, sample_rate: int, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic room impulse responses ``(n, L)`` and their RT60s ``(n,)`` in seconds.

    Each has a direct-path peak of 1 after a 0–4 ms delay, 8 early reflections in the next
    1–50 ms, and a late tail of Gaussian noise decaying by 60 dB over RT60 (0.2–0.9 s),
    gently low-passed (air absorption), at a direct-to-reverberant ratio of −3 to 10 dB.
    """
    length = int(seconds * sample_rate)
    rt60 = rng.uniform(0.2, 0.9, n)
    delay = rng.integers(0, int(0.004 * sample_rate) + 1, n)
    since = np.arange(length)[None, :] - delay[:, None]  # samples after the direct path
    envelope = np.where(since > 0.002 * sample_rate, 10.0 ** (-3.0 * since / (sample_rate * rt60[:, None])), 0.0)
    tail = rng.standard_normal((n, length))
    for i, a in enumerate(rng.uniform(0.0, 0.5, n)):  # one-pole low-pass, its own per room
        tail[i] = lfilter([1.0 - a], [1.0, -a], tail[i])
    tail *= envelope
    drr_db = rng.uniform(-3.0, 10.0, n)
    tail *= np.sqrt(10.0 ** (-drr_db / 10) / np.maximum((tail ** 2).sum(1), 1e-12))[:, None]
    rirs = tail
    rows = np.repeat(np.arange(n), 8)
    lag = rng.integers(int(0.001 * sample_rate), int(0.05 * sample_rate), (n, 8))
    decay = 10.0 ** (-3.0 * lag / (sample_rate * rt60[:, None]))  # the tail's envelope at that lag
    gain = rng.uniform(0.1, 0.5, (n, 8)) * rng.choice([-1.0, 1.0], (n, 8)) * decay
    np.add.at(rirs, (rows, np.minimum(delay[:, None] + lag, length - 1).ravel()), gain.ravel())
    rirs[np.arange(n), delay] = 1.0
    return rirs.astype(np.float32), rt60.astype(np.float32)


def simulated_noise(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    """One clip of MUSAN-'noise'-like sound: white, pink or brown noise, or mains hum."""
    kind = rng.integers(4)
    if kind < 3:  # power spectrum ∝ 1/f^alpha: white (0), pink (1), brown (2)
        spec = np.fft.rfft(rng.standard_normal(n))
        freq = np.maximum(np.fft.rfftfreq(n, 1.0 / sample_rate), 20.0)
        x = np.fft.irfft(spec * freq ** (-kind / 2.0), n)
    else:  # hum: 50/60 Hz with decaying harmonics over a little hiss
        t = np.arange(n) / sample_rate
        f = rng.choice([50.0, 60.0])
        x = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * k * f * t + rng.uniform(0, 2 * np.pi))
                for k in range(1, 11))
        x = _unit_rms(x) + 0.05 * rng.standard_normal(n)
    if rng.random() < 0.4:  # non-stationary: slow loudness changes
        x = x * np.exp(0.7 * _smooth_noise(rng, n, sample_rate, 1.0))
    return _unit_rms(x)


_VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [530, 1840, 2480],
                    [570, 840, 2410], [300, 870, 2240], [660, 1720, 2410]], dtype=np.float64)


def simulated_voice(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    """One synthetic talker (MUSAN-'speech'-like): syllables of harmonic, formant-filtered
    voicing with a moving f0, fricative bursts, and pauses. Babble is several summed."""
    base_f0 = rng.uniform(85.0, 250.0)
    f0 = base_f0 * np.exp(0.12 * _smooth_noise(rng, n, sample_rate, 3.0))
    n_harm = max(1, int(0.45 * sample_rate / (base_f0 * 1.6)))
    table = _wavetable(1.0 / np.arange(1, n_harm + 1))
    phase = np.cumsum(f0) / sample_rate
    source = table[(phase * len(table)).astype(np.int64) % len(table)]
    tract = rng.uniform(0.85, 1.2)  # vocal-tract length factor scales the formants
    vowels = rng.choice(len(_VOWELS), 4, replace=False)
    voiced = np.empty((4, n))
    for v, row in enumerate(vowels):
        denominator = np.array([1.0])
        for freq, bw in zip(_VOWELS[row] * tract, (80.0, 100.0, 150.0)):
            denominator = np.convolve(denominator, _resonator(freq, bw, sample_rate))
        voiced[v] = _unit_rms(lfilter([1.0], denominator, source))
    hiss = np.diff(rng.standard_normal(n + 1))  # high-passed noise for fricatives
    out = np.zeros(n)
    pos = int(rng.uniform(0.0, 0.3) * sample_rate)
    while pos < n:
        if rng.random() < 0.15:  # a pause between words
            pos += int(rng.uniform(0.1, 0.4) * sample_rate)
            continue
        length = min(int(rng.uniform(0.1, 0.3) * sample_rate), n - pos)
        shape = np.sin(np.pi * np.arange(length) / length) ** 2
        out[pos:pos + length] = voiced[rng.integers(4), pos:pos + length] * shape * rng.uniform(0.5, 1.0)
        if rng.random() < 0.5:  # a fricative onset
            m = min(int(rng.uniform(0.02, 0.06) * sample_rate), length)
            out[pos:pos + m] += 0.3 * hiss[pos:pos + m] * np.hanning(m)
        pos += length
    return _unit_rms(out + 1e-3 * rng.standard_normal(n))  # a -60 dB recording floor


def simulated_music(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    """One clip of MUSAN-'music'-like sound: tonal notes and chords of one instrument on a
    tempo grid, with percussive clicks on the beats."""
    t_len = n / sample_rate
    beat = 60.0 / rng.uniform(70.0, 160.0)
    table = _wavetable(rng.uniform(0.2, 1.0, 8) / np.arange(1, 9) ** rng.uniform(0.5, 2.0))
    root = 110.0 * 2 ** (rng.integers(0, 24) / 12)
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])
    decay = rng.uniform(0.15, 0.8)
    drums = rng.random() < 0.7
    out = np.zeros(n)
    step = beat / rng.choice([1, 2])
    for start in np.arange(rng.uniform(0, step), t_len, step):
        s = int(start * sample_rate)
        m = min(int(min(5 * decay, 3 * beat) * sample_rate), n - s)
        tt = np.arange(m) / sample_rate
        envelope = (1 - np.exp(-tt / 0.01)) * np.exp(-tt / decay)
        note = root * 2 ** (rng.choice(scale) / 12)
        chord = (0, 4, 7) if rng.random() < 0.3 else (0,)
        for semitones in chord:
            f = note * 2 ** (semitones / 12)
            out[s:s + m] += envelope * table[(f * tt * len(table)).astype(np.int64) % len(table)]
        if drums:
            c = min(int(rng.uniform(0.005, 0.03) * sample_rate), n - s)
            out[s:s + c] += rng.uniform(0.5, 2.0) * rng.standard_normal(c) * np.exp(-np.arange(c) / (0.2 * c + 1))
    return _unit_rms(out + 1e-4 * rng.standard_normal(n))


@dataclass
class AugmentBanks:
    """Room impulse responses and noise clips that an :class:`Augmenter` draws from."""

    rirs: Tensor  # (N, L) float32 room impulse responses, zero-padded to a common length
    noises: dict[str, Tensor]  # category (noise|speech|music) -> (N_c, L_c) float32 clips
    rt60: Tensor | None = None  # (N,) reverberation time of simulated RIRs in seconds; None when recorded

    @classmethod
    def simulated(cls, sample_rate: int = 16000, seed: int = 0, n_rirs: int = 200, n_clips: int = 32,
                  clip_seconds: float = 5.0, rir_seconds: float = 1.0) -> "AugmentBanks":
        """Synthetic banks (no download): ``n_rirs`` room responses and ``n_clips`` clips per category."""
        rng = np.random.default_rng(seed)
        rirs, rt60 = simulated_rirs(rng, n_rirs, sample_rate, rir_seconds)
        n = int(clip_seconds * sample_rate)
        makers = {"noise": simulated_noise, "speech": simulated_voice, "music": simulated_music}
        noises = {name: torch.from_numpy(np.stack([make(rng, n, sample_rate) for _ in range(n_clips)])
                                         .astype(np.float32) * 0.05)
                  for name, make in makers.items()}
        return cls(torch.from_numpy(rirs), noises, torch.from_numpy(rt60))

    @classmethod
    def from_dirs(cls, musan_dir: str | os.PathLike | None, rirs_dir: str | os.PathLike | None,
                  clip_seconds: float = 6.0, max_per_category: int | None = 1000, max_rirs: int | None = 2000,
                  rir_seconds: float = 1.0, sample_rate: int = 16000, seed: int = 0) -> "AugmentBanks":
        """Banks from the folders of ``cdino prepare musan`` (``wav.scp`` + ``utt2category``)
        and ``cdino prepare rirs`` (``wav.scp``).

        From each MUSAN file one random ``clip_seconds`` segment is kept (a shorter file is
        tiled), at most ``max_per_category`` files per category (a random subset); RIRs
        are cut or zero-padded to ``rir_seconds``, at most ``max_rirs`` of them.
        Either folder may be ``None``.
        """
        from cdino.data.audio import audio_info, load_audio

        rng = np.random.default_rng(seed)
        noises: dict[str, Tensor] = {}
        if musan_dir is not None:
            wavs = _read_list(Path(musan_dir), "wav.scp", "cdino prepare musan")
            categories = _read_list(Path(musan_dir), "utt2category", "cdino prepare musan")
            cat_path = Path(musan_dir) / "utt2category"
            by_category: dict[str, list[str]] = {c: [] for c in CATEGORIES}
            for utt, path in wavs.items():
                if utt not in categories:
                    raise DataError(f"{cat_path}: no category for utterance '{utt}' of wav.scp")
                name = categories[utt].strip()
                if name not in by_category:
                    raise DataError(f"{cat_path}: utterance '{utt}' has unknown category '{name}' "
                                    f"(expected {'|'.join(CATEGORIES)})")
                by_category[name].append(path)
            clip_len = int(clip_seconds * sample_rate)
            for name, paths in by_category.items():
                if not paths:
                    continue
                chosen = [paths[i] for i in _subset(rng, len(paths), max_per_category)]
                clips = []
                for path in progress_bar(chosen, desc=f"musan {name}", leave=False):
                    available = int(audio_info(path).duration * sample_rate)
                    offset = int(rng.integers(0, max(available - clip_len, 0) + 1))
                    audio = load_audio(path, sample_rate, offset=offset, frames=clip_len)
                    clips.append(np.resize(audio, clip_len))  # tiles a short file
                noises[name] = torch.from_numpy(np.stack(clips).astype(np.float32))
        rirs = torch.zeros(0, int(rir_seconds * sample_rate))
        if rirs_dir is not None:
            wavs = _read_list(Path(rirs_dir), "wav.scp", "cdino prepare rirs")
            paths = list(wavs.values())
            rir_len = int(rir_seconds * sample_rate)
            loaded = []
            for i in progress_bar(_subset(rng, len(paths), max_rirs), desc="rirs", leave=False):
                audio = load_audio(paths[i], sample_rate)[:rir_len]
                loaded.append(np.pad(audio, (0, rir_len - len(audio))))
            rirs = torch.from_numpy(np.stack(loaded).astype(np.float32))
        return cls(rirs, noises)

    def to(self, device: torch.device | str) -> "AugmentBanks":
        """The same banks with every tensor on ``device``."""
        return AugmentBanks(self.rirs.to(device), {k: v.to(device) for k, v in self.noises.items()},
                            None if self.rt60 is None else self.rt60.to(device))


def _subset(rng: np.random.Generator, n: int, limit: int | None) -> list[int]:
    """All of ``range(n)``, or a random ``limit`` of them in order."""
    if limit is None or n <= limit:
        return list(range(n))
    return sorted(rng.choice(n, limit, replace=False).tolist())


def _read_list(folder: Path, name: str, made_by: str) -> dict[str, str]:
    """A two-column Kaldi list of a prepared folder; wav paths resolved against the folder."""
    from cdino.data.kaldi_dir import read_scp

    path = folder / name
    if not path.is_file():
        raise DataError(f"{path}: file not found (make the folder with `{made_by}`)")
    entries = read_scp(path, what=name)
    if not entries:
        raise DataError(f"{path}: empty")
    if name == "wav.scp":
        entries = {k: str(v if Path(v).is_absolute() else folder / v) for k, v in entries.items()}
    return entries


# --------------------------------------------------------------------------- operations


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """U[0, 1) draws from ``generator`` (on its own device), delivered on ``device``."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where).to(device, non_blocking=True)


@functools.lru_cache(maxsize=64)
def _fft_size(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n (sizes every FFT library handles fast)."""
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def reverberate(wave: Tensor, rir: Tensor, peak: Tensor | None = None) -> Tensor:
    """Each row of ``wave (B, T)`` convolved with its room response ``rir (B, L)`` by FFT,
    aligned to the direct path (``peak`` sample index, default the largest |rir|) and cut
    to ``T``: ``out[t] = sum_k rir[k] wave[t + peak - k]``."""
    n_in, n_rir = wave.shape[-1], rir.shape[-1]
    n = _fft_size(n_in + n_rir - 1)
    full = torch.fft.irfft(torch.fft.rfft(wave, n) * torch.fft.rfft(rir, n), n)
    if peak is None:
        peak = rir.abs().argmax(-1)
    index = peak[:, None] + torch.arange(n_in, device=wave.device)
    return full.gather(-1, index)


def add_noise(wave: Tensor, noise: Tensor, snr_db: Tensor, where: Tensor | None = None) -> Tensor:
    """``wave + g * noise`` with ``g`` per row such that the power ratio of ``wave`` to
    ``g * noise`` (means over time) is ``snr_db`` decibels; rows outside the boolean
    ``where`` (if given) are returned unchanged."""
    signal_energy = torch.linalg.vector_norm(wave, dim=-1).square()
    noise_energy = torch.linalg.vector_norm(noise, dim=-1).square()
    gain = (signal_energy / (noise_energy * 10.0 ** (snr_db / 10.0)).clamp_min(1e-20)).sqrt()
    if where is not None:
        gain = gain * where
    return torch.addcmul(wave, noise, gain[:, None])


def speed_perturb(wave: Tensor, speed: Tensor) -> Tensor:
    """Each row played ``speed[b]`` times faster (resampled by linear interpolation;
    pitch moves with it), cut or zero-padded back to the input length."""
    n = wave.shape[-1]
    pos = torch.arange(n, device=wave.device, dtype=torch.float64)[None, :] * speed.double()[:, None]
    left = pos.floor().long()
    frac = (pos - left).to(wave.dtype)
    left = left.clamp_max(n - 1)
    right = (left + 1).clamp_max(n - 1)
    out = wave.gather(-1, left) * (1 - frac) + wave.gather(-1, right) * frac
    return torch.where(pos <= n - 1, out, torch.zeros_like(out))  # zero past the input's end


def _shelf(f: Tensor, corner: Tensor, gain_db: Tensor, high: bool) -> Tensor:
    """dB response of a first-order shelf at ``corner`` Hz reaching ``gain_db`` above it
    (``high``) or below it."""
    ratio = (f / corner[:, None]) ** 2
    weight = ratio / (1.0 + ratio) if high else 1.0 / (1.0 + ratio)
    return gain_db[:, None] * weight


def channel_gain(f: Tensor, p: dict[str, Tensor]) -> Tensor:
    """Magnitude response ``(rows, len(f))`` of each row's channel: Butterworth-like edges
    (4th-order high-pass, 8th-order low-pass) times an equaliser (low shelf at 200 Hz, high shelf at 2 kHz, one
    peak of an octave's width) in dB."""
    high_pass = (f / p["highpass"][:, None]) ** 8
    high_pass = high_pass / (1.0 + high_pass)
    low_pass = 1.0 / (1.0 + (f / p["lowpass"][:, None]) ** 16)
    octaves = torch.log2(f.clamp_min(1.0) / p["peak_hz"][:, None])
    eq_db = (_shelf(f, torch.full_like(p["lowpass"], 200.0), p["low_db"], high=False)
             + _shelf(f, torch.full_like(p["lowpass"], 2000.0), p["high_db"], high=True)
             + p["peak_db"][:, None] * torch.exp(-2.0 * octaves ** 2))
    return (high_pass * low_pass).sqrt() * 10.0 ** (eq_db / 20.0)


def mulaw(wave: Tensor, levels: int = 256) -> Tensor:
    """8-bit μ-law companding and back (μ = 255), as a G.711 line: quantisation noise
    that follows the signal's level. Rows are scaled to a peak of 1 and back."""
    peak = wave.abs().amax(-1, keepdim=True).clamp_min(1e-8)
    mu = float(levels - 1)
    y = torch.sign(wave) * torch.log1p(mu * (wave / peak).abs()) / math.log1p(mu)
    y = torch.round(y * (levels // 2 - 1)) / (levels // 2 - 1)
    return torch.sign(y) * ((1.0 + mu) ** y.abs() - 1.0) / mu * peak


def apply_channel(wave: Tensor, p: dict[str, Tensor], sample_rate: int = 16000, compact: bool = True) -> Tensor:
    """Each row of ``wave (B, T)`` through its channel (:func:`channel_gain`; the telephone
    rows then through μ-law and the line's band again, so the codec's noise stays in the
    band as it would at 8 kHz), filtered in the frequency domain; the output keeps the
    input's RMS level. ``compact`` (CPU) skips the codec when no row is a telephone (one
    host sync); otherwise it is computed for every row and selected (no sync)."""
    n = wave.shape[-1]
    size = _fft_size(n)
    f = torch.fft.rfftfreq(size, 1.0 / sample_rate).to(wave.device)
    gain = channel_gain(f, p)
    out = torch.fft.irfft(torch.fft.rfft(wave, size) * gain, size)[:, :n]
    if not compact or bool(p["telephone"].any()):  # the codec's noise stays in the line's band, as at 8 kHz
        coded = torch.fft.irfft(torch.fft.rfft(mulaw(out), size) * (gain > 0.1), size)[:, :n]
        out = torch.where(p["telephone"][:, None], coded, out)
    level = torch.linalg.vector_norm(wave, dim=-1) / torch.linalg.vector_norm(out, dim=-1).clamp_min(1e-10)
    return out * level[:, None]


def _span_mask(n: int, size: int, count: int, width: int, u: Tensor) -> Tensor:
    """``(n, size)`` bool: ``count`` random spans per row of widths 0..``width`` (``u``:
    uniforms ``(2 * count, n)``)."""
    pos = torch.arange(size, device=u.device)
    w = (u[:count] * (width + 1)).long().clamp_max(width)  # (count, n)
    start = (u[count:] * (size - w + 1).clamp_min(1)).long()
    inside = (pos[None, None, :] >= start[:, :, None]) & (pos[None, None, :] < (start + w)[:, :, None])
    return inside.any(0)


def mask_features(feats: Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> Tensor:
    """SpecAugment-style masks of ``feats (B, T, F)``: ``cfg.freq_masks`` spans of mel bands
    and ``cfg.time_masks`` spans of frames per row set to 0; one draw of ``generator``."""
    if not (cfg.freq_masks or cfg.time_masks):
        return feats
    b, t, f = feats.shape
    u = _uniform((2 * (cfg.freq_masks + cfg.time_masks), b), generator, feats.device)
    keep = torch.ones(b, t, f, dtype=torch.bool, device=feats.device)
    if cfg.freq_masks:
        keep &= ~_span_mask(b, f, cfg.freq_masks, min(cfg.freq_mask_width, f), u[: 2 * cfg.freq_masks])[:, None, :]
    if cfg.time_masks:
        keep &= ~_span_mask(b, t, cfg.time_masks, min(cfg.time_mask_width, t), u[2 * cfg.freq_masks:])[:, :, None]
    return feats * keep


def _apply_rows(x: Tensor, mask: Tensor, fn: Callable[[Tensor, Tensor], Tensor], compact: bool) -> Tensor:
    """``x`` with the rows where ``mask`` is set replaced by ``fn(rows, row_indices)``.

    ``compact`` computes ``fn`` on the selected rows only (one host sync, good on CPU);
    otherwise on all rows, then selects (no sync, good on accelerators)."""
    if compact:
        rows = mask.nonzero().squeeze(1)
        if rows.numel() == 0:
            return x
        out = x.clone()
        out[rows] = fn(x[rows], rows)
        return out
    return torch.where(mask[:, None], fn(x, torch.arange(x.shape[0], device=x.device)), x)


class Augmenter(nn.Module):
    """Batched reverberation + additive noise (+ optional speed perturbation) of crops.

    ``forward(wave (B, T), generator=None) -> (B, T)``; with ``return_info=True`` also a
    dict of what each row got: ``reverb``, ``noise`` (bool), ``rir``, ``category`` (index
    into ``self.categories``), ``snr_db``, ``n_speakers``, ``speed``.
    """

    def __init__(self, cfg: AugmentConfig | None = None, banks: AugmentBanks | None = None, *,
                 compact: bool | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or AugmentConfig()
        cfg.validate()
        self.compact = compact  # None: compact on CPU only
        banks = banks if banks is not None else AugmentBanks(torch.zeros(0, 1), {})
        # Room responses, normalised once.
        rirs = banks.rirs.float()
        if rirs.shape[0] == 0 and cfg.reverb_prob + cfg.reverb_noise_prob > 0:
            raise ConfigError("reverb_prob > 0 but the augmentation banks hold no room impulse responses")
        peak = rirs.abs().argmax(-1) if rirs.shape[0] else torch.zeros(0, dtype=torch.long)
        if cfg.rir_norm == "energy":
            scale = rirs.square().sum(-1, keepdim=True).sqrt()
        else:
            scale = rirs.gather(-1, peak[:, None]).abs()
        self.register_buffer("rirs", rirs / scale.clamp_min(1e-12), persistent=False)
        self.register_buffer("rir_peak", peak, persistent=False)
        # Noise clips of all categories in one flat buffer; category c's clip i starts at
        # base[c] + i * clip_len[c].
        for name in banks.noises:
            if name not in CATEGORIES:
                raise ValueError(f"unknown noise category '{name}' in the augmentation banks")
        self.categories = [c for c in CATEGORIES
                           if c in banks.noises and banks.noises[c].numel() > 0 and cfg.category_weights.get(c, 0) > 0]
        if not self.categories and cfg.noise_prob + cfg.reverb_noise_prob > 0:
            raise ConfigError("noise_prob > 0 but the augmentation banks hold no noise clips of a category "
                              "with a positive weight")
        clips = [banks.noises[c].float() for c in self.categories]
        counts = [len(c) for c in clips]
        lengths = [c.shape[1] for c in clips]
        bases = np.cumsum([0] + [n * m for n, m in zip(counts, lengths)])[:-1]
        weights = torch.tensor([cfg.category_weights[c] for c in self.categories], dtype=torch.float64)
        self.min_clip_len = min(lengths, default=0)
        self.max_speakers = cfg.babble_speakers[1] if "speech" in self.categories else 1
        self.speech_index = self.categories.index("speech") if "speech" in self.categories else -1
        buffers = {
            "noise_flat": torch.cat([c.reshape(-1) for c in clips]) if clips else torch.zeros(0),
            "cat_base": torch.tensor(bases, dtype=torch.long),
            "cat_count": torch.tensor(counts, dtype=torch.long),
            "cat_len": torch.tensor(lengths, dtype=torch.long),
            "cat_edges": (weights.cumsum(0) / weights.sum()).float()[:-1] if clips else torch.zeros(0),
            "snr_low": torch.tensor([cfg.snr_range(c)[0] for c in self.categories]),
            "snr_high": torch.tensor([cfg.snr_range(c)[1] for c in self.categories]),
            "kind_edges": torch.tensor(np.cumsum([cfg.reverb_prob, cfg.noise_prob, cfg.reverb_noise_prob]),
                                       dtype=torch.float32),
            "speeds": torch.tensor(cfg.speeds, dtype=torch.float32),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)

    def _segments(self, category: Tensor, u_clip: Tensor, u_offset: Tensor, n: int) -> Tensor:
        """A random ``n``-sample segment of a random clip of each row's category, ``(rows, n)``."""
        count, clip_len = self.cat_count[category], self.cat_len[category]
        start = self.cat_base[category] + (u_clip * count).long().clamp_max(count - 1) * clip_len
        if n <= self.min_clip_len:  # every clip is long enough: rows of a sliding-window view
            start = start + (u_offset * (clip_len - n + 1)).long().clamp_max(clip_len - n)
            return self.noise_flat.unfold(0, n, 1)[start]
        offset = (u_offset * clip_len).long().clamp_max(clip_len - 1)  # wrap around short clips
        index = (offset[:, None] + torch.arange(n, device=start.device)) % clip_len[:, None]
        return self.noise_flat[start[:, None] + index]

    def _noise(self, rows: Tensor, draws: dict[str, Tensor], n: int, compact: bool) -> Tensor:
        """The noise signal ``(len(rows), n)`` for the given rows: one clip, or for babble
        the sum of several clips, each at unit power."""
        category, speakers = draws["category"][rows], draws["n_speakers"][rows]
        u_clip, u_offset = draws["u_clip"][rows], draws["u_offset"][rows]
        total = torch.empty(0)
        for j in range(self.max_speakers):  # j-th voice of every row that has one
            if compact and j > 0:
                sub = (speakers > j).nonzero().squeeze(1)
                if sub.numel() == 0:
                    break
            else:  # all rows (every row has a first voice)
                sub = torch.arange(len(rows), device=rows.device)
            seg = self._segments(category[sub], u_clip[sub, j], u_offset[sub, j], n)
            weight = n ** 0.5 / torch.linalg.vector_norm(seg, dim=-1, keepdim=True).clamp_min(1e-10)
            if j == 0:
                total = seg.mul_(weight)
            elif compact:
                total.index_add_(0, sub, seg.mul_(weight))
            else:
                total.addcmul_(seg, weight * (speakers > j)[:, None])
        return total

    def draw(self, batch: int, device: torch.device, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """All random choices for a batch, from one draw of ``generator``."""
        k = self.max_speakers
        u = _uniform((6 + 2 * k, batch), generator, device)  # one row per purpose
        choice = torch.bucketize(u[0], self.kind_edges, right=True)  # 0 reverb, 1 noise, 2 both, 3 none
        n_rirs = max(self.rirs.shape[0], 1)
        category = torch.bucketize(u[2], self.cat_edges, right=True)
        if self.categories:
            low, high = self.snr_low[category], self.snr_high[category]
        else:
            low = high = torch.zeros(batch, device=device)
        lo_spk, hi_spk = self.cfg.babble_speakers
        speakers = lo_spk + (u[4] * (hi_spk - lo_spk + 1)).long().clamp_max(hi_spk - lo_spk)
        speed_index = (u[5] * len(self.cfg.speeds)).long().clamp_max(len(self.cfg.speeds) - 1)
        return {
            "reverb": (choice == 0) | (choice == 2),
            "noise": (choice == 1) | (choice == 2),
            "rir": (u[1] * n_rirs).long().clamp_max(n_rirs - 1),
            "category": category,
            "snr_db": low + u[3] * (high - low),
            "n_speakers": torch.where(category == self.speech_index, speakers, torch.ones_like(speakers)),
            "speed": self.speeds[speed_index] if self.cfg.speed_perturb else torch.ones(batch, device=device),
            "u_clip": u[6:6 + k].t(),
            "u_offset": u[6 + k:].t(),
            **(self._draw_channel(batch, device, generator) if self.cfg.channel_prob > 0 else {}),
        }

    def _draw_channel(self, batch: int, device: torch.device, generator: torch.Generator | None) -> dict[str, Tensor]:
        """Each row's channel (a second draw of ``generator``, made only when channels are on,
        so the other draws stay what they were without them)."""
        c = self.cfg
        u = _uniform((8, batch), generator, device)
        telephone = u[1] < c.channel_telephone
        span = lambda r, lo, hi: lo + r * (hi - lo)  # noqa: E731
        highpass = torch.where(telephone, span(u[2], 250.0, 400.0), span(u[2], *c.channel_highpass_hz))
        lowpass = torch.where(telephone, span(u[3], 3000.0, 3600.0), span(u[3], *c.channel_lowpass_hz))
        eq = lambda r: (2.0 * r - 1.0) * c.channel_eq_db  # noqa: E731
        return {"channel": u[0] < c.channel_prob, "telephone": telephone,
                "highpass": highpass.clamp_min(1.0), "lowpass": lowpass.clamp_min(highpass + 100.0),
                "low_db": eq(u[4]), "high_db": eq(u[5]), "peak_db": eq(u[6]),
                "peak_hz": 2.0 ** span(u[7], math.log2(300.0), math.log2(5000.0))}

    def forward(self, wave: Tensor, generator: torch.Generator | None = None,
                return_info: bool = False) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Augment a batch of equal-length crops ``(B, T)``; same shape, dtype and device."""
        if wave.dim() != 2:
            raise ValueError(f"Augmenter expects a (batch, samples) waveform, got shape {tuple(wave.shape)}")
        compact = self.compact if self.compact is not None else wave.device.type == "cpu"
        n = wave.shape[-1]
        with torch.autocast(wave.device.type, enabled=False):
            d = self.draw(wave.shape[0], wave.device, generator)
            x = wave.float()
            if self.cfg.speed_perturb:
                x = _apply_rows(x, d["speed"] != 1.0, lambda rows, i: speed_perturb(rows, d["speed"][i]), compact)
            if self.rirs.shape[0]:
                x = _apply_rows(x, d["reverb"], lambda rows, i: reverberate(
                    rows, self.rirs[d["rir"][i]], self.rir_peak[d["rir"][i]]), compact)
            if self.categories and compact:
                x = _apply_rows(x, d["noise"], lambda rows, i: add_noise(
                    rows, self._noise(i, d, n, True), d["snr_db"][i]), True)
            elif self.categories:  # all rows; the gain of rows without noise is zero
                every = torch.arange(x.shape[0], device=x.device)
                x = add_noise(x, self._noise(every, d, n, False), d["snr_db"], where=d["noise"])
            if "channel" in d:
                keys = ("telephone", "highpass", "lowpass", "low_db", "high_db", "peak_db", "peak_hz")
                x = _apply_rows(x, d["channel"], lambda rows, i: apply_channel(
                    rows, {k: d[k][i] for k in keys}, compact=compact), compact)
        out = x.to(wave.dtype)
        if return_info:
            return out, {k: v for k, v in d.items() if not k.startswith("u_")}
        return out
