"""Speaker-verification and clustering metrics.

Verification: every trial has a score (higher = more likely the same speaker) and a
label (1 target / 0 non-target). A threshold ``t`` *accepts* a trial when
``score >= t``. Sweeping ``t`` over every distinct score gives the operating points

    P_miss(t) = #targets with score < t / #targets
    P_fa(t)   = #non-targets with score >= t / #non-targets

(equal scores are one group: they are accepted or rejected together). All of this is
computed in O(n log n) by one sort.

- :func:`eer` — at the operating point where ``|P_miss - P_fa|`` is smallest, the mean
  ``(P_miss + P_fa) / 2``. ``P_miss - P_fa`` strictly rises with ``t``, so at most two
  points tie; the one with the lower threshold is taken.
- :func:`min_dcf` — the detection cost ``c_miss·p·P_miss + c_fa·(1-p)·P_fa`` normalised by
  ``min(c_miss·p, c_fa·(1-p))`` (the cost of the better trivial system), minimised over
  every threshold including accept-all and reject-all.

Calibration: a *log-likelihood ratio* (LLR) ``llr = log p(score | target) / p(score |
non-target)`` is a score meant to be used as such (``cdino.eval.calibration`` maps cosine
scores to LLRs).

- :func:`cllr` — the cost of LLRs, ``(mean_tar log2(1 + e^-llr) + mean_non log2(1 + e^llr)) / 2``:
  0 for perfect, confident LLRs; 1 for the uninformative ``llr = 0``; above 1 for LLRs
  worse than saying nothing.
- :func:`min_cllr` — the Cllr after the best monotone (order-keeping) map of the scores to
  LLRs, found by the pool-adjacent-violators algorithm (:func:`pav_llr`): what is left
  when miscalibration is taken away. ``cllr(llr) - min_cllr(llr)`` is the calibration loss.
- :func:`act_dcf` — the normalised detection cost (as :func:`min_dcf`) of deciding *at
  the Bayes threshold* ``llr >= log(c_fa·(1-p) / (c_miss·p))`` (:func:`bayes_threshold`;
  ``-logit(p)`` for unit costs) instead of at the best threshold for the trials; it
  equals ``min_dcf`` only for well calibrated LLRs.

Clustering (against true labels, as a diagnostic): :func:`nmi` (arithmetic-mean
normalisation) and :func:`purity`. Rates are fractions (0.0123 = 1.23 %).

:func:`small_trial_list_warning` says when a trial list has too few target or non-target
trials (``MIN_TRIALS_PER_CLASS``, 100 each) for its EER to mean much: with n trials of a
class, error rates move in steps of 1/n, and 3 trials happily give "EER 0.00 %".
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "eer",
    "eer_threshold",
    "min_dcf",
    "bayes_threshold",
    "act_dcf",
    "cllr",
    "min_cllr",
    "pav_llr",
    "small_trial_list_warning",
    "det_curve",
    "bootstrap_eer",
    "nmi",
    "purity",
]


# ----------------------------------------------------------------------------- checks


def check_scores_and_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 scores and bool target flags (ValueError naming what is wrong:
    lengths, no trials, NaN scores, labels other than 0/1)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    lab = np.asarray(labels).reshape(-1)
    if s.size != lab.size:
        raise ValueError(f"scores and labels differ in length ({s.size} vs {lab.size})")
    if s.size == 0:
        raise ValueError("no trials: scores and labels are empty")
    if np.isnan(s).any():
        raise ValueError(f"scores contain NaN ({int(np.isnan(s).sum())} of {s.size} trials)")
    if lab.dtype != np.bool_:
        if not np.isin(lab, (0, 1)).all():
            bad = lab[~np.isin(lab, (0, 1))][0]
            raise ValueError(f"labels must be 1 (target) or 0 (non-target); found {bad!r}")
        lab = lab.astype(bool)
    n_tar = int(lab.sum())
    if n_tar == 0 or n_tar == lab.size:
        which = "non-target" if n_tar == 0 else "target"
        raise ValueError(
            f"trials hold only {which} trials ({lab.size}); verification metrics need both classes"
        )
    return s, lab


def _operating_points(s: np.ndarray, is_tar: np.ndarray):
    """P_miss, P_fa and thresholds at every distinct score (ascending), one sort."""
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    tar_sorted = is_tar[order]
    n_tar = int(tar_sorted.sum())
    n_non = tar_sorted.size - n_tar
    # first index of each group of equal scores
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    tar_cum = np.r_[0, np.cumsum(tar_sorted)]  # targets among the first i trials
    tar_below = tar_cum[starts]
    non_below = starts - tar_below
    p_miss = tar_below / n_tar
    p_fa = (n_non - non_below) / n_non
    return p_miss, p_fa, s_sorted[starts]


def _eer_index(p_miss: np.ndarray, p_fa: np.ndarray) -> int:
    return int(np.argmin(np.abs(p_miss - p_fa)))


# ----------------------------------------------------------------------- verification


def det_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detection error trade-off: ``(p_miss, p_fa, thresholds)``.

    One point per distinct score (threshold = that score, ascending; accept-all first)
    plus the reject-all point with threshold ``+inf`` at the end.
    """
    s, lab = check_scores_and_labels(scores, labels)
    p_miss, p_fa, thr = _operating_points(s, lab)
    return np.r_[p_miss, 1.0], np.r_[p_fa, 0.0], np.r_[thr, np.inf]


def eer(scores, labels) -> float:
    """Equal error rate (fraction) of verification trials (1 target / 0 non-target)."""
    s, lab = check_scores_and_labels(scores, labels)
    p_miss, p_fa, _ = _operating_points(s, lab)
    i = _eer_index(p_miss, p_fa)
    return float((p_miss[i] + p_fa[i]) / 2.0)


def eer_threshold(scores, labels) -> float:
    """The score threshold (accept ``score >= t``) at the equal-error operating point."""
    s, lab = check_scores_and_labels(scores, labels)
    p_miss, p_fa, thr = _operating_points(s, lab)
    return float(thr[_eer_index(p_miss, p_fa)])


def min_dcf(scores, labels, p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """Minimum normalised detection cost over every threshold (incl. accept/reject-all)."""
    _check_dcf_args(p_target, c_miss, c_fa)
    s, lab = check_scores_and_labels(scores, labels)
    p_miss, p_fa, _ = _operating_points(s, lab)
    p_miss = np.r_[p_miss, 1.0]  # reject-all
    p_fa = np.r_[p_fa, 0.0]
    cost = c_miss * p_target * p_miss + c_fa * (1.0 - p_target) * p_fa
    return float(cost.min() / min(c_miss * p_target, c_fa * (1.0 - p_target)))


def _check_dcf_args(p_target: float, c_miss: float, c_fa: float) -> None:
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must lie in (0, 1); got {p_target}")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"c_miss and c_fa must be positive; got {c_miss}, {c_fa}")


def bayes_threshold(p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """The LLR at or above which the Bayes decision (least expected cost) is *target*:
    ``log(c_fa·(1-p) / (c_miss·p))``, i.e. ``-logit(p)`` for unit costs (0 at p = 0.5)."""
    _check_dcf_args(p_target, c_miss, c_fa)
    return float(np.log(c_fa * (1.0 - p_target)) - np.log(c_miss * p_target))


def act_dcf(llr, labels, p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """Actual normalised detection cost of LLRs: trials with ``llr >= bayes_threshold(p)``
    are accepted; cost normalised as in :func:`min_dcf` (so ``act_dcf >= min_dcf``)."""
    _check_dcf_args(p_target, c_miss, c_fa)
    s, lab = check_scores_and_labels(llr, labels)
    accept = s >= bayes_threshold(p_target, c_miss, c_fa)
    p_miss = float(np.mean(~accept[lab]))
    p_fa = float(np.mean(accept[~lab]))
    cost = c_miss * p_target * p_miss + c_fa * (1.0 - p_target) * p_fa
    return float(cost / min(c_miss * p_target, c_fa * (1.0 - p_target)))


def cllr(llr, labels) -> float:
    """Cost of log-likelihood ratios (bits): ``(mean over targets of log2(1 + e^-llr) +
    mean over non-targets of log2(1 + e^llr)) / 2``. Infinite LLRs are allowed (a wrong
    infinite one costs ``inf``)."""
    s, lab = check_scores_and_labels(llr, labels)
    c_tar = float(np.mean(np.logaddexp(0.0, -s[lab])))
    c_non = float(np.mean(np.logaddexp(0.0, s[~lab])))
    return (c_tar + c_non) / (2.0 * np.log(2.0))


def pav_llr(scores, labels) -> np.ndarray:
    """The best order-keeping map of ``scores`` to LLRs for these trials (float64, in trial
    order; may hold ``±inf``): pool-adjacent-violators isotonic regression of the labels on
    the scores gives a non-decreasing target posterior ``q`` per score (equal scores are
    pooled first, so they share one value), and ``llr = logit(q) - log(n_tar / n_non)``
    removes the trials' own prior. It minimises :func:`cllr` over all monotone maps."""
    s, lab = check_scores_and_labels(scores, labels)
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    group_tar = np.add.reduceat(lab[order].astype(np.int64), starts)
    group_n = np.diff(np.r_[starts, s.size])
    # PAV on the groups: a stack of blocks (targets, trials, groups), means strictly rising.
    b_tar: list[int] = []
    b_n: list[int] = []
    b_groups: list[int] = []
    for t, n in zip(group_tar.tolist(), group_n.tolist()):
        g = 1
        while b_tar and b_tar[-1] * n >= t * b_n[-1]:  # previous mean >= this one: pool
            t += b_tar.pop()
            n += b_n.pop()
            g += b_groups.pop()
        b_tar.append(t)
        b_n.append(n)
        b_groups.append(g)
    q_group = np.repeat(np.asarray(b_tar, np.float64) / np.asarray(b_n, np.float64), b_groups)
    q = np.empty(s.size, dtype=np.float64)
    q[order] = np.repeat(q_group, group_n)
    n_tar = int(lab.sum())
    with np.errstate(divide="ignore"):
        return np.log(q) - np.log1p(-q) - (np.log(n_tar) - np.log(s.size - n_tar))


def min_cllr(scores, labels) -> float:
    """:func:`cllr` after the best monotone map of the scores to LLRs (:func:`pav_llr`): the
    Cllr a perfectly calibrated version of these scores would have on these trials."""
    return cllr(pav_llr(scores, labels), labels)


#: Fewer target or non-target trials than this make an EER / minDCF too coarse to trust.
MIN_TRIALS_PER_CLASS = 100


def small_trial_list_warning(labels, min_target: int = MIN_TRIALS_PER_CLASS,
                             min_nontarget: int = MIN_TRIALS_PER_CLASS) -> str | None:
    """A one-line warning when ``labels`` (1 target / 0 non-target) hold fewer than
    ``min_target`` target or ``min_nontarget`` non-target trials; ``None`` when enough."""
    lab = np.asarray(labels).reshape(-1)
    n_tar = int(np.count_nonzero(lab == 1))
    n_non = int(lab.size - n_tar)
    if n_tar >= min_target and n_non >= min_nontarget:
        return None
    return (f"only {n_tar} target and {n_non} non-target trials (fewer than {min_target} / "
            f"{min_nontarget}): the EER and minDCF are too coarse to be meaningful")


def _sorted_groups(s: np.ndarray, is_tar: np.ndarray):
    """Sort order of the trials and the first index of each group of equal scores."""
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    return order, starts


def _eers_from_sorted_counts(tar_sorted: np.ndarray, starts: np.ndarray,
                             counts: np.ndarray) -> np.ndarray:
    """EER of weighted copies of score-sorted trials; ``counts`` (B, n) repeats each trial.

    Row b equals :func:`eer` on the trials repeated ``counts[b]`` times: a threshold at
    a score absent from a copy repeats an existing operating point, so the minimum of
    ``|P_miss - P_fa|`` and the lower-threshold tie rule are unchanged.
    """
    c_tar = np.where(tar_sorted, counts, 0)
    zero = np.zeros((counts.shape[0], 1), dtype=np.int64)
    tar_cum = np.concatenate([zero, np.cumsum(c_tar, axis=1)], axis=1)
    all_cum = np.concatenate([zero, np.cumsum(counts, axis=1)], axis=1)
    n_tar = tar_cum[:, -1:]
    n_non = all_cum[:, -1:] - n_tar
    tar_below = tar_cum[:, starts]
    non_below = all_cum[:, starts] - tar_below
    p_miss = tar_below / n_tar
    p_fa = (n_non - non_below) / n_non
    i = np.argmin(np.abs(p_miss - p_fa), axis=1)
    rows = np.arange(counts.shape[0])
    return (p_miss[rows, i] + p_fa[rows, i]) / 2.0


def bootstrap_eer(scores, labels, n_boot: int = 1000, seed: int = 0,
                  alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap ``(lo, hi)`` interval of the EER at level ``1 - alpha``.

    Trials are resampled with replacement within each class (targets and non-targets
    keep their counts), drawn as multinomial repeat counts and evaluated in blocks with
    one shared sort: 1000 resamples of 20k trials take about two seconds on one core.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1; got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha}")
    s, lab = check_scores_and_labels(scores, labels)
    order, starts = _sorted_groups(s, lab)
    tar_sorted = lab[order]
    tar_pos = np.flatnonzero(tar_sorted)
    non_pos = np.flatnonzero(~tar_sorted)
    n, n_tar, n_non = s.size, tar_pos.size, non_pos.size
    rng = np.random.default_rng(seed)
    block = max(1, min(n_boot, 2_000_000 // n))
    eers = []
    for b0 in range(0, n_boot, block):
        nb = min(block, n_boot - b0)
        counts = np.zeros((nb, n), dtype=np.int64)
        counts[:, tar_pos] = rng.multinomial(n_tar, np.full(n_tar, 1.0 / n_tar), size=nb)
        counts[:, non_pos] = rng.multinomial(n_non, np.full(n_non, 1.0 / n_non), size=nb)
        eers.append(_eers_from_sorted_counts(tar_sorted, starts, counts))
    e = np.concatenate(eers)
    lo, hi = np.quantile(e, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


# ------------------------------------------------------------------------- clustering


def _check_partitions(true, pred) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(true).reshape(-1)
    p = np.asarray(pred).reshape(-1)
    if t.size != p.size:
        raise ValueError(f"true and predicted labels differ in length ({t.size} vs {p.size})")
    if t.size == 0:
        raise ValueError("no samples: label arrays are empty")
    _, t_codes = np.unique(t, return_inverse=True)
    _, p_codes = np.unique(p, return_inverse=True)
    return t_codes.reshape(-1), p_codes.reshape(-1)


def _entropy(counts: np.ndarray, n: int) -> float:
    q = counts[counts > 0] / n
    return float(-(q * np.log(q)).sum())


def nmi(true, pred) -> float:
    """Normalised mutual information ``I(T;P) / ((H(T) + H(P)) / 2)`` of two labelings.

    Both labelings with one cluster each give 1.0 (identical trivial partitions).
    """
    t, p = _check_partitions(true, pred)
    n = t.size
    n_t, n_p = int(t.max()) + 1, int(p.max()) + 1
    if n_t == 1 and n_p == 1:
        return 1.0
    pair, joint = np.unique(t.astype(np.int64) * n_p + p, return_counts=True)
    row = np.bincount(t, minlength=n_t)
    col = np.bincount(p, minlength=n_p)
    ti, pi = pair // n_p, pair % n_p
    expected = row[ti] * col[pi].astype(np.float64)  # n * P(t) * P(p) * n
    mi = float((joint / n * (np.log(joint * n) - np.log(expected))).sum())
    h_t, h_p = _entropy(row, n), _entropy(col, n)
    denom = (h_t + h_p) / 2.0
    if denom <= 0.0:
        return 0.0
    return float(min(max(mi / denom, 0.0), 1.0))


def purity(true, pred) -> float:
    """Cluster purity: fraction of samples carrying their cluster's majority true label."""
    t, p = _check_partitions(true, pred)
    n_t = int(t.max()) + 1
    pair, joint = np.unique(p.astype(np.int64) * n_t + t, return_counts=True)
    best = np.zeros(int(p.max()) + 1, dtype=np.int64)
    np.maximum.at(best, pair // n_t, joint)
    return float(best.sum() / t.size)
