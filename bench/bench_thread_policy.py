"""Seconds per DINO step of the demo's config under OpenMP wait policies, alone and with a
busy loop on the machine, as one JSON object.

Each variant runs ``cdino train --recipe demo --stage dino`` on ``--data`` (the demo
corpus's ``train/``) and times its own log lines: alone from step 20 to step 100; under
load, a ``python -c "while True: pass"`` starts once step 20 is logged (after the thread
count was picked) and the time runs from step 20 to step 60. Variants: cdino's default
(auto threads, OpenMP's own spin-then-sleep waiting, the load governor), passive waiting
(``OMP_WAIT_POLICY=PASSIVE``) and one thread (``CDINO_THREADS=1``). Run it alone.

    python bench/bench_thread_policy.py --data /tmp/demo/corpus/train > bench/results/thread_policy.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

VARIANTS = {  # name: environment changes
    "default": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "one_thread": {"CDINO_THREADS": "1"},
}


def _step_times(log: Path) -> dict[int, float]:
    out = {}
    if not log.is_file():
        return out
    for line in log.read_text(errors="replace").splitlines():
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) step (\d+) ", line)
        if m:
            out[int(m.group(2))] = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
    return out


def run(name: str, env_over: dict, data: Path, work: Path, load: bool, timeout: float) -> dict:
    out = work / f"{name}{'_load' if load else ''}"
    shutil.rmtree(out, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "CDINO_THREADS")}
    env.update({"CDINO_NO_PROGRESS": "1", **env_over})
    cmd = [sys.executable, "-m", "cdino.cli", "train", "--recipe", "demo", "--stage", "dino", "--data", str(data),
           "--out", str(out), "--set", "trainer.epochs=1", "--set", "trainer.steps_per_epoch=100",
           "--set", "trainer.log_every=20", "--set", "trainer.tensorboard=false"]
    job = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    busy = None
    end_step = 60 if load else 100
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < timeout and job.poll() is None:
            steps = _step_times(out / "train.log")
            if load and busy is None and 20 in steps:
                busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            if end_step in steps:
                break
            time.sleep(0.5)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
        job.kill()
        job.wait()
    steps = _step_times(out / "train.log")
    text = (out / "train.log").read_text(errors="replace") if (out / "train.log").is_file() else ""
    m = re.search(r"(\d+) CPU threads", text)
    switches = re.findall(r"step (\d+): (\d+) CPU threads? \(other processes' load changed\)", text)
    res = {"variant": name, "busy_loop": load, "env": env_over, "threads_at_start": int(m.group(1)) if m else None,
           "thread_switches": [{"step": int(a), "threads": int(b)} for a, b in switches]}
    if 20 in steps and end_step in steps:
        res["s_per_step"] = round((steps[end_step] - steps[20]) / (end_step - 20), 4)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="training data folder (the demo corpus's train/)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--timeout", type=float, default=400.0, help="seconds per run at most")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="cdino-threads-"))
    rows = []
    try:
        for load in (False, True):
            for name in args.variants:
                if load and name == "one_thread":
                    continue  # one thread never waits for a sibling
                rows.append(run(name, VARIANTS[name], args.data, work, load, args.timeout))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"bench": "thread_policy", "steps": "alone 20->100, busy loop 20->60",
                      "cores": len(os.sched_getaffinity(0)), "load_avg": os.getloadavg(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
