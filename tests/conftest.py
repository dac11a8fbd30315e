"""Shared fixtures: tiny synthetic data folders built in the test (never ../shared)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

os.environ.setdefault("CDINO_NO_PROGRESS", "1")

import torch  # noqa: E402

# Tiny models on a shared 2-core machine run far faster on one thread than on two.
torch.set_num_threads(1)


def load_bench(name: str):
    """``bench/NAME.py`` imported as a module (the bench scripts are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_voice(rng: np.random.Generator, f0: float, formants: list[float], seconds: float,
               sr: int = 16000) -> np.ndarray:
    """A crude voiced signal: harmonics of a wobbling f0 shaped by formant peaks, plus noise."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f = f0 * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(f) / sr
    wave = np.zeros(n)
    for h in range(1, 30):
        fh = h * f0
        if fh > sr / 2 - 200:
            break
        gain = sum(np.exp(-((fh - fm) / 120.0) ** 2) for fm in formants) + 0.05
        wave += gain * np.sin(h * phase + rng.uniform(0, 6))
    env = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(1, 3) * t + rng.uniform(0, 6)) ** 2
    wave = wave * env + 0.02 * rng.standard_normal(n)
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)


def write_speaker_dir(root: Path, n_speakers: int = 4, utts_per_speaker: int = 6,
                      seconds: float = 2.0, seed: int = 0, visual_dim: int = 0) -> Path:
    """A data folder of synthetic 'speakers' (distinct f0 and formants) with utt2spk."""
    rng = np.random.default_rng(seed)
    (root / "wav").mkdir(parents=True, exist_ok=True)
    wav_lines, spk_lines, vis, vis_utts = [], [], [], []
    for s in range(n_speakers):
        f0 = 90 + 25 * s
        formants = [500 + 130 * s, 1500 + 170 * s, 2500 + 90 * s]
        ident = rng.standard_normal(max(visual_dim, 1))
        for u in range(utts_per_speaker):
            utt = f"spk{s:02d}-u{u:02d}"
            wave = make_voice(rng, f0 * rng.uniform(0.97, 1.03), formants, seconds * rng.uniform(0.9, 1.2))
            sf.write(root / "wav" / f"{utt}.wav", wave, 16000, subtype="PCM_16")
            wav_lines.append(f"{utt} wav/{utt}.wav")
            spk_lines.append(f"{utt} spk{s:02d}")
            if visual_dim and u % 5 != 4:
                vis.append(ident + 0.3 * rng.standard_normal(visual_dim))
                vis_utts.append(utt)
    (root / "wav.scp").write_text("\n".join(wav_lines) + "\n")
    (root / "utt2spk").write_text("\n".join(spk_lines) + "\n")
    if visual_dim:
        np.save(root / "visual.npy", np.asarray(vis, dtype=np.float32))
        (root / "visual_utts.txt").write_text("\n".join(vis_utts) + "\n")
    return root


def write_trials_for(data_dir: Path, path: Path, n: int = 60, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lines = [l.split() for l in (data_dir / "utt2spk").read_text().splitlines()]
    utts = [u for u, _ in lines]
    spk = dict(lines)
    out = []
    while len(out) < n:
        a, b = rng.choice(utts, 2, replace=False)
        out.append(f"{a} {b} {'target' if spk[a] == spk[b] else 'nontarget'}")
    if not any(l.endswith(" target") for l in out):
        a = utts[0]
        b = next(u for u in utts[1:] if spk[u] == spk[a])
        out.append(f"{a} {b} target")
    path.write_text("\n".join(out) + "\n")
    return path


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    return write_speaker_dir(tmp_path / "train", n_speakers=4, utts_per_speaker=6, seconds=1.5)


def write_m4a(path: Path, wave: np.ndarray, rate: int = 16000, bit_rate: int = 64000) -> Path:
    """Encode ``wave`` ((samples,) mono or (channels, samples)) as AAC in an .m4a (MP4)
    container with PyAV, as VoxCeleb2 ships its audio."""
    import av

    x = np.asarray(wave, dtype=np.float32)
    x = x[None] if x.ndim == 1 else x
    layout = {1: "mono", 2: "stereo"}[x.shape[0]]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate, layout=layout)
        stream.bit_rate = bit_rate
        for start in range(0, x.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[:, start:start + 1024]),
                                               format="fltp", layout=layout)
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


class StopAt(Exception):
    """Raised by :func:`stop_after_step`: a run that dies mid-training."""


def stop_after_step(method, step: int) -> None:
    """Make ``method`` raise :class:`StopAt` right after optimiser step ``step`` (a kill)."""
    orig = method.after_optimizer_step

    def dying(s, epoch):
        orig(s, epoch)
        if s == step:
            raise StopAt()

    method.after_optimizer_step = dying
