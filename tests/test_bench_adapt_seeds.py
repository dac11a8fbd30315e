"""bench/adapt_seeds.py: the adaptation's steps over seeds, from the folders `cdino run adapt`
writes (here two hand-made folders with known figures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import load_bench




def _run(folder: Path, eers: dict, shipped: str, source_before: float, source_after: float,
         actdcf: float, cllr: float, min_cllr: float) -> Path:
    def m(eer, **more):
        return {"eer": eer, "cllr": cllr, "min_cllr": min_cllr, "actdcf_0.01": actdcf, **more}
    results = {
        "adapt": {
            "target": {"source": m(eers["source"]), "aligned": m(eers["aligned"]),
                       "adapted": m(eers[shipped]), "oracle": m(eers["oracle"])},
            "source_domain": {"before": {"eer": source_before}, "aligned": {"eer": source_after},
                              "after": {"eer": source_after}},
        },
        "rounds": {"adapt_r1": {"eer": eers["adapt_r1"], "purity": 0.8},
                   "adapt_r2": {"eer": eers["adapt_r2"], "purity": 0.82}},
    }
    (folder / "select").mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "select" / "done.json").write_text(json.dumps({"shipped": shipped}))
    return folder


def test_gap_shares_regret_forgetting_and_calibration_over_seeds(tmp_path, capsys):
    a = _run(tmp_path / "s0", {"source": 0.14, "aligned": 0.10, "adapt_r1": 0.11, "adapt_r2": 0.12, "oracle": 0.04},
             "adapt_r1", 0.05, 0.06, actdcf=0.9, cllr=0.40, min_cllr=0.35)
    b = _run(tmp_path / "s1", {"source": 0.12, "aligned": 0.09, "adapt_r1": 0.08, "adapt_r2": 0.10, "oracle": 0.02},
             "adapt_r1", 0.04, 0.05, actdcf=1.1, cllr=0.40, min_cllr=0.35)
    load_bench("adapt_seeds").main([str(a), str(b)])
    out = json.loads(capsys.readouterr().out)
    s0, s1 = out["seeds"]
    assert s0["gap_share"]["aligned"] == pytest.approx(0.4)
    assert s0["gap_share"]["shipped"] == pytest.approx(0.3)
    assert s1["gap_share"]["shipped"] == pytest.approx(0.4)
    assert out["gap_share"]["shipped"]["mean"] == pytest.approx(0.35)
    # seed 0 shipped round 1 where the aligned model was best; seed 1 shipped the best
    assert s0["stop_rule"] == {"picked": "adapt_r1", "best": "aligned", "regret": pytest.approx(0.1)}
    assert s1["stop_rule"]["regret"] == pytest.approx(0.0)
    assert out["source_forgetting"]["values"] == pytest.approx([0.2, 0.25])
    assert [s0["calibration"]["met"], s1["calibration"]["met"]] == [True, False]
    assert out["calibration_met"] == 1


def test_an_unfinished_run_is_named(tmp_path, capsys):
    (tmp_path / "s0").mkdir()
    with pytest.raises(SystemExit) as exit_:
        load_bench("adapt_seeds").main([str(tmp_path / "s0")])
    assert exit_.value.code == 2
    assert str(tmp_path / "s0" / "results.json") in capsys.readouterr().err
