"""End to end: `cdino run ablations-quick` — every arm of the ablation study, 2 seeds, tiny."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from cdino.pipeline.study import ARMS, CLAIMS


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablations") / "study"
    proc = subprocess.run([sys.executable, "-m", "cdino.cli", "run", "ablations-quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_every_arm_has_one_eer_per_seed_and_every_claim_a_verdict(study):
    out, proc = study
    res = json.loads((out / "results.json").read_text())
    assert res["seeds"] == [0, 1]
    assert set(res["arms"]) == set(ARMS)
    for name, arm in res["arms"].items():
        assert len(arm["eer"]) == 2 and all(0.0 <= e <= 1.0 for e in arm["eer"]), name
        assert arm["mean"] == pytest.approx(sum(arm["eer"]) / 2)
    assert set(res["claims"]) == {c.name for c in CLAIMS}
    for claim in res["claims"].values():
        assert claim["verdict"] in ("supported", "contradicted", "not supported (within noise)")
        assert len(claim["eer_diff"]) == 2 and claim["ci95"][0] <= claim["ci95"][1]
    report = (out / "report.md").read_text()
    assert "## Claims" in report and (out / "plots" / "eer_by_seed.png").is_file()
    assert "study finished" in proc.stdout


def test_seeds_share_the_data_and_differ_in_training(study):
    out, _ = study
    seeds = [json.loads((out / f"seed{s}" / "results.json").read_text()) for s in (0, 1)]
    assert seeds[0]["test"]["trials"] == seeds[1]["test"]["trials"]
    w0 = (out / "seed0" / "dino" / "model" / "encoder.safetensors").read_bytes()
    w1 = (out / "seed1" / "dino" / "model" / "encoder.safetensors").read_bytes()
    assert w0 != w1  # trainer.seed differs per seed folder
    for r in seeds:
        # equal-cost controls, the weak face proxy arm and the label-free validation EER
        assert set(r["controls"]) == {"dino_equal", "supervised_full"}
        assert r["controls"]["supervised_full"]["steps"] > r["supervised"]["steps"]
        assert "audio_visual_weak" in r["ablations"]
        assert {"visual_only", "visual_only_weak"} <= set(r["baselines"])
        assert any("valid_eer" in s for s in r["stages"])  # (k-means may find one cluster in 9 utterances)
    dino = json.loads((out / "seed0" / "dino" / "done.json").read_text())
    assert dino["valid_utts"] == 9  # held out of training: the 36-utterance corpus less a quarter
    assert len((out / "split" / "train" / "wav.scp").read_text().splitlines()) == 27
    # DINO continued for exactly C-DINO's steps, from the same DINO model
    info = lambda p: yaml.safe_load((p / "model" / "config.yaml").read_text())["info"]
    assert info(out / "seed0" / "controls" / "dino_equal")["steps"] == info(out / "seed0" / "cdino")["steps"]
    assert info(out / "seed0" / "controls" / "dino_equal")["method"] == "dino"
    # the weak face proxy is weaker than the default one on the same test trials
    b = seeds[0]["baselines"]
    assert b["visual_only_weak"]["eer"] > b["visual_only"]["eer"]


def test_rerun_skips_every_finished_seed(study):
    out, _ = study
    proc = subprocess.run([sys.executable, "-m", "cdino.cli", "run", "ablations-quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("done, skipped") >= 2 * 8
    assert "[dino] running" not in proc.stdout


def _make_study_corpus(out: str, log: str, start) -> None:
    """One study process on a shared folder, up to its corpus (the corpus itself faked: it
    logs that it was made and takes a second)."""
    import time
    from pathlib import Path

    from cdino.pipeline.method import MethodPipeline, load_recipe

    def fake_corpus(self):
        with open(log, "a") as f:
            f.write("made\n")
        time.sleep(1.0)
        (Path(out) / "corpus").mkdir(parents=True, exist_ok=True)
        return {}

    MethodPipeline.stage_corpus = fake_corpus
    pipe = MethodPipeline(load_recipe("ablations-quick"), Path(out))
    start.wait(60)
    pipe.study_corpus()


def test_seed_processes_sharing_a_folder_make_its_corpus_once(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    start = ctx.Event()
    out, log = tmp_path / "study", tmp_path / "log"
    procs = [ctx.Process(target=_make_study_corpus, args=(str(out), str(log), start)) for _ in range(3)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert log.read_text().splitlines() == ["made"]
    assert (out / "corpus" / "done.json").is_file()


@pytest.mark.parametrize("stage", ["dino", "cdino", "supervised"])
def test_the_study_trains_the_demos_stages(stage):
    """The study measures the demo's method: its DINO, C-DINO and supervised stages train
    with the demo's settings (a setting chosen for the demo must reach the study too)."""
    from cdino.config import to_dict
    from cdino.pipeline.method import stage_train_config

    demo, _ = stage_train_config("demo", stage)
    study, _ = stage_train_config("ablations", stage)
    a, b = to_dict(demo), to_dict(study)
    a["trainer"].pop("progress"), b["trainer"].pop("progress")  # the study logs, the demo draws bars
    assert a == b
