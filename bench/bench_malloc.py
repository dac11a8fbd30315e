"""The demo's DINO step with cdino's heap setting (cdino/allocator.py) and with glibc's
defaults, alternated, as one JSON object.

Each run is a fresh ``bench/bench_dino_step.py --device cpu --recipe demo`` process
(fp32 and bf16 variants, as that script times them); ``CDINO_MALLOC=default`` turns the
setting off. Per run: utterances per second of both variants, and the child's minor page
faults, system and user CPU seconds and peak resident memory (``os.wait4``).

    python bench/bench_malloc.py --pairs 3 --steps 20 --warmup 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

STEP_BENCH = Path(__file__).with_name("bench_dino_step.py")


def one_run(kept: bool, steps: int, warmup: int) -> dict:
    env = dict(os.environ)
    env.pop("CDINO_MALLOC", None)
    if not kept:
        env["CDINO_MALLOC"] = "default"
    cmd = [sys.executable, str(STEP_BENCH), "--device", "cpu", "--recipe", "demo",
           "--steps", str(steps), "--warmup", str(warmup)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"bench_dino_step.py failed (exit {proc.returncode})")
    res = json.loads(out)
    if res["malloc_kept"] != kept:
        sys.exit(f"the child reports malloc_kept={res['malloc_kept']}, expected {kept}")
    return {"malloc_kept": kept, "wall_s": round(time.perf_counter() - t0, 2),
            "fp32_utt_per_s": round(res["eager_fp32"]["utt_per_s"], 2),
            "bf16_utt_per_s": round(res["bf16"]["utt_per_s"], 2) if "bf16" in res else None,
            "minor_faults": usage.ru_minflt, "sys_s": round(usage.ru_stime, 2),
            "user_s": round(usage.ru_utime, 2), "max_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3, help="kept/default pairs, alternated")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    runs = []
    for i in range(args.pairs):
        order = (True, False) if i % 2 == 0 else (False, True)
        runs.extend(one_run(kept, args.steps, args.warmup) for kept in order)

    def median(kept: bool, key: str):
        vals = [r[key] for r in runs if r["malloc_kept"] == kept and r[key] is not None]
        return statistics.median(vals) if vals else None

    summary = {}
    for key in ("fp32_utt_per_s", "bf16_utt_per_s", "minor_faults", "sys_s", "max_rss_mb"):
        a, b = median(True, key), median(False, key)
        summary[key] = {"kept": a, "default": b, "ratio": round(a / b, 3) if a and b else None}
    print(json.dumps({"bench": "malloc", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                      "cores": os.cpu_count(), "steps": args.steps, "warmup": args.warmup,
                      "median": summary, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
