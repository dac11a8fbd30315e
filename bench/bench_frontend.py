"""Throughput of the DINO data path: random crops + augmentation + fbank, and audio decoding.

One "utterance" is what a DINO step needs from it: 2 global (3 s) + 4 local (2 s) crops
cut from a decoded waveform held in memory, each crop augmented (reverb / noise with
the default :class:`AugmentConfig`, simulated banks) and turned into 80-d log-mel fbank.
Measured on CPU with 1 and 2 threads, and on CUDA when available. Disk read + decode
(soundfile) of 16-bit wav and flac files is measured separately, on one core.

    python bench/bench_frontend.py [--batch 128] [--seconds 5] [--device auto|cpu|cuda]

Prints one JSON object (utterances per second).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from cdino.frontend.augment import AugmentBanks, AugmentConfig, Augmenter
from cdino.frontend.crop import random_crops
from cdino.frontend.fbank import Fbank, FbankConfig

SR = 16000
GLOBAL = (2, 3.0)  # crops per utterance, seconds
LOCAL = (4, 2.0)


def utterances(batch: int, seconds: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch of speech-like waveforms of 75–100 % of ``seconds`` and their lengths."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * SR)
    t = torch.arange(n) / SR
    f0 = 90 + 160 * torch.rand(batch, 1, generator=g)
    wave = sum(torch.sin(2 * torch.pi * k * f0 * t) / k for k in range(1, 12))
    wave = wave * (torch.sin(2 * torch.pi * 3 * t + 6 * torch.rand(batch, 1, generator=g)) > -0.2)
    wave = 0.1 * wave + 1e-3 * torch.randn(batch, n, generator=g)
    lengths = (n * (0.75 + 0.25 * torch.rand(batch, generator=g))).long()
    wave[torch.arange(n) >= lengths[:, None]] = 0
    return wave, lengths


class DinoFrontend:
    """Crop → augment → fbank for the 2 global + 4 local views of a batch of utterances."""

    def __init__(self, device: torch.device) -> None:
        self.augment = Augmenter(AugmentConfig(), AugmentBanks.simulated()).to(device)
        self.fbank = Fbank(FbankConfig()).to(device)

    def __call__(self, wave: torch.Tensor, lengths: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
        views = []
        for n_crops, seconds in (GLOBAL, LOCAL):
            crops = random_crops(wave, lengths, int(seconds * SR), n_crops, gen).flatten(0, 1)
            views.append(self.fbank(self.augment(crops, gen)))
        return views


def rate(device: str, batch: int, utt_seconds: float, budget: float, threads: int | None = None,
         warmup: int = 1) -> float:
    """Utterances per second of :class:`DinoFrontend` on ``device``."""
    if threads is not None:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    frontend = DinoFrontend(dev)
    wave, lengths = (x.to(dev) for x in utterances(batch, utt_seconds))
    gen = torch.Generator(device=dev).manual_seed(0)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    with torch.inference_mode():
        for _ in range(warmup):
            frontend(wave, lengths, gen)
        sync()
        steps, start = 0, time.perf_counter()
        while steps == 0 or time.perf_counter() - start < budget:
            frontend(wave, lengths, gen)
            steps += 1
            if dev.type == "cuda" and steps % 8 == 0:
                sync()
        sync()
        elapsed = time.perf_counter() - start
    return batch * steps / elapsed


def cuda_checks(batch: int, utt_seconds: float) -> dict[str, float]:
    """The CUDA path computes what the CPU path does, and where its time goes (ms per batch)."""
    dev = torch.device("cuda")
    frontend = DinoFrontend(dev)
    wave, lengths = (x.to(dev) for x in utterances(batch, utt_seconds))
    gen = torch.Generator(device=dev).manual_seed(0)
    crops = random_crops(wave, lengths, int(GLOBAL[1] * SR), GLOBAL[0], gen).flatten(0, 1)
    noisy, info = frontend.augment(crops, gen, return_info=True)
    added = (noisy - crops).double().square().mean(-1)
    snr = 10 * torch.log10(crops.double().square().mean(-1) / added)
    snr_err = (snr - info["snr_db"])[info["noise"] & ~info["reverb"]].abs().max()
    cpu_fbank = Fbank(FbankConfig())(noisy.cpu())
    short = random_crops(wave, torch.full_like(lengths, 1000), 3000, 2, gen)  # the tiling path
    step = torch.arange(3000, device=dev)
    tiled_ok = True
    for b in range(4):
        for row in short[b]:
            first = int((wave[b, :1000] == row[0]).nonzero()[0])
            tiled_ok = tiled_ok and torch.equal(row, wave[b, (first + step) % 1000])
    diff = (frontend.fbank(noisy).cpu() - cpu_fbank).abs()
    checks = {
        "cuda_fbank_abs_diff_vs_cpu": {"mean": diff.mean().item(),
                                       "p99.99": diff.flatten()[::7].quantile(0.9999).item(),
                                       "max": diff.max().item()},
        "cuda_snr_max_error_db": snr_err.item(),
        "cuda_tiled_crops_ok": tiled_ok,
    }
    timers = {"crop": lambda: [random_crops(wave, lengths, int(s * SR), k, gen) for k, s in (GLOBAL, LOCAL)]}
    local = random_crops(wave, lengths, int(LOCAL[1] * SR), LOCAL[0], gen).flatten(0, 1)
    timers["augment"] = lambda: (frontend.augment(crops, gen), frontend.augment(local, gen))
    timers["fbank"] = lambda: (frontend.fbank(crops), frontend.fbank(local))
    for name, fn in timers.items():
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        checks[f"cuda_ms_per_batch_{name}"] = round((time.perf_counter() - start) / 20 * 1000, 3)
    return checks


def decode_rate(utt_seconds: float, budget: float, n_files: int = 32) -> dict[str, float]:
    """Utterances per second read + decoded by soundfile on one core (files in the page cache)."""
    try:
        import soundfile as sf
    except ImportError:  # e.g. a bare GPU image
        return {}
    out = {}
    wave, lengths = utterances(n_files, utt_seconds, seed=1)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("wav", "flac"):
            paths = []
            for i in range(n_files):
                path = Path(tmp) / f"utt{i}.{fmt}"
                sf.write(path, wave[i, :lengths[i]].numpy(), SR, subtype="PCM_16")
                paths.append(path)
            for p in paths:  # warm the page cache
                sf.read(p, dtype="float32")
            files, start = 0, time.perf_counter()
            while files < n_files or time.perf_counter() - start < budget:
                sf.read(paths[files % n_files], dtype="float32")
                files += 1
            out[fmt] = files / (time.perf_counter() - start)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128, help="utterances per batch")
    ap.add_argument("--seconds", type=float, default=5.0, help="time budget per measurement")
    ap.add_argument("--utt-seconds", type=float, default=8.0, help="length of the in-memory utterances")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                    help="auto: CPU (1 and 2 threads) and CUDA when available")
    args = ap.parse_args()

    result: dict[str, object] = {
        "what": "utterances/s for 2x3s + 4x2s crops + reverb/noise augmentation + 80-d fbank",
        "batch": args.batch, "utterance_seconds": args.utt_seconds, "torch": torch.__version__,
    }
    if args.device in ("auto", "cpu"):
        for threads in (1, 2):
            result[f"cpu_{threads}_thread_utt_per_s"] = round(
                rate("cpu", args.batch, args.utt_seconds, args.seconds, threads=threads), 1)
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        result["cuda_device"] = torch.cuda.get_device_name()
        result["cuda_utt_per_s"] = round(rate("cuda", args.batch, args.utt_seconds, args.seconds, warmup=3), 1)
        result.update(cuda_checks(args.batch, args.utt_seconds))
    decode = decode_rate(args.utt_seconds, min(args.seconds, 2.0))
    result["decode_per_core_utt_per_s"] = {k: round(v, 1) for k, v in decode.items()}
    result["decode_note"] = f"soundfile read of {args.utt_seconds:g} s 16-bit files from the page cache, 1 thread"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
