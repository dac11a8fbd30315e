"""The demo's DINO step with the pooling's fused moments against the plain formulas, as JSON.

    python bench/bench_pool_moments.py [--rounds 8]

One process, one model: ``cdino.models.pooling`` computes its mean/std moments either
with its autograd functions (``fused``, what training uses) or, with its TorchScript
switch forced on, with the plain tensor operations (``plain``; the frame tensor is
still cast to fp32 once). The two alternate in blocks of 5 steps (the order flips every
round), so the machine's drift falls on both; ``median_plain_over_fused`` > 1: the fused
moments are faster. The step is bench_dino_step's (the demo's DINO stage: ECAPA-TDNN
small, K = 4096, batch 32, 2 x 2 s + 2 x 1 s crops, bf16 autocast where the CPU has it).
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_dino_step as b  # noqa: E402
from cdino.allocator import keep_freed_memory  # noqa: E402
from cdino.models import pooling  # noqa: E402
from cdino.models.inference import fast_bf16  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    keep_freed_memory()
    bf16 = bool(fast_bf16(torch.device("cpu")))
    cfg = b.stage_config("ecapa_tdnn_small", 4096, 32, "demo")
    torch.manual_seed(0)
    step = b.make_step(torch.device("cpu"), bf16, cfg)
    switches = {"fused": pooling.use_plain_ops, "plain": lambda: True}
    for i in range(3):
        step(i)
    ms: dict[str, list[float]] = {"fused": [], "plain": []}
    k = 3
    for r in range(args.rounds):
        for name in ("plain", "fused") if r % 2 else ("fused", "plain"):
            pooling.use_plain_ops = switches[name]
            t = time.perf_counter()
            for _ in range(5):
                step(k)
                k += 1
            ms[name].append((time.perf_counter() - t) / 5 * 1000)
    pooling.use_plain_ops = switches["fused"]
    ratios = sorted(p / f for p, f in zip(ms["plain"], ms["fused"]))
    print(json.dumps({"bench": "pool_moments", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "cpu": platform.processor() or "cpu", "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "bf16_autocast": bf16,
                      "step_ms": ms, "ratios_plain_over_fused": ratios,
                      "median_plain_over_fused": ratios[len(ratios) // 2]}, indent=1))


if __name__ == "__main__":
    main()
