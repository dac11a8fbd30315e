"""bench/bench_cpu_load.py at tiny size: one JSON object, alone vs two copies at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_cpu_load.py"
TINY = ["--epochs", "1", "--set", "trainer.global_batch=8", "--set", "trainer.micro_batch=0",
        "--set", "dino.out_dim=32", "--set", "dino.hidden_dim=16", "--set", "dino.bottleneck_dim=8",
        "--set", "dino.global_seconds=0.5", "--set", "dino.local_seconds=0.3", "--set", "dino.n_local=1"]


def _bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "CDINO_THREADS": "1"}
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_alone_then_two_copies_one_json_object(tiny_data, tmp_path):
    work = tmp_path / "work"
    got = _bench("--corpus", str(tiny_data), "--work", str(work), *TINY)
    assert got.returncode == 0, got.stderr[-2000:]
    lines = [l for l in got.stdout.splitlines() if l.strip()]
    assert len(lines) == 1
    res = json.loads(lines[0])
    assert res["alone_s"] > 0 and res["shared_s"] > 0 and res["copies"] == 2
    assert len(res["shared_each_s"]) == 2
    assert abs(res["slowdown"] - res["shared_s"] / res["alone_s"]) < 0.01
    assert res["timed_out"] == {"alone": False, "shared": False}
    assert res["machine"]["cores_available"] >= 1 and "torch" in res["machine"]
    assert res["job"]["epochs"] == 1 and res["job"]["threads_env"] == "1"
    # every job really trained and exported a model folder
    for name in ("alone0", "shared0", "shared1"):
        assert (work / name / "model" / "encoder.safetensors").is_file(), name
        assert "precision" in (work / name / "train.log").read_text()


def test_jobs_past_the_timeout_are_stopped_and_flagged(tiny_data, tmp_path):
    work = tmp_path / "work"
    got = _bench("--corpus", str(tiny_data), "--work", str(work), "--timeout", "0.5", *TINY)
    assert got.returncode == 0, got.stderr[-2000:]
    res = json.loads(got.stdout)
    assert res["timed_out"] == {"alone": True, "shared": True}
    assert res["alone_s"] == 0.5 and res["shared_each_s"] == [0.5, 0.5]
    assert not (work / "alone0" / "model").exists()  # stopped before it finished


def test_a_folder_without_data_is_a_one_line_error(tmp_path):
    got = _bench("--corpus", str(tmp_path), *TINY, timeout=120)
    assert got.returncode != 0
    assert "neither a data folder" in got.stderr and str(tmp_path) in got.stderr
