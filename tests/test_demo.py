"""End to end: `cdino demo --quick` (the main job on the built-in corpus, small)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

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


def test_quick_demo_on_two_ranks_matches_one(quick_demo, tmp_path):
    """`torchrun --nproc_per_node 2 … demo --quick` (gloo, CPU) runs every stage and lands
    near the 1-process run. The quick recipe fixes the micro-batch (16), so both runs see
    the same batches; they differ by the order of floating-point sums only (DDP averaging
    vs accumulation), which a few hundred steps and k-means amplify, most in the last
    rounds (mm_r2 once differed by 7.0 points, 33.3 against 26.3 %, with both runs sound).
    Tolerance: 9 EER points for any stage and 4 on average over the stages (the quick
    demo's EERs are 25–45 % on 4,000 trials; their 95 % bootstrap intervals are about
    ±1.5 points, seed-to-seed spread several points), and the 2-rank run must learn: its
    final stage at least 5 points below its DINO stage. A rank that trained on the wrong
    labels or gate would miss by far more (chance is 50 %)."""
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
    diffs = {a["name"]: abs(a["eer"] - b["eer"]) for a, b in zip(one["stages"], two["stages"])}
    pairs = {a["name"]: (a["eer"], b["eer"]) for a, b in zip(one["stages"], two["stages"])}
    assert max(diffs.values()) <= 0.09, pairs
    assert sum(diffs.values()) / len(diffs) <= 0.04, pairs
    assert two["stages"][-1]["eer"] <= two["stages"][0]["eer"] - 0.05, pairs
    assert abs(one["supervised"]["eer"] - two["supervised"]["eer"]) <= 0.06
    assert proc.stdout.count("[report] running") == 1  # one console: rank 0's
