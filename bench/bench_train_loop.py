"""Steady-state throughput of the real ``cdino train`` loop beside the bare DINO step, as JSON.

The loop is :meth:`cdino.train.trainer.Trainer.fit` on a data folder on disk
(``data.store: files``): DataLoader workers, batch hand-off and device copy, the method's
step, clipping, optimiser, EMA, the log window every ``trainer.log_every`` steps and
checkpoint writes. The bare step is ``bench_dino_step.make_step`` on the same config: crops
cut on the device from waveforms already there, no loader, logs or checkpoints. ``ratio`` =
loop / step: 1.0 means the loop around the step costs nothing.

Timing, in one process, after start-up (data, model build, store opening): loop and bare
step take turns (loop, step, loop, step, ...), each block skipping ``--warmup`` steps and
timing ``--steps``; medians are reported beside every block. Each loop block is one
``fit()`` call, stopped after its last timed step, so its workers start with it and never
bank batches while the bare step runs. Checkpoint writes are timed on their own and added
per step at the configured interval (``trainer.checkpoint_every``, else one per epoch of
the recipe's training set; a short run would hit one or none). On CUDA both run under the
trainer's precision: bf16 autocast, or fp32 with ``trainer.tf32``.

    python bench/bench_train_loop.py --device cpu                     # the demo's DINO config, ~1 min
    python bench/bench_train_loop.py --device cpu --steps 3 --warmup 1 --rounds 1   # a smoke run
    python bench/bench_train_loop.py --device cuda --recipe voxceleb --precision bf16
    python bench/bench_train_loop.py --device cuda --recipe voxceleb --precision fp32   # TF32; --no-tf32: IEEE

``--recipe`` names a built-in recipe or a YAML file (``voxceleb``: recipes/voxceleb/voxceleb.yaml);
its DINO stage is timed, with the simulated noise banks. Without ``--data`` a folder of
synthetic utterances is written first (``--utts``, ``--seconds``); ``--make-data DIR`` only
writes it (the GPU script shares one folder between runs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_cpu_load import machine_info  # noqa: E402
from bench_dino_step import make_step  # noqa: E402

from cdino.config import load_config  # noqa: E402
from cdino.data.audio import SAMPLE_RATE, write_audio  # noqa: E402
from cdino.data.kaldi_dir import DataDir, write_scp, write_utt2dur  # noqa: E402
from cdino.methods.dino import DinoMethod  # noqa: E402
from cdino.pipeline.method import load_recipe, stage_overrides  # noqa: E402
from cdino.pipeline.recipe_source import merge_overrides  # noqa: E402
from cdino.train.trainer import TrainConfig, Trainer, cuda_tf32  # noqa: E402

RECIPES = {"voxceleb": HERE.parent / "recipes" / "voxceleb" / "voxceleb.yaml"}


def make_data(folder: Path, n_utts: int, seconds: float, seed: int = 0) -> Path:
    """A data folder of ``n_utts`` synthetic utterances (a voiced tone with a wobble in
    noise, 16-bit wav) with ``utt2dur``, as ``cdino prepare`` writes them."""
    rng = np.random.default_rng(seed)
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    scp, durations = {}, {}
    for i in range(n_utts):
        f0 = rng.uniform(90.0, 250.0)
        voice = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 6))
        voice *= 1.0 + 0.5 * np.sin(2 * np.pi * rng.uniform(2.0, 5.0) * t)
        wave = voice + 0.05 * rng.standard_normal(len(t))
        utt = f"spk{i % 64:03d}-utt{i:05d}"
        write_audio(folder / "wav" / f"{utt}.wav", (0.5 * wave / np.abs(wave).max()).astype(np.float32))
        scp[utt], durations[utt] = f"wav/{utt}.wav", len(t) / SAMPLE_RATE
    write_scp(folder / "wav.scp", scp)
    write_utt2dur(folder / "utt2dur", durations)
    return folder


def recipe_config(recipe: str, overrides: list[str]) -> tuple[TrainConfig, object]:
    """The recipe's DINO stage config, reading training crops from files with the simulated
    noise banks and every layer trained (a run's steady state after its first epoch), and
    the recipe itself."""
    parsed = load_recipe(RECIPES.get(recipe, recipe))
    bench = {"data": {"store": "files"}, "noise": {"musan": None, "rirs": None},
             "dino": {"freeze_last_layer_epochs": 0}}
    cfg = load_config(TrainConfig, merge_overrides(stage_overrides(parsed, "dino"), bench), overrides=overrides)
    return cfg, parsed


def epoch_steps(recipe, batch: int, data: DataDir) -> tuple[int, str]:
    """Steps in one epoch of the recipe's training set (its simulated corpus, or its data
    folder when that exists here), else of the data the loop reads."""
    train = recipe.data.train
    if train and (Path(train) / "wav.scp").is_file():
        return len(DataDir.load(train).utts) // batch, train
    if not train:
        from cdino.corpus.synth import SynthConfig

        sc = SynthConfig.preset(recipe.corpus.preset)
        speakers = recipe.corpus.speakers or sc.n_train_speakers
        return speakers * sc.sessions_per_speaker * sc.utts_per_session // batch, f"corpus preset {recipe.corpus.preset}"
    return len(data.utts) // batch, "the data read"


class _BlockDone(Exception):
    """Stops ``fit()`` after a loop block's last timed step."""


def _checkpoint_timer(trainer: Trainer, sync) -> list[float]:
    """Time every checkpoint write of ``trainer`` (the device drained before and after)."""
    writes: list[float] = []
    save = trainer.save_checkpoint

    def timed() -> None:
        sync()
        t0 = time.perf_counter()
        save()
        sync()
        writes.append(time.perf_counter() - t0)

    trainer.save_checkpoint = timed
    return writes


def time_loop_block(trainer: Trainer, warmup: int, steps: int, sync, writes: list[float]) -> float:
    """Seconds of ``steps`` steps of ``trainer.fit()`` after ``warmup`` untimed ones,
    checkpoint writes taken out. The governor's poll, called once per step right after the
    step counter moves, carries the clock: every step's whole cycle falls in one interval."""
    poll, seen, marks = trainer.governor.poll, [0], {}

    def clocked():
        changed = poll()
        seen[0] += 1
        if seen[0] in (warmup, warmup + steps):
            sync()
            marks[seen[0]] = (time.perf_counter(), sum(writes))
            if seen[0] == warmup + steps:
                raise _BlockDone
        return changed

    trainer.governor.poll = clocked
    try:
        trainer.fit()
        raise RuntimeError("the run ended before the block did: raise trainer.steps_per_epoch")
    except _BlockDone:
        pass
    finally:
        trainer.governor.poll = poll
    trainer.resume = True  # the next fit() continues (from a checkpoint if one was written)
    (t0, w0), (t1, w1) = marks[warmup], marks[warmup + steps]
    return (t1 - t0) - (w1 - w0)


def time_step_block(step, start: int, warmup: int, steps: int, sync) -> float:
    for i in range(warmup):
        step(start + i)
    sync()
    t0 = time.perf_counter()
    for i in range(steps):
        step(start + warmup + i)
    sync()
    return time.perf_counter() - t0


def run_blocks(trainer: Trainer, cfg: TrainConfig, rounds: int, warmup: int, steps: int):
    """Loop and bare-step blocks in turn; their seconds, and every checkpoint write's."""
    cuda = trainer.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    writes = _checkpoint_timer(trainer, sync)
    step = make_step(trainer.device, trainer.amp, cfg)
    loop_s, step_s = [], []
    for r in range(rounds):
        loop_s.append(time_loop_block(trainer, warmup, steps, sync, writes))
        if cuda:
            torch.cuda.empty_cache()  # the two models' activations are never held at once
        with cuda_tf32(trainer.tf32) if trainer.tf32 is not None else contextlib.nullcontext():
            step_s.append(time_step_block(step, r * (warmup + steps), warmup, steps, sync))
        if cuda:
            torch.cuda.empty_cache()
    if not writes:  # none fell in the run: time two
        trainer.save_checkpoint()
        trainer.save_checkpoint()
    trainer.log.close()
    return loop_s, step_s, writes


def device_info(device: torch.device) -> dict:
    info = {"device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    device_memory_gb=round(props.total_memory / 2**30, 1))
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="demo", help="built-in recipe, 'voxceleb', or a recipe YAML file")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None, help="trainer.precision (default: the recipe's)")
    ap.add_argument("--no-tf32", action="store_true", help="trainer.tf32 false: IEEE fp32 on CUDA")
    ap.add_argument("--batch", type=int, default=None, help="trainer.global_batch (default: the recipe's)")
    ap.add_argument("--workers", type=int, default=None, help="data.num_workers (default: the recipe's; -1 auto)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per block (default: trainer.log_every)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps at the start of every block (CPU 2, CUDA 5)")
    ap.add_argument("--rounds", type=int, default=2, help="loop/step block pairs")
    ap.add_argument("--epoch-steps", type=int, default=None,
                    help="epoch length for the epoch-end checkpoints when trainer.checkpoint_every is 0")
    ap.add_argument("--data", type=Path, default=None, help="a data folder to read (default: synthetic, written first)")
    ap.add_argument("--utts", type=int, default=None, help="synthetic utterances (default: 4 x batch)")
    ap.add_argument("--seconds", type=float, default=6.0, help="length of a synthetic utterance")
    ap.add_argument("--make-data", type=Path, default=None, metavar="DIR", help="only write the synthetic folder DIR")
    ap.add_argument("--out", type=Path, default=None, help="experiment folder (default: a temporary one)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        print(f"error: --device cuda, but this machine has no usable CUDA device (torch {torch.__version__}, "
              f"built for CUDA {torch.version.cuda or 'none'}); use --device cpu", file=sys.stderr)
        return 2
    over = [*args.set, f"trainer.device={args.device}"]
    over += [f"trainer.precision={args.precision}"] if args.precision else []
    over += ["trainer.tf32=false"] if args.no_tf32 else []
    over += [f"trainer.global_batch={args.batch}"] if args.batch else []
    over += [f"data.num_workers={args.workers}"] if args.workers is not None else []
    cfg, recipe = recipe_config(args.recipe, over)
    batch = cfg.trainer.global_batch
    if args.make_data:
        make_data(args.make_data, args.utts or 4 * batch, args.seconds)
        return 0
    steps = args.steps or cfg.trainer.log_every
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 2)
    # One epoch longer than every block together: the loop never reaches an epoch end.
    cfg.trainer.epochs, cfg.trainer.steps_per_epoch = 1, args.rounds * (warmup + steps) + 1
    with tempfile.TemporaryDirectory(prefix="bench_train_loop_") as tmp:
        data_dir = args.data or make_data(Path(tmp) / "data", args.utts or 4 * batch, args.seconds)
        data = DataDir.load(data_dir)
        trainer = Trainer(cfg, DinoMethod(), data, args.out or Path(tmp) / "exp")
        loop_s, step_s, writes = run_blocks(trainer, cfg, args.rounds, warmup, steps)

    every, every_from = cfg.trainer.checkpoint_every, "trainer.checkpoint_every"
    if not every:
        every, every_from = (args.epoch_steps, "--epoch-steps") if args.epoch_steps else epoch_steps(recipe, batch, data)
        every_from = f"epoch ends ({every_from})"
    checkpoint_s = statistics.median(writes)
    loop_step = statistics.median(loop_s) / steps
    bare_step = statistics.median(step_s) / steps
    loop_utt_s = batch / (loop_step + checkpoint_s / max(every, 1))
    step_utt_s = batch / bare_step
    res = {
        "bench": "train_loop", "recipe": str(args.recipe), "loop_utt_s": round(loop_utt_s, 2),
        "step_utt_s": round(step_utt_s, 2), "ratio": round(loop_utt_s / step_utt_s, 4),
        "loop_utt_s_without_checkpoints": round(batch / loop_step, 2),
        "checkpoint_s": round(checkpoint_s, 4), "checkpoint_every_steps": every, "checkpoint_every_from": every_from,
        "precision": "bf16 autocast" if trainer.amp else ("fp32 TF32" if trainer.tf32 else "fp32"),
        "encoder": cfg.encoder.name, "batch": batch, "data_workers": trainer.num_workers,
        "log_every": cfg.trainer.log_every, "optimizer": cfg.optim.name,
        "crops": f"{cfg.dino.n_global}x{cfg.dino.global_seconds:g}s + {cfg.dino.n_local}x{cfg.dino.local_seconds:g}s",
        "steps": steps, "warmup": warmup, "rounds": args.rounds,
        "loop_block_utt_s": [round(batch * steps / s, 2) for s in loop_s],
        "step_block_utt_s": [round(batch * steps / s, 2) for s in step_s],
        "data": str(args.data) if args.data else f"synthetic: {len(data.utts)} x {args.seconds:g} s",
        "machine": {**machine_info(), **device_info(device)},
    }
    if cuda:
        res["max_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
