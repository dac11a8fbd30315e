"""Throughput of a full DINO training step, data path included, as JSON.

One step = random crops (2 global + 4 local) cut on the device from decoded waveforms in
memory → augmentation (reverb / noise) → fbank → student on 6 crops, teacher on 2 →
DINO loss → backward → gradient clipping → SGD → teacher EMA. This is cdino's own
``DinoMethod.training_step`` and the trainer's optimiser path, not a re-implementation.

Two variants are timed in the same run: ``eager_fp32`` (plain) and ``bf16`` (autocast;
plus TF32 / cuDNN autotune on CUDA). On a CPU the bf16 variant runs where the trainer would
use it (AVX512-BF16 / AMX, :func:`cdino.models.inference.fast_bf16`). On CUDA the fraction
of the card's bf16 peak is reported from ~50.1 GFLOP per utterance (ECAPA-512, 2×300 +
4×200 frames). ``--recipe demo`` takes a recipe's DINO stage instead (encoder, head, crops,
batch; the demo's: ECAPA-TDNN small, K = 4096, 2×200 + 2×100 frames, batch 32).

    python bench/bench_dino_step.py                 # CUDA when present, else a small CPU run
    python bench/bench_dino_step.py --device cpu --batch 8 --steps 3
    python bench/bench_dino_step.py --device cpu --recipe demo --steps 20 --warmup 3
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from cdino.config import load_config
from cdino.frontend.augment import AugmentBanks
from cdino.frontend.crop import random_crops
from cdino.methods.base import FeatureFrontend, MethodContext
from cdino.methods.dino import DinoMethod
from cdino.train.trainer import TrainConfig

GFLOP_PER_UTT = 50.1  # ECAPA-512 forward+backward on 2x300 + 4x200 frames (DESIGN.md section 4)
# Dense bf16 tensor-core peaks from the vendors' data sheets (SXM parts). DESIGN.md's
# "physical limit" uses 790 TFLOP/s as the attainable figure; both fractions are printed.
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
DESIGN_REFERENCE_TFLOPS = 790.0


class _FakeStore:
    utts = ["x"]

    def __len__(self):
        return 1


def stage_config(encoder: str, out_dim: int, batch: int, recipe: str | None) -> TrainConfig:
    """The DINO config timed: a recipe's DINO stage, or the given encoder / head / batch."""
    if recipe:
        from cdino.pipeline.method import load_recipe, stage_overrides
        from cdino.pipeline.recipe_source import builtin_recipe, merge_overrides as _merge

        over = stage_overrides(load_recipe(builtin_recipe(recipe)), "dino")
        return load_config(TrainConfig, _merge(over, {"trainer": {"epochs": 10}}))
    return load_config(TrainConfig, {"encoder": {"name": encoder},
                                     "trainer": {"epochs": 10, "global_batch": batch},
                                     "dino": {"out_dim": out_dim}})


def build(device: torch.device, cfg: TrainConfig):
    frontend = FeatureFrontend(cfg.fbank, cfg.augment, AugmentBanks.simulated(seed=0).to(device)).to(device)
    ctx = MethodContext(cfg=cfg, device=device, rank=0, world_size=1, store=_FakeStore(), data=None,
                        out_dir=Path("."), frontend=frontend)
    method = DinoMethod()
    method.setup(ctx)
    method.steps_per_epoch_value = 1000
    method.student.to(device).train()
    params = [p for p in method.student.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    return cfg, method, opt, params


PARTS = ("crops", "frontend", "student_forward", "teacher_forward", "loss", "backward", "optimizer")


def _timed(module: torch.nn.Module, totals: dict, name: str) -> None:
    """Add the wall time of every call of ``module`` to ``totals[name]``."""
    start: list[float] = []
    module.register_forward_pre_hook(lambda *_: start.append(time.perf_counter()))

    def done(*_):
        totals[name] += time.perf_counter() - start.pop()

    module.register_forward_hook(done)


def make_step(device: torch.device, bf16: bool, cfg: TrainConfig, wave_seconds: float = 8.0,
              totals: dict | None = None):
    """A fresh model and optimiser, and ``step(i)``: one full DINO training step on random
    crops of random waveforms (seeded, so two calls make the same sequence). With
    ``totals`` (a dict of :data:`PARTS`), each part's wall seconds are added to it: the
    modules the step calls are timed by hooks, ``loss`` is the rest of
    ``training_step``. Wall times are only meaningful on the CPU (no device syncs)."""
    batch = cfg.trainer.global_batch
    cfg, method, opt, params = build(device, cfg)
    sr = 16000
    bank = torch.randn(max(256, batch), int(wave_seconds * sr), device=device) * 0.1
    lengths = torch.full((bank.shape[0],), bank.shape[1], device=device)
    g = torch.Generator(device=device).manual_seed(0)
    gs, ls = int(cfg.dino.global_seconds * sr), int(cfg.dino.local_seconds * sr)
    hooked = ("frontend", "student_forward", "teacher_forward")
    parts = totals if totals is not None else dict.fromkeys(PARTS, 0.0)
    if totals is not None:
        for module, name in zip((method.ctx.frontend, method.student, method.teacher), hooked):
            _timed(module, totals, name)

    def step(i: int) -> None:
        t0 = time.perf_counter()
        idx = torch.randint(0, bank.shape[0], (batch,), device=device, generator=g)
        w, n = bank[idx], lengths[idx]
        batch_d = {"global": random_crops(w, n, gs, cfg.dino.n_global, generator=g),
                   "local": random_crops(w, n, ls, cfg.dino.n_local, generator=g)}
        t1 = time.perf_counter()
        inside = sum(parts[k] for k in hooked)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = method.training_step(method.student, batch_d, i, 1, g)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 3.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.after_optimizer_step(i, 1)
        t4 = time.perf_counter()
        parts["crops"] += t1 - t0
        parts["loss"] += (t2 - t1) - (sum(parts[k] for k in hooked) - inside)
        parts["backward"] += t3 - t2
        parts["optimizer"] += t4 - t3

    return step


def run(device: torch.device, bf16: bool, cfg: TrainConfig, steps: int, warmup: int,
        wave_seconds: float = 8.0) -> dict:
    torch.manual_seed(0)
    batch = cfg.trainer.global_batch
    step = make_step(device, bf16, cfg, wave_seconds)
    for i in range(warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    ups = batch * steps / dt
    out = {"utt_per_s": ups, "step_ms": 1000 * dt / steps, "batch": batch, "steps": steps}
    if device.type == "cuda":
        out["max_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--encoder", default="ecapa_tdnn")
    ap.add_argument("--out-dim", type=int, default=65536)
    ap.add_argument("--recipe", default=None, help="time this built-in recipe's DINO stage (e.g. demo)")
    args = ap.parse_args()
    from cdino.allocator import keep_freed_memory

    malloc_kept = keep_freed_memory()  # as the trainer does (CDINO_MALLOC=default: glibc's defaults)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch or (128 if cuda else 4)
    cfg = stage_config(args.encoder, args.out_dim, batch, args.recipe)
    if args.recipe and args.batch:
        cfg.trainer.global_batch = args.batch
    steps = args.steps or (20 if cuda else 2)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    dc = cfg.dino
    res = {"bench": "dino_step", "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
           "torch": torch.__version__, "recipe": args.recipe, "encoder": cfg.encoder.name, "out_dim": dc.out_dim,
           "crops": (f"{dc.n_global}x{dc.global_seconds:g}s global + {dc.n_local}x{dc.local_seconds:g}s local, "
                     "on-device crop+augment+fbank"),
           "batch": cfg.trainer.global_batch, "threads": torch.get_num_threads(), "malloc_kept": malloc_kept}
    res["eager_fp32"] = run(device, False, cfg, steps, warmup)
    if not cuda:
        from cdino.models.inference import fast_bf16

        res["cpu_fast_bf16"] = bool(fast_bf16(device))
        if res["cpu_fast_bf16"]:
            res["bf16"] = run(device, True, cfg, steps, warmup)
            res["speedup_bf16_vs_eager_fp32"] = res["bf16"]["utt_per_s"] / res["eager_fp32"]["utt_per_s"]
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        res["bf16"] = run(device, True, cfg, steps, warmup)
        res["speedup_bf16_vs_eager_fp32"] = res["bf16"]["utt_per_s"] / res["eager_fp32"]["utt_per_s"]
        name = res["device"]
        peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
        if peak and cfg.encoder.name == "ecapa_tdnn":
            res["bf16_peak_tflops"] = peak
            res["fraction_of_bf16_peak"] = res["bf16"]["utt_per_s"] * GFLOP_PER_UTT / (peak * 1000)
            res["fraction_of_790_tflops"] = res["bf16"]["utt_per_s"] * GFLOP_PER_UTT / (DESIGN_REFERENCE_TFLOPS * 1000)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
