"""What cdino prints: the last lines of a staged run, progress bars only on a terminal."""

from __future__ import annotations

from pathlib import Path

from cdino.pipeline.adapt import AdaptGoals
from cdino.pipeline.adapt_report import _goals, print_adapt_summary
from cdino.pipeline.report import _print_summary
from cdino.pipeline.staged_run import print_finished


def _metrics(eer: float) -> dict:
    return {"eer": eer, "mindcf_0.01": 0.5, "mindcf_0.05": 0.4, "seconds": 1.0}


def test_pipeline_summary_explains_targets_and_ends_with_the_model_folder(capsys):
    out = Path("EXP")
    results = {"baselines": {"untrained": _metrics(0.4)}, "final": "pseudo_r1",
               "stages": [{"name": "dino", **_metrics(0.3)}, {"name": "cdino", **_metrics(0.2)},
                          {"name": "pseudo_r1", **_metrics(0.1)}],
               "supervised": _metrics(0.08)}
    _print_summary(results)
    print_finished("pipeline", out, 123.4)
    lines = capsys.readouterr().out.splitlines()
    first_target = next(i for i, line in enumerate(lines) if line.startswith("target "))
    assert "targets: goals of the method's paper" in lines[first_target - 1]
    assert "nothing is tuned on them" in lines[first_target - 1]
    assert sum("nothing is tuned" in line for line in lines) == 1  # explained once
    assert lines[-2] == f"pipeline finished: 123 s in all; see {out / 'report.md'}"
    assert lines[-1] == f"model folder: {out / 'model'} (cdino verify --model {out / 'model'} a.wav b.wav)"


def test_adaptation_summary_ends_with_the_model_folder(capsys):
    out = Path("ADAPT")
    res = {"target": {"source": _metrics(0.3), "adapted": _metrics(0.2), "oracle": _metrics(0.1)},
           "source_domain": {"before": _metrics(0.1), "after": _metrics(0.105)}}
    print_adapt_summary({"adapt": res, "goals": _goals(res, AdaptGoals()), "seconds": {"total": 9.0}}, out)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith(f"model folder: {out / 'model'} (cdino verify --model")
    assert lines[-2].startswith("adaptation finished: 9 s in all")
    assert any(line.startswith("goals: ") and "nothing is tuned" in line for line in lines)
