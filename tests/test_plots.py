"""Figures: each call writes one valid, non-trivial PNG and returns its path."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest

from cdino.atomic import leftovers
from cdino.eval.plots import plot_det, plot_eer_by_stage, plot_score_histogram

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _trials(n: int, separation: float, seed: int):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(np.int8)
    scores = rng.standard_normal(n) + separation * labels
    return scores, labels


def _check_png(path, min_bytes: int = 8000) -> np.ndarray:
    assert path.exists() and path.stat().st_size > min_bytes
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert not leftovers(path.parent)
    img = mpimg.imread(path)
    assert img.ndim == 3 and min(img.shape[:2]) > 200
    assert img[..., :3].std() > 0.05  # something was drawn
    return img


def test_det_plot_of_several_systems(tmp_path):
    systems = {"good": _trials(20000, 3.0, 0), "poor": _trials(3000, 0.5, 1)}
    path = plot_det(systems, tmp_path / "figs" / "det.png", title="DET")
    assert path == tmp_path / "figs" / "det.png"
    img = _check_png(path)
    alone = _check_png(plot_det({"good": systems["good"]}, tmp_path / "det1.png"))
    assert img.shape == alone.shape and np.abs(img - alone).mean() > 1e-3  # the second curve shows
    with pytest.raises(ValueError, match="both classes"):
        plot_det({"x": (np.ones(5), np.ones(5))}, tmp_path / "bad.png")


def test_score_histogram_with_threshold(tmp_path):
    scores, labels = _trials(5000, 2.0, 2)
    plain = _check_png(plot_score_histogram(scores, labels, tmp_path / "h.png", title="scores"))
    marked = _check_png(plot_score_histogram(scores, labels, tmp_path / "ht.png", title="scores",
                                             threshold=1.0))
    assert plain.shape == marked.shape and np.abs(plain - marked).mean() > 1e-4


def test_eer_by_stage_with_intervals_and_reference(tmp_path):
    names = ["untrained", "dino", "cdino", "pseudo_r1", "pseudo_r2", "mm_r1"]
    eers = [0.35, 0.06, 0.05, 0.04, 0.035, 0.03]
    lo = [e - 0.005 for e in eers]
    hi = [e + 0.006 for e in eers]
    path = plot_eer_by_stage(names, eers, tmp_path / "eer.png", lo=lo, hi=hi, reference=0.022)
    _check_png(path)
    _check_png(plot_eer_by_stage(names[:2], eers[:2], tmp_path / "eer2.png"))
    with pytest.raises(ValueError, match="names"):
        plot_eer_by_stage(names, eers[:3], tmp_path / "bad.png")
