"""Figures of verification results: DET curves, score histograms, EER per stage.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend
state, no display needed); each function writes one PNG atomically and returns its path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.stats import norm

from cdino.atomic import replacing
from cdino.metrics import det_curve, eer

#: DET axis ticks, as miss / false-alarm probabilities.
DET_TICKS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95)
#: Points kept per DET curve (evenly spaced along the curve on the normal-deviate axes).
DET_POINTS = 2000


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically."""
    path = Path(path)
    FigureCanvasAgg(fig)
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path


def _percent(p: float) -> str:
    value = 100 * p
    return f"{value:.2f}".rstrip("0").rstrip(".") if value < 1 else f"{value:g}"


def _thin(x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """At most about ``n`` points of a curve, evenly spaced along its length."""
    if len(x) <= n:
        return x, y
    arc = np.r_[0.0, np.cumsum(np.hypot(np.diff(x), np.diff(y)))]
    keep = np.unique(np.r_[np.searchsorted(arc, np.linspace(0.0, arc[-1], n)), len(x) - 1])
    keep = keep[keep < len(x)]
    return x[keep], y[keep]


def _spaced(ticks: list[float], min_gap: float) -> list[float]:
    """Ticks at least ``min_gap`` apart on the normal-deviate scale (kept from the top down,
    so the usual 1-50 % labels survive)."""
    kept: list[float] = []
    for t in sorted(ticks, reverse=True):
        if not kept or norm.ppf(kept[-1]) - norm.ppf(t) >= min_gap:
            kept.append(t)
    return sorted(kept)


def plot_det(systems: dict[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike,
             title: str = "") -> Path:
    """DET curves (miss vs false-alarm probability on normal-deviate axes, ticks in %) of
    several systems, each given as ``(scores, labels)``; the legend shows each EER."""
    fig = Figure(figsize=(6, 6))
    ax = fig.add_subplot()
    lowest, worst = 0.01, 0.0
    for name, (scores, labels) in systems.items():
        labels = np.asarray(labels)
        p_miss, p_fa, _ = det_curve(scores, labels)
        rate = eer(scores, labels)
        worst = max(worst, rate)
        n_tar = int(np.sum(labels == 1))
        lowest = min(lowest, 1.0 / max(n_tar, len(labels) - n_tar))
        floor = 1e-6
        x = norm.ppf(np.clip(p_fa, floor, 1 - floor))
        y = norm.ppf(np.clip(p_miss, floor, 1 - floor))
        x, y = _thin(x, y, DET_POINTS)
        (line,) = ax.plot(x, y, lw=1.5, label=f"{name} (EER {100 * rate:.2f} %)")
        ax.plot([norm.ppf(rate)], [norm.ppf(rate)], "o", color=line.get_color(), ms=4)
    lo = max(DET_TICKS[0], lowest)
    hi = 0.5 if worst < 0.25 else 0.95
    ticks = _spaced([t for t in DET_TICKS if lo <= t <= hi], min_gap=(norm.ppf(hi) - norm.ppf(lo)) / 12)
    limits = (norm.ppf(lo), norm.ppf(hi))
    ax.plot(limits, limits, ls="--", lw=0.8, color="0.6")
    for set_ticks, set_labels, set_lim in ((ax.set_xticks, ax.set_xticklabels, ax.set_xlim),
                                           (ax.set_yticks, ax.set_yticklabels, ax.set_ylim)):
        set_ticks(norm.ppf(ticks))
        set_labels([_percent(t) for t in ticks])
        set_lim(*limits)
    ax.set_xlabel("false-alarm probability (%)")
    ax.set_ylabel("miss probability (%)")
    ax.grid(True, lw=0.5, color="0.85")
    if title:
        ax.set_title(title)
    if systems:
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_score_histogram(scores: np.ndarray, labels: np.ndarray, path: str | os.PathLike,
                         title: str = "", threshold: float | None = None) -> Path:
    """Histograms (densities) of target and non-target trial scores, with an optional
    decision threshold."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    finite = scores[np.isfinite(scores)]
    bins = np.linspace(finite.min(), finite.max(), 81) if finite.size else 80
    ax.hist(scores[~labels], bins=bins, density=True, alpha=0.55, color="tab:red",
            label=f"non-target ({int((~labels).sum())})")
    ax.hist(scores[labels], bins=bins, density=True, alpha=0.55, color="tab:blue",
            label=f"target ({int(labels.sum())})")
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    ax.set_xlabel("score")
    ax.set_ylabel("density")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_eer_by_stage(names: Sequence[str], eers: Sequence[float], path: str | os.PathLike,
                      lo: Sequence[float] | None = None, hi: Sequence[float] | None = None,
                      reference: float | None = None) -> Path:
    """EER (%) of each pipeline stage as bars, with confidence intervals ``lo``..``hi``
    (fractions, e.g. a 95 % bootstrap) as error bars and an optional reference line
    (the supervised system)."""
    e = 100 * np.asarray(eers, dtype=np.float64)
    if len(names) != len(e):
        raise ValueError(f"{len(names)} names but {len(e)} EERs")
    fig = Figure(figsize=(max(5.0, 0.8 * len(names) + 2), 4))
    ax = fig.add_subplot()
    x = np.arange(len(e))
    yerr = None
    if lo is not None and hi is not None:
        low = 100 * np.asarray(lo, dtype=np.float64)
        high = 100 * np.asarray(hi, dtype=np.float64)
        yerr = np.vstack([np.clip(e - low, 0, None), np.clip(high - e, 0, None)])
    ax.bar(x, e, color="tab:blue", alpha=0.8, yerr=yerr, capsize=4, label="EER")
    for xi, ei in zip(x, e):
        ax.annotate(f"{ei:.2f}", (xi, ei), xytext=(0, 3), textcoords="offset points",
                    ha="center", va="bottom", fontsize=8)
    if reference is not None:
        ax.axhline(100 * reference, color="tab:green", ls="--", lw=1.2,
                   label=f"supervised {100 * reference:.2f} %")
        ax.legend(fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(list(names), rotation=30 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    ax.set_ylabel("EER (%)")
    top = max([*e, *(yerr[1] + e if yerr is not None else []), 100 * (reference or 0), 1e-3])
    ax.set_ylim(0, top * 1.15)
    ax.grid(True, axis="y", lw=0.5, color="0.85")
    fig.tight_layout()
    return save_figure(fig, path)
