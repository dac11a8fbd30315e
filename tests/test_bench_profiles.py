"""bench/demo_timeline.py (a demo run's time split from its logs) and
bench/bench_step_parts.py (a DINO step split by module)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import load_bench




def _log(path: Path, lines: list[str]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "train.log").write_text("\n".join(lines) + "\n")


def test_timeline_splits_training_from_the_time_between_stages(tmp_path):
    _log(tmp_path / "dino", ["2026-12-03 10:00:00 precision bf16 autocast, 2 CPU threads",
                             "2026-12-03 10:00:10 step 20 epoch 1 loss=8",
                             "2026-12-03 10:01:40 step 200 epoch 1 loss=7",
                             "  a wrapped line without a time stamp"])
    _log(tmp_path / "cdino", ["2026-12-03 10:01:55 precision bf16 autocast, 2 CPU threads",
                              "2026-12-03 10:02:05 clustering epoch=0 n_clusters=3",
                              "2026-12-03 10:02:55 step 100 epoch 1 loss=7",
                              "2026-12-03 10:02:56 epoch 1: {}"])
    (tmp_path / "results.json").write_text(json.dumps({"seconds": {"corpus": 30.0, "total": 200.0}}))
    got = load_bench("demo_timeline").timeline(tmp_path)
    dino, cdino = got["stages"]
    assert dino == {"stage": "dino", "train_log_s": 100.0, "steps": 200, "s_per_step": 0.5,
                    "until_next_stage_s": 15.0}
    assert cdino["train_log_s"] == 61.0 and cdino["steps"] == 100 and cdino["until_next_stage_s"] is None
    assert got["training_logs_s"] == 161.0 and got["between_stages_s"] == 15.0
    assert got["rest_s"] == pytest.approx(200.0 - 30.0 - 161.0 - 15.0)


def test_step_parts_add_up_to_the_step(monkeypatch):
    import torch

    monkeypatch.setattr(sys, "path", list(sys.path))  # child() puts bench/ on the path
    threads = torch.get_num_threads()
    try:
        got = load_bench("bench_step_parts").child("quick", threads=1, steps=2, warmup=1, go=None)
    finally:
        torch.set_num_threads(threads)
    parts = got["parts_ms"]
    assert set(parts) == {"crops", "frontend", "student_forward", "teacher_forward", "loss",
                          "backward", "optimizer"}
    assert all(v > 0 for v in parts.values()), parts
    # the parts cover the step: only the loop's own bookkeeping is left out
    assert sum(parts.values()) == pytest.approx(got["step_ms"], rel=0.05)
    assert parts["backward"] > parts["loss"]
