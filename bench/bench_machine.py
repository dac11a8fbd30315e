"""How fast this machine is today, as one JSON object: a yardstick for wall-clock figures.

Cloud machines of one class differ from day to day (CPU steal, noisy neighbours, clock
speed), and a demo's wall time means little without knowing which day's machine ran it.
Run this beside (before or after, never during) a timed run and record both. Measures:

- ``gflops_fp32_1t`` / ``gflops_fp32_2t``: 1024² float32 matrix products, one and two threads;
- ``gflops_bf16_2t``: the same in bfloat16 (fast only on CPUs with AMX / AVX512-BF16);
- ``python_loop_s``: 3 M iterations of a pure-Python loop (the interpreter's speed);
- ``fft_s``: 200 real FFTs of 2^16 samples with NumPy (the corpus generator's kind of work);
- ``copy_gb_s``: memory bandwidth of copying a 256 MB array;
- ``steal_percent``: CPU steal over the run, from ``/proc/stat`` (time the hypervisor gave
  to other guests).

    python bench/bench_machine.py > bench/results/machine_<date>.json
"""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime, timezone

import numpy as np
import torch


def _cpu_times() -> list[int]:
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def _matmul_gflops(threads: int, dtype: torch.dtype, n: int = 1024, reps: int = 30) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, time.perf_counter() - t)
    return round(reps * 2 * n ** 3 / best / 1e9, 1)


def _python_loop() -> float:
    t = time.perf_counter()
    s = 0
    for i in range(3_000_000):
        s += i * i
    return round(time.perf_counter() - t, 3)


def _fft() -> float:
    x = np.random.default_rng(0).standard_normal(1 << 16)
    t = time.perf_counter()
    for _ in range(200):
        np.fft.rfft(x)
    return round(time.perf_counter() - t, 3)


def _copy_bandwidth() -> float:
    a = np.ones(32 * 1024 * 1024)  # 256 MB of float64
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t)
    return round(2 * a.nbytes / best / 1e9, 2)  # read + write


def main() -> None:
    before = _cpu_times()
    out = {
        "bench": "machine",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "gflops_fp32_1t": _matmul_gflops(1, torch.float32),
        "gflops_fp32_2t": _matmul_gflops(2, torch.float32),
        "gflops_bf16_2t": _matmul_gflops(2, torch.bfloat16),
        "python_loop_s": _python_loop(),
        "fft_s": _fft(),
        "copy_gb_s": _copy_bandwidth(),
    }
    after = _cpu_times()
    delta = [b - a for a, b in zip(before, after)]
    out["steal_percent"] = round(100.0 * delta[7] / max(1, sum(delta)), 1) if len(delta) > 7 else None
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
