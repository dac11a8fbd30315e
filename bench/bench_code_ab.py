"""Two versions of cdino on one noisy machine: the demo's DINO stage, A and B alternated.

    python bench/bench_code_ab.py --a /path/to/old/tree --b /path/to/new/tree \
        --data DEMO/corpus/train [--reps 3] [--seconds 110]

A wall time from another day says little on a shared machine whose speed drifts by 2x
within an hour. This runs ``cdino train --recipe demo --stage dino`` from source tree A,
then from B, ``--reps`` times in turn, each for ``--seconds`` (then stopped), and reads the
steady-state rate from the run's ``train.log``: training utterances per second between the
first and the last logged step (start-up, data loading and the first 20 steps excluded).
Alternating spreads the machine's drift over both versions. Prints one JSON object: every
run's rate, each version's median, and ``b_over_a`` (median B / median A; > 1: B faster).
A tree is a folder holding the ``cdino`` package (a checkout or ``git worktree``); each
run starts in its tree with the tree on ``PYTHONPATH``, and the script checks (and records
in ``packages``) that the child imports that tree's cdino. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

STEP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) step (\d+) ")


def steady_rate(log: Path, batch: int) -> dict:
    """Utterances per second between the first and the last logged step of ``train.log``."""
    rows = []
    for line in log.read_text().splitlines():
        m = STEP.match(line)
        if m:
            rows.append((datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"), int(m.group(2))))
    if len(rows) < 2:
        raise ValueError(f"{log}: fewer than two logged steps; give the run more --seconds")
    (t0, s0), (t1, s1) = rows[0], rows[-1]
    seconds = (t1 - t0).total_seconds()
    return {"first_step": s0, "last_step": s1, "seconds": seconds,
            "utt_per_s": round((s1 - s0) * batch / max(seconds, 1.0), 1)}


def fail(message: str) -> None:
    """A one-line error on stderr, exit status 2 (bad input)."""
    print(message, file=sys.stderr)
    sys.exit(2)


def _env(tree: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(tree), "CDINO_NO_PROGRESS": "1"}


def package_of(tree: Path) -> Path:
    """The cdino package a child started as :func:`one_run` starts it imports. It runs in
    ``tree``: ``python -m`` puts the working directory before ``PYTHONPATH``, so from
    another checkout's root the child would import that checkout's cdino instead."""
    got = subprocess.run([sys.executable, "-c", "import cdino; print(cdino.__file__)"], env=_env(tree),
                         cwd=tree, capture_output=True, text=True, timeout=120)
    return Path(got.stdout.strip()).resolve().parent if got.returncode == 0 else Path()


def one_run(tree: Path, data: Path, out: Path, seconds: float) -> None:
    cmd = [sys.executable, "-m", "cdino.cli", "train", "--recipe", "demo", "--stage", "dino",
           "--method", "dino", "--data", str(data.resolve()), "--out", str(out)]
    try:
        subprocess.run(cmd, env=_env(tree), cwd=tree, capture_output=True, timeout=seconds)
    except subprocess.TimeoutExpired:
        pass  # stopped on purpose: only the steady-state rate is wanted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="source tree A (holds the cdino package)")
    ap.add_argument("--b", required=True, help="source tree B")
    ap.add_argument("--data", required=True, help="training data folder (the demo's corpus/train)")
    ap.add_argument("--reps", type=int, default=3, help="runs of each version (default 3)")
    ap.add_argument("--seconds", type=float, default=110.0, help="length of each run (default 110)")
    ap.add_argument("--batch", type=int, default=32, help="the recipe's global batch (the demo's: 32)")
    args = ap.parse_args()
    trees = {"a": Path(args.a).resolve(), "b": Path(args.b).resolve()}
    for name, tree in trees.items():
        if not (tree / "cdino" / "__init__.py").is_file():
            fail(f"--{name} {tree}: no cdino package in this folder")
    packages = {name: package_of(tree) for name, tree in trees.items()}
    for name, tree in trees.items():
        if packages[name] != tree / "cdino":
            fail(f"--{name} {tree}: a child process imports cdino from {packages[name]}, not from this tree")
    if not (Path(args.data) / "wav.scp").is_file():
        fail(f"--data {args.data}: no wav.scp in this folder")
    work = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    runs = []
    try:
        for rep in range(args.reps):
            for name, tree in trees.items():
                out = work / f"{name}{rep}"
                one_run(tree, Path(args.data), out, args.seconds)
                log = out / "train.log"
                if not log.is_file():
                    fail(f"{tree}: the run wrote no train.log (does this tree's cdino have `train --recipe`?)")
                try:
                    runs.append({"version": name, "rep": rep, **steady_rate(log, args.batch)})
                except ValueError as exc:
                    fail(str(exc))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {n: statistics.median(r["utt_per_s"] for r in runs if r["version"] == n) for n in trees}
    print(json.dumps({
        "bench": "code_ab", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": platform.machine(), "cores": os.cpu_count(), "what": "demo DINO stage, steady-state utt/s",
        "a": str(trees["a"]), "b": str(trees["b"]),
        "packages": {n: str(p) for n, p in packages.items()}, "seconds_per_run": args.seconds,
        "runs": runs, "median_utt_per_s": med, "b_over_a": round(med["b"] / med["a"], 3),
    }, indent=1))


if __name__ == "__main__":
    main()
