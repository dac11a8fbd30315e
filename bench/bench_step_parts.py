"""Where a DINO step's time goes on the CPU, and what a second core adds, as one JSON object.

One step is cdino's own ``DinoMethod.training_step`` plus backward, gradient clipping, an
SGD step and the teacher EMA, on random crops of random waveforms (the set-up of
``bench_dino_step.py``; bf16 autocast where the trainer would use it). The step is split
by timing the modules it calls: ``frontend`` (augmentation + fbank of all crops),
``student_forward`` (encoder + head on every crop), ``teacher_forward`` (globals),
``loss`` (the rest of ``training_step``: DINO loss and its statistics), ``backward``,
``optimizer`` (clipping, SGD, EMA) and ``crops`` (cutting the crops).

Three runs, each in its own process: two threads alone, one thread alone, and two
one-thread copies side by side (their timed steps start together), alternated ``--reps``
times; medians are reported with every run's figures. ``scaling_two_threads`` is the
one-thread step over the two-thread step; ``pair_throughput_vs_two_threads`` is the
steps per second of the two copies together over those of the one two-thread process:
above 1, two independent one-thread jobs (stages run side by side, or ranks) would finish
sooner than one job on two threads. Run it alone.

    python bench/bench_step_parts.py --recipe demo > bench/results/step_parts/demo_2.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def child(recipe: str, threads: int, steps: int, warmup: int, go: str | None) -> dict:
    sys.path.insert(0, str(HERE))
    from bench_dino_step import PARTS, make_step, stage_config

    from cdino.allocator import keep_freed_memory
    from cdino.models.inference import fast_bf16

    keep_freed_memory()  # as the trainer does
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device("cpu")
    bf16 = bool(fast_bf16(device))
    totals = dict.fromkeys(PARTS, 0.0)
    step = make_step(device, bf16, stage_config("ecapa_tdnn", 0, 32, recipe), totals=totals)

    for i in range(warmup):
        step(i)
    for k in totals:
        totals[k] = 0.0
    if go:  # side by side: start the timed steps together
        Path(f"{go}.ready.{os.getpid()}").touch()
        while not Path(go).exists():
            time.sleep(0.01)
    began = time.time()
    t0 = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    wall = time.perf_counter() - t0
    return {"threads": threads, "bf16": bf16, "steps": steps, "step_ms": 1000 * wall / steps,
            "window": [round(began, 2), round(time.time(), 2)],
            "parts_ms": {k: round(1000 * v / steps, 2) for k, v in totals.items()}}


def _spawn(args, threads: int, go: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, "--child", str(threads), "--recipe", args.recipe,
           "--steps", str(args.steps), "--warmup", str(args.warmup)] + (["--go", go] if go else [])
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)


def _side_by_side(args) -> list[dict]:
    """Two one-thread copies whose timed steps start at the same moment."""
    with tempfile.TemporaryDirectory() as tmp:
        go = str(Path(tmp) / "go")
        procs = [_spawn(args, 1, go), _spawn(args, 1, go)]
        while len(list(Path(tmp).glob("go.ready.*"))) < 2:
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.01)
        Path(go).touch()
        return [_result(p) for p in procs]


def _result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"bench_step_parts: a child exited with {proc.returncode}")
    return json.loads(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="demo", help="built-in recipe whose DINO stage is timed")
    ap.add_argument("--steps", type=int, default=15, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--reps", type=int, default=3, help="alternations of the three runs (medians reported)")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--go", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.recipe, args.child, args.steps, args.warmup, args.go)))
        return
    load_before = list(os.getloadavg())
    reps = []
    for _ in range(args.reps):  # alternated, so that a drift of the machine hits all three
        two = _result(_spawn(args, 2))
        one = _result(_spawn(args, 1))
        side = _side_by_side(args)
        pair_step = sum(r["step_ms"] for r in side) / 2
        reps.append({"two_threads": two, "one_thread": one, "two_one_thread_copies_side_by_side": side,
                     "scaling_two_threads": one["step_ms"] / two["step_ms"],
                     "pair_throughput_vs_two_threads": 2 * two["step_ms"] / pair_step})
    res = {"bench": "step_parts", "recipe": args.recipe, "cores": os.cpu_count(),
           "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load_avg_before": load_before,
           "load_avg_after": list(os.getloadavg()),
           "median_two_threads_step_ms": statistics.median(r["two_threads"]["step_ms"] for r in reps),
           "median_one_thread_step_ms": statistics.median(r["one_thread"]["step_ms"] for r in reps),
           "median_scaling_two_threads": statistics.median(r["scaling_two_threads"] for r in reps),
           "median_pair_throughput_vs_two_threads": statistics.median(
               r["pair_throughput_vs_two_threads"] for r in reps),
           "median_parts_ms_two_threads": {k: statistics.median(r["two_threads"]["parts_ms"][k] for r in reps)
                                           for k in reps[0]["two_threads"]["parts_ms"]},
           "reps": reps}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
