"""bench/select_in_run.py: the regret of a run's label-free choices on the dev split (here a
hand-made run folder with known figures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import load_bench




def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_regret_of_choices_and_of_the_stop_rule(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "recipe.yaml").parent.mkdir(parents=True)
    (run / "recipe.yaml").write_text("name: x\n")
    crit = {"200": {"cross_view": 0.20}, "300": {"cross_view": 0.10}}
    _write(run / "choose" / "done.json", {"keys": [
        {"key": "pseudo.kmeans.n_clusters", "criterion": "cross_view", "pick": 300, "values": crit,
         "candidates": {"200": {"dev_eer": 0.08}, "300": {"dev_eer": 0.10}}}]})
    # rounds 1..4 trained; the rule stopped after round 3 keeping round 2; round 4 is the truth's best
    _write(run / "pseudo" / "done.json", {"rounds": {f"pseudo_r{r}": {"dev_eer": e} for r, e in
                                                     ((1, 0.10), (2, 0.08), (3, 0.09), (4, 0.07))}})
    _write(run / "pseudo" / "round2" / "stop.json", {"round": 2, "best": 2, "stop": False, "criterion": "cross_view",
                                                     "values": {"round1": {"cross_view": 0.3}, "round2": {"cross_view": 0.2}}})
    _write(run / "pseudo" / "round3" / "stop.json", {"round": 3, "best": 2, "stop": True, "criterion": "cross_view",
                                                     "values": {"round1": {"cross_view": 0.3}, "round2": {"cross_view": 0.2},
                                                                "round3": {"cross_view": 0.25}}})
    assert load_bench("select_in_run").main(["--run", str(run)]) == 0
    got = json.loads(capsys.readouterr().out)
    k = got["tasks"]["pseudo.kmeans.n_clusters"]
    assert k["pick"] == "300" and k["best_by_dev"] == "200" and k["regret"] == pytest.approx(0.25)
    s = got["tasks"]["pseudo rounds (stop rule)"]
    assert s["pick"] == "pseudo_r2" and s["best_by_dev"] == "pseudo_r4" and s["regret"] == pytest.approx(0.08 / 0.07 - 1)
    assert s["stopped_after"] == 3 and s["rounds_trained"] == 4
    assert got["within_5_percent"] == 0 and got["n_tasks"] == 2


def test_not_a_run_folder_is_a_one_line_error(tmp_path, capsys):
    assert load_bench("select_in_run").main(["--run", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
