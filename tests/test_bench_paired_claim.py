"""bench/paired_claim.py: the study's verdict on one claim from score files of several seeds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cdino.errors import DataError

from conftest import load_bench


def _write(tmp_path, n=400, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.3
    lines = [f"e{i} t{i} {'target' if l else 'nontarget'}" for i, l in enumerate(labels)]
    (tmp_path / "trials").write_text("\n".join(lines) + "\n")
    return labels, rng


def _scores(tmp_path, name, labels, rng, sep):
    s = rng.normal(0, 1, labels.size) + sep * labels
    path = tmp_path / name
    path.write_text("".join(f"e{i} t{i} {v:.6f}\n" for i, v in enumerate(s)))
    return path


def test_a_clearly_better_system_is_supported_and_the_reverse_contradicted(tmp_path, capsys):
    labels, rng = _write(tmp_path)
    good = [_scores(tmp_path, f"good{s}", labels, rng, 3.0) for s in range(3)]
    bad = [_scores(tmp_path, f"bad{s}", labels, rng, 1.0) for s in range(3)]
    bench = load_bench("paired_claim")
    assert bench.main(["--trials", str(tmp_path / "trials"), "--better", *map(str, good), "--worse", *map(str, bad),
                       "--n-boot", "200"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["verdict"] == "supported" and got["wins"] == 3 and got["ci95"][0] > 0
    assert got["eer_diff"] == pytest.approx([w - b for w, b in zip(got["eer_worse"], got["eer_better"])])
    assert got["mean"] == pytest.approx(np.mean(got["eer_diff"]))
    bench.main(["--trials", str(tmp_path / "trials"), "--better", *map(str, bad), "--worse", *map(str, good),
                "--n-boot", "200"])
    assert json.loads(capsys.readouterr().out)["verdict"] == "contradicted"
    # a score file that does not follow the trial list is an error naming it
    (tmp_path / "short").write_text("e0 t0 0.5\n")
    with pytest.raises(DataError, match="short: 1 scores but"):
        bench.main(["--trials", str(tmp_path / "trials"), "--better", str(tmp_path / "short"), "--worse", str(bad[0])])
