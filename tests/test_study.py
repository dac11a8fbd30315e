"""The ablation study over seeds: per-arm spread, paired bootstrap and verdicts (synthetic)."""

import json

import numpy as np
import pytest

from cdino import metrics
from cdino.pipeline import study
from cdino.errors import DataError

N_TAR, N_NON = 300, 1200
SEEDS = [0, 1, 2]
# Separation of target from non-target scores per arm; dlg and dlg_lc share their scores.
SEPARATION = {"dino": 1.0, "dino_equal": 1.5, "cdino": 2.5, "dlg": 1.5, "fixed_gate": 2.5,
              "audio_visual": 3.0, "supervised": 3.5}
FOLDER = {"dino": "dino", "dino_equal": "dino_equal", "cdino": "cdino", "dlg": "dlg_r1",
          "dlg_lc": "pseudo_r1", "fixed_gate": "fixed_gate_r1", "audio_visual": "mm_r1",
          "supervised": "supervised"}


def _write_scores(path, scores):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"e{i} t{i} {s:.6f}\n" for i, s in enumerate(scores)))
    return np.array([float(f"{s:.6f}") for s in scores])


def _entry(scores, labels, **extra):
    return {"eer": metrics.eer(scores, labels), "mindcf_0.01": metrics.min_dcf(scores, labels, 0.01),
            "mindcf_0.05": metrics.min_dcf(scores, labels, 0.05), **extra}


@pytest.fixture
def study_dir(tmp_path):
    labels = np.r_[np.ones(N_TAR, np.int8), np.zeros(N_NON, np.int8)]
    trials = tmp_path / "corpus" / "test" / "trials"
    trials.parent.mkdir(parents=True)
    trials.write_text("".join(f"e{i} t{i} {'target' if y else 'nontarget'}\n" for i, y in enumerate(labels)))
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        shared = rng.normal(size=labels.size)  # trial difficulty common to every arm
        scores = {}
        for arm, m in SEPARATION.items():
            if arm == "audio_visual" and seed == 2:
                continue  # an arm missing from one seed is skipped
            raw = 0.7 * shared + 0.7 * rng.normal(size=labels.size) + m * labels
            scores[arm] = _write_scores(tmp_path / f"seed{seed}" / "eval" / FOLDER[arm] / "scores.txt", raw)
        scores["dlg_lc"] = _write_scores(tmp_path / f"seed{seed}" / "eval" / "pseudo_r1" / "scores.txt",
                                         scores["dlg"])
        e = {arm: _entry(s, labels) for arm, s in scores.items()}
        stages = [{"name": "dino", **e["dino"]}, {"name": "cdino", **e["cdino"]},
                  {"name": "pseudo_r1", **e["dlg_lc"]}]
        if "audio_visual" in e:
            stages.append({"name": "mm_r1", **e["audio_visual"]})
        results = {"test": {"trials": str(trials), "n_trials": int(labels.size)}, "stages": stages,
                   "baselines": {}, "supervised": e["supervised"],
                   "ablations": {"dlg": e["dlg"], "dlg_lc": e["dlg_lc"], "fixed_gate": e["fixed_gate"]},
                   "controls": {"dino_equal": e["dino_equal"]}, "seconds": {"total": 1.0}}
        (tmp_path / f"seed{seed}" / "results.json").write_text(json.dumps(results))
    return tmp_path


def test_verdicts_spread_and_report(study_dir, capsys):
    summary = study.summarize(study_dir, SEEDS, n_boot=200)
    claims = summary["claims"]
    assert claims["cdino_vs_dino_equal"]["verdict"] == study.SUPPORTED
    assert claims["cdino_vs_dino_equal"]["wins"] == 3
    assert claims["dlg_lc_vs_dlg"]["verdict"] == study.WITHIN_NOISE  # identical scores
    assert claims["dlg_lc_vs_dlg"]["ci95"] == [0.0, 0.0]
    assert claims["dlg_vs_fixed_gate"]["verdict"] == study.CONTRADICTED  # the fixed gate is better here
    assert claims["dlg_vs_fixed_gate"]["ci95"][1] < 0
    assert claims["audio_visual_vs_audio"]["seeds"] == [0, 1]
    assert "dlg_vs_gate_off" not in claims and "gate_off" not in summary["arms"]

    labels = np.r_[np.ones(N_TAR), np.zeros(N_NON)]
    for arm in ("cdino", "dlg_lc"):
        a = summary["arms"][arm]
        want = [metrics.eer(np.loadtxt(study_dir / f"seed{s}" / "eval" / FOLDER[arm] / "scores.txt",
                                       usecols=2), labels) for s in SEEDS]
        assert a["eer"] == want and a["seeds"] == SEEDS
        assert a["mean"] == pytest.approx(np.mean(want)) and a["sd"] == pytest.approx(np.std(want, ddof=1))
    c = claims["cdino_vs_dino_equal"]
    assert c["eer_diff"] == pytest.approx([d - b for d, b in zip(summary["arms"]["dino_equal"]["eer"],
                                                                 summary["arms"]["cdino"]["eer"])])
    assert c["ci95"][0] < c["mean"] < c["ci95"][1]

    study.write_study(study_dir, SEEDS, summary, study_dir / "results.json", study_dir / "report.md")
    assert json.loads((study_dir / "results.json").read_text()) == summary
    report = (study_dir / "report.md").read_text()
    assert "**contradicted**" in report and "**not tested**" in report
    assert (study_dir / "plots" / "eer_by_seed.png").stat().st_size > 0
    study.print_study(summary)
    assert "supported" in capsys.readouterr().out


def test_missing_results_names_the_folder(study_dir):
    (study_dir / "seed1" / "results.json").unlink()
    with pytest.raises(DataError, match="seed1"):
        study.summarize(study_dir, SEEDS, n_boot=10)


def test_stale_scores_are_refused(study_dir):
    path = study_dir / "seed0" / "results.json"
    res = json.loads(path.read_text())
    res["stages"][1]["eer"] += 0.05
    path.write_text(json.dumps(res))
    with pytest.raises(DataError, match="cdino/scores.txt"):
        study.summarize(study_dir, SEEDS, n_boot=10)


@pytest.mark.parametrize("sigmas", [study.WINDOW_SIGMAS, 0.0])  # 0: most rows need the full fallback
def test_windowed_bootstrap_eer_equals_metrics_eer(sigmas):
    rng = np.random.default_rng(3)
    labels = rng.random(500) < 0.3
    scores = np.round(rng.normal(size=500) + 1.2 * labels, 1)  # many ties
    counts = study._resample_counts(rng, np.flatnonzero(labels), np.flatnonzero(~labels), 500, 40)
    win = study._eer_window(scores, labels, sigmas)
    eers = study._window_eers(win, counts, counts @ win.front_tar, counts @ win.front_non)
    want = [metrics.eer(np.repeat(scores, c), np.repeat(labels, c)) for c in counts]
    np.testing.assert_array_equal(eers, want)


def test_paired_claim_from_score_files_judges_as_the_study_does(study_dir):
    """study.paired_claim (bench/paired_claim.py, arms trained outside the study) gives the
    summary's figures for the same scores: the same bootstrap resamples, the same verdict."""
    summary = study.summarize(study_dir, SEEDS, n_boot=200)
    from cdino.data.kaldi_dir import read_trials

    trials = read_trials(study_dir / "corpus" / "test" / "trials")
    read = lambda arm, s: study.read_trial_scores(study_dir / f"seed{s}" / "eval" / FOLDER[arm] / "scores.txt", trials)
    got = study.paired_claim([read("cdino", s) for s in SEEDS], [read("dino_equal", s) for s in SEEDS],
                             trials.labels, n_boot=200)
    want = summary["claims"]["cdino_vs_dino_equal"]
    assert got["eer_diff"] == pytest.approx(want["eer_diff"]) and got["wins"] == want["wins"]
    assert got["ci95"] == pytest.approx(want["ci95"]) and got["verdict"] == want["verdict"]
    with pytest.raises(ValueError, match="one score array of each system per seed"):
        study.paired_claim([read("cdino", 0)], [], trials.labels)
