"""End to end: `cdino demo --quick` (the main job on the built-in corpus, small)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cdino.cli import main

STAGE_KEYS = {"name", "eer", "mindcf_0.01", "mindcf_0.05", "seconds"}


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "cdino-demo"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cdino.cli", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc, time.perf_counter() - t0


def test_quick_demo_writes_results_report_and_model(quick_demo):
    out, proc, seconds = quick_demo
    res = json.loads((out / "results.json").read_text())
    assert set(res) >= {"test", "scoring", "stages", "final", "baselines", "supervised", "ablations", "seconds"}
    assert res["scoring"] == "cosine, train-mean subtracted"
    assert res["test"]["n_trials"] > 1000
    names = [s["name"] for s in res["stages"]]
    rounds = sum(n.startswith("pseudo_r") for n in names)
    assert rounds >= 1
    assert names == ["dino", "cdino"] + [f"pseudo_r{i}" for i in range(1, rounds + 1)] + \
        [f"mm_r{i}" for i in range(1, rounds + 1)]
    assert res["final"] == f"mm_r{rounds}"
    for s in res["stages"]:
        assert STAGE_KEYS <= set(s) and 0.0 <= s["eer"] <= 1.0 and s["seconds"] > 0
        assert s["eer_ci95"][0] <= s["eer"] <= s["eer_ci95"][1]
    for s in res["stages"][2:]:
        assert 0.0 <= s["nmi"] <= 1.0  # clustering diagnostic of every round
    assert set(res["baselines"]) == {"untrained", "fbank_stats", "visual_only"}
    assert res["baselines"]["visual_only"]["eer"] < 0.3  # the face proxy alone is informative
    # every gated epoch reports which share of its unreliable samples label correction took back
    gated = [g for s in res["stages"] for g in s.get("gate", []) if g.get("threshold") is not None]
    assert gated and all(0.0 <= g["corrected_of_unreliable"] <= 1.0 for g in gated)
    # the visual view learns: round 2 of the audio-visual rounds clusters on round 1's network
    mm2 = json.loads((out / "mm" / "round2" / "clustering.json").read_text())
    assert mm2["visual_view"] == "round 1's visual network"
    assert res["baselines"]["fbank_stats"]["eer"] > 0.15  # the corpus is not trivial
    assert {"eer", "mindcf_0.01", "mindcf_0.05", "seconds"} <= set(res["supervised"])
    assert set(res["ablations"]) >= {"gate_off", "dlg_lc"}
    report = (out / "report.md").read_text()
    assert "supervised reference" in report and "| dino |" in report
    for png in ("eer_by_stage.png", "det.png"):
        assert (out / "plots" / png).stat().st_size > 5000
    assert "stage" in proc.stdout and "supervised" in proc.stdout  # the summary table


def test_quick_demo_console_and_report_agree(quick_demo):
    """Stage-labelled EER lines, a final summary with ablations and targets, baselines with
    their time, every round's gate plots, and one total everywhere."""
    import re

    out, proc, _ = quick_demo
    res = json.loads((out / "results.json").read_text())
    for s in res["stages"]:
        assert f"[{s['name']}] EER " in proc.stdout
    summary = proc.stdout[proc.stdout.index("stage "):]
    for name in res["ablations"]:
        assert f"ablation {name}" in summary
    assert re.search(r"^target (met|MISSED): ", summary, flags=re.M)
    assert all(b["seconds"] > 0 for b in res["baselines"].values())
    report = (out / "report.md").read_text()
    assert "| baseline: untrained |" in report and "| 0 |\n| baseline: fbank" not in report
    plots = sorted(p.relative_to(out).as_posix() for p in out.glob("*/round*/plots/*.png"))
    assert any("round1" in p for p in plots)
    for p in plots:
        assert f"({p})" in report, p
    total = round(res["seconds"]["total"])
    assert f"total {total} s" in report or f"total {total - 1} s" in report or f"total {total + 1} s" in report
    printed = int(re.search(r"pipeline finished: (\d+) s in all", proc.stdout).group(1))
    assert abs(printed - res["seconds"]["total"]) <= 1
    assert "targets: goals of the method's paper" in summary  # what a target is, said once
    assert proc.stdout.rstrip().splitlines()[-1].startswith(f"model folder: {out / 'model'} (cdino verify")


def test_demo_model_folder_is_usable(quick_demo, tmp_path, capsys):
    out, _, _ = quick_demo
    wavs = sorted((out / "corpus" / "test" / "wav").rglob("*.wav"))
    assert main(["verify", "--model", str(out / "model"), str(wavs[0]), str(wavs[-1])]) == 0
    assert "decision=" in capsys.readouterr().out
    assert main(["eval", "--model", str(out / "model"), "--data", str(out / "corpus" / "test"),
                 "--trials", str(out / "corpus" / "test" / "trials"), "--json", str(tmp_path / "r.json"),
                 "--device", "cpu"]) == 0
    final = json.loads((out / "results.json").read_text())
    by_name = {s["name"]: s for s in final["stages"]}
    again = json.loads((tmp_path / "r.json").read_text())
    assert again["eer"] == pytest.approx(by_name[final["final"]]["eer"], abs=1e-9)


def test_rerun_skips_finished_stages(quick_demo):
    out, _, first_seconds = quick_demo
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cdino.cli", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("done, skipped") >= 7
    assert time.perf_counter() - t0 < first_seconds / 2


def _model_difference(a: Path, b: Path) -> float:
    """Relative L2 difference of two model folders' tensors (weights and BatchNorm statistics)."""
    from safetensors.numpy import load_file

    x, y = load_file(str(a / "encoder.safetensors")), load_file(str(b / "encoder.safetensors"))
    keys = [k for k in x if not k.endswith("num_batches_tracked")]
    diff = sum(float(((x[k].astype(np.float64) - y[k]) ** 2).sum()) for k in keys)
    return (diff / sum(float((x[k].astype(np.float64) ** 2).sum()) for k in keys)) ** 0.5


def test_quick_demo_on_two_ranks_matches_one(quick_demo, tmp_path):
    """`torchrun --nproc_per_node 2 … demo --quick` (gloo, CPU) runs every stage and computes
    what one process computes. The quick recipe fixes the micro-batch (16), so both runs
    see the same batches; BatchNorm statistics, the correction's alignment and move cap are
    combined over the ranks as one process has them. What remains is the order of
    floating-point sums (DDP averaging vs accumulation): the stages without sample-by-sample
    decisions (DINO, C-DINO, the supervised reference) end with the same model to float
    rounding, and each first round clusters that model into the same pseudo labels.
    Afterwards the gates and corrections decide per sample, a flip of one sample grows over
    the rounds, and the later rounds' EERs are not compared; the 2-rank run must learn, and
    every rank gates with one threshold."""
    import shutil

    one_out, _, _ = quick_demo
    out = tmp_path / "two"
    shutil.copytree(one_out / "corpus", out / "corpus")  # the same corpus, its stage marked done
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "cdino.cli", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=1500,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    one = json.loads((one_out / "results.json").read_text())
    two = json.loads((out / "results.json").read_text())
    assert [s["name"] for s in two["stages"]] == [s["name"] for s in one["stages"]]
    assert two["final"] == one["final"]
    assert set(two["ablations"]) == set(one["ablations"]) and set(two["baselines"]) == set(one["baselines"])
    # Same model, same test set: the untrained baseline is identical.
    assert two["baselines"]["untrained"]["eer"] == pytest.approx(one["baselines"]["untrained"]["eer"], abs=1e-9)
    # Smooth stages: the same model to float rounding (measured 4e-8 to 7e-8; rank 0's BatchNorm
    # statistics alone, as DDP keeps them by default, gave 5e-3 to 2e-2).
    for stage in ("dino", "cdino", "supervised"):
        assert _model_difference(one_out / stage / "model", out / stage / "model") < 1e-4, stage
    for stage in ("pseudo", "mm"):
        a, b = (np.load(d / stage / "round1" / "labels.npy") for d in (one_out, out))
        assert (a == b).mean() >= 0.95, stage  # the first round's clusters of the same model
        for r in (1, 2):
            for e in json.loads((out / stage / f"round{r}" / "summary.json").read_text())["epochs"]:
                assert e["rank_thresholds"] == [e["threshold"]] * 2
    pairs = {a["name"]: (a["eer"], b["eer"]) for a, b in zip(one["stages"], two["stages"])}
    assert two["stages"][-1]["eer"] <= two["stages"][0]["eer"] - 0.05, pairs
    assert proc.stdout.count("[report] running") == 1  # one console: rank 0's
