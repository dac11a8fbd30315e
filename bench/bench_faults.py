"""Reliability figures as JSON: kills survived, bad inputs caught, results lost.

1. Fault injection: DINO → C-DINO → one pseudo-label round on a tiny synthetic data set,
   each run SIGKILLed at every named fault point (mid-checkpoint-write, mid-clustering,
   mid-extraction) and at random times, resumed each time; the final model folders are
   compared bit for bit with an uninterrupted run ("results lost" counts mismatches and
   runs that could not finish).
2. Bad input: the table of tests/test_bad_input.py, run through pytest, counted.

    python bench/bench_faults.py [--random-kills 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import write_speaker_dir  # noqa: E402

from cdino.testing.faults import run_until_done, same_encoder_weights, train_command  # noqa: E402

CFG = ("encoder: {name: ecapa_tdnn_small}\n"
       "trainer: {epochs: 6, global_batch: 8, progress: false, tensorboard: false, threads: 1, checkpoint_every: 1}\n"
       "optim: {name: adamw, lr: 0.001, lr_scale_with_batch: false, warmup_epochs: 0.3}\n"
       "dino: {out_dim: 64, hidden_dim: 32, bottleneck_dim: 16, global_seconds: 0.6, local_seconds: 0.3, n_local: 2}\n"
       "cluster_aware: {n_clusters: 4, recluster_every: 1}\n"
       "pseudo: {rounds: 1, kmeans: {n_clusters: 4}, min_seconds: 0.8, max_seconds: 1.0}\n")

STAGES = [  # (method, named faults, needs --init from)
    ("dino", ["checkpoint_write:2", "checkpoint_write:5", "extraction:1"], None),
    ("cdino", ["clustering:1", "clustering:2", "extraction:2", "checkpoint_write:3"], "dino"),
    ("pseudo", ["extraction:1", "clustering:1", "checkpoint_write:2"], "cdino/model"),
]


class _Count:
    def __init__(self):
        self.passed = self.failed = 0

    def pytest_runtest_logreport(self, report):
        if report.when == "call":
            self.passed += report.passed
            self.failed += report.failed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--random-kills", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CDINO_NO_PROGRESS": "1"}
    out = {"bench": "faults", "date": time.strftime("%Y-%m-%d"), "stages": {}}
    killed = survived = lost = 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_speaker_dir(tmp / "data", 4, 6, 1.5)
        cfg = tmp / "c.yaml"
        cfg.write_text(CFG)
        for method, faults, init in STAGES:
            ref_init = tmp / "ref" / init if init else None
            ref = run_until_done(train_command(method, data, tmp / "ref" / method, cfg, ref_init), [], 0, rng, (0, 0), env)
            t = ref["final_seconds"]
            try:
                got = run_until_done(train_command(method, data, tmp / "faulty" / method, cfg,
                                          tmp / "faulty" / init if init else None),
                                     faults, args.random_kills, rng, (0.3 * t, 0.7 * t), env)
            except RuntimeError as exc:
                lost += 1
                out["stages"][method] = {"error": str(exc)[-500:]}
                continue
            folder = "round1/model" if method == "pseudo" else "model"
            same = same_encoder_weights(tmp / "ref" / method / folder, tmp / "faulty" / method / folder)
            kills = got["named_kills"] + got["random_kills"]
            killed += kills
            survived += kills if same else 0
            lost += 0 if same else 1
            out["stages"][method] = {**got, "same_model_as_uninterrupted": same}
    import pytest

    counter = _Count()
    pytest.main(["-q", "-p", "no:warnings", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_bad_input.py")],
                plugins=[counter])
    out.update({"kills": killed, "kills_survived": survived, "results_lost": lost,
                "bad_inputs_tried": counter.passed + counter.failed, "bad_inputs_caught": counter.passed})
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
