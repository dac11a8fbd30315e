"""What cdino prints: the last lines of a staged run, progress bars only on a terminal."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdino.console import progress_bar
from cdino.data.shards import write_shards
from cdino.pipeline.adapt import AdaptGoals
from cdino.pipeline.adapt_report import _goals, print_adapt_summary
from cdino.pipeline.report import _print_summary
from cdino.pipeline.staged_run import print_finished
from conftest import write_speaker_dir


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


@pytest.fixture
def progress_on(monkeypatch):
    """Progress asked for (the test suite turns it off), bars not forced."""
    monkeypatch.delenv("CDINO_NO_PROGRESS", raising=False)
    monkeypatch.delenv("CDINO_PROGRESS", raising=False)
    return monkeypatch


def _run(n: int = 50, **kwargs) -> None:
    bar = progress_bar(total=n, desc="work", unit="utt", **kwargs)
    for _ in range(n):
        bar.update()
    bar.close()


def test_off_a_terminal_no_bar_is_drawn_but_lines_say_how_far(progress_on, capsys):
    _run(lines=10)
    _run()  # no lines asked for: silent
    out, err = capsys.readouterr()  # both captured streams: not terminals
    assert "\r" not in out + err and err == ""
    lines = out.splitlines()
    assert len(lines) == 10
    assert lines[0].startswith("work: 5/50 utt (10 %), ") and lines[-1].startswith("work: 50/50 utt (100 %), ")


def test_lines_count_from_a_resumed_start_and_end_at_the_total(progress_on, capsys):
    bar = progress_bar(total=7, initial=3, desc="train", unit="step", lines=3)
    for _ in range(4):
        bar.update()
        bar.set_postfix({"loss": "1.5"})
    assert [line.split(",")[0] for line in capsys.readouterr().out.splitlines()] == \
        ["train: 6/7 step (86 %)", "train: 7/7 step (100 %)"]


def test_bars_forced_on_and_progress_turned_off(progress_on, capsys):
    progress_on.setenv("CDINO_PROGRESS", "1")
    _run(lines=10)
    out, err = capsys.readouterr()
    assert "\r" in err and "work" in err and out == ""  # a bar, no lines
    progress_on.setenv("CDINO_NO_PROGRESS", "1")
    _run(lines=10)
    assert capsys.readouterr() == ("", "")


def test_writing_shards_into_a_log_prints_lines_not_bar_redraws(progress_on, tmp_path, capsys):
    data = write_speaker_dir(tmp_path / "data", n_speakers=2, utts_per_speaker=5, seconds=0.5)
    write_shards(data, tmp_path / "shards", progress=True)
    out, err = capsys.readouterr()
    assert "\r" not in out + err
    assert out.count("writing shards: ") == 10 and "10/10 utt (100 %)" in out
