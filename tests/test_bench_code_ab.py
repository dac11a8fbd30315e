"""bench/bench_code_ab.py: the steady-state rate it reads from a train.log, and its input checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import load_bench

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_code_ab.py"



def test_rate_is_taken_between_the_first_and_last_logged_step(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("2026-12-02 10:00:00 precision fp32, 2 CPU threads\n"
                   "2026-12-02 10:00:30 step 20 epoch 1 loss=8.1 utt_per_s=21.3\n"
                   "2026-12-02 10:00:40 step 40 epoch 1 loss=8.0 utt_per_s=60.0\n"
                   "2026-12-02 10:00:40 epoch 1: {\"x\": 1}\n"
                   "2026-12-02 10:01:10 step 100 epoch 1 loss=7.9 utt_per_s=64.0\n")
    got = load_bench("bench_code_ab").steady_rate(log, batch=32)
    # 80 steps of 32 in 40 s; the start-up before step 20 is not counted
    assert got == {"first_step": 20, "last_step": 100, "seconds": 40.0, "utt_per_s": 64.0}


def test_a_log_with_one_step_is_an_error_not_a_rate(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("2026-12-02 10:00:30 step 20 epoch 1 loss=8.1\n")
    with pytest.raises(ValueError, match="fewer than two logged steps"):
        load_bench("bench_code_ab").steady_rate(log, batch=32)


def test_a_tree_without_cdino_is_a_one_line_error(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "wav.scp").write_text("")
    got = subprocess.run([sys.executable, str(BENCH), "--a", str(tmp_path), "--b", str(tmp_path),
                          "--data", str(tmp_path / "data")], capture_output=True, text=True, timeout=60)
    assert got.returncode == 2
    assert got.stderr.strip().splitlines() == [f"--a {tmp_path}: no cdino package in this folder"]


def test_each_run_imports_its_own_trees_cdino_even_from_a_checkout_root(tmp_path):
    # A stub package: a run that imported it, and not the checkout's cdino (python -m puts the
    # working directory first), writes no train.log, and the bench says so.
    tree = tmp_path / "tree"
    (tree / "cdino").mkdir(parents=True)
    (tree / "cdino" / "__init__.py").write_text("")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "wav.scp").write_text("")
    repo_root = BENCH.parent.parent
    assert load_bench("bench_code_ab").package_of(tree) == (tree / "cdino").resolve()
    got = subprocess.run([sys.executable, str(BENCH), "--a", str(tree), "--b", str(tree), "--data",
                          str(tmp_path / "data"), "--reps", "1", "--seconds", "60"],
                         cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert got.returncode == 2
    assert got.stderr.strip().splitlines() == [f"{tree.resolve()}: the run wrote no train.log "
                                               "(does this tree's cdino have `train --recipe`?)"]
