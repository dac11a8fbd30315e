"""Metrics against an independent brute-force O(n^2) evaluation of the definitions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from cdino import metrics


def brute_points(scores, labels):
    """Every threshold: each distinct score (accept score >= t) and reject-all (+inf)."""
    scores = [float(x) for x in scores]
    labels = [int(x) for x in labels]
    tar = [s for s, l in zip(scores, labels) if l == 1]
    non = [s for s, l in zip(scores, labels) if l == 0]
    points = []
    for t in sorted(set(scores)) + [math.inf]:
        p_miss = sum(1 for s in tar if s < t) / len(tar)
        p_fa = sum(1 for s in non if s >= t) / len(non)
        points.append((p_miss, p_fa, t))
    return points


def brute_eer(scores, labels):
    best = None
    for p_miss, p_fa, t in brute_points(scores, labels)[:-1]:
        gap = abs(p_miss - p_fa)
        if best is None or gap < best[0]:  # first (lowest threshold) wins ties
            best = (gap, (p_miss + p_fa) / 2, t)
    return best[1], best[2]


def brute_min_dcf(scores, labels, p, c_miss=1.0, c_fa=1.0):
    costs = [c_miss * p * pm + c_fa * (1 - p) * pf for pm, pf, _ in brute_points(scores, labels)]
    return min(costs) / min(c_miss * p, c_fa * (1 - p))


def random_trials(seed, n, ties=False):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.3
    labels[0], labels[1] = True, False
    scores = rng.normal(size=n) + 1.5 * labels
    if ties:
        scores = np.round(scores * 2) / 2  # few distinct values, many ties
    return scores, labels.astype(np.int64)


CASES = list(itertools.product(range(4), (2, 7, 60, 400), (False, True)))


@pytest.mark.parametrize("seed,n,ties", CASES)
def test_eer_and_min_dcf_match_brute_force(seed, n, ties):
    scores, labels = random_trials(seed, n, ties)
    ref_eer, ref_thr = brute_eer(scores, labels)
    assert metrics.eer(scores, labels) == pytest.approx(ref_eer, abs=1e-12)
    assert metrics.eer_threshold(scores, labels) == pytest.approx(ref_thr, abs=1e-12)
    for p in (0.01, 0.05, 0.5):
        assert metrics.min_dcf(scores, labels, p) == pytest.approx(
            brute_min_dcf(scores, labels, p), abs=1e-12)
    assert metrics.min_dcf(scores, labels, 0.05, c_miss=10, c_fa=1) == pytest.approx(
        brute_min_dcf(scores, labels, 0.05, 10, 1), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_det_curve_matches_brute_force(seed):
    scores, labels = random_trials(seed, 50, ties=seed == 1)
    p_miss, p_fa, thr = metrics.det_curve(scores, labels)
    ref = brute_points(scores, labels)
    assert len(thr) == len(ref)
    for (pm, pf, t), a, b, c in zip(ref, p_miss, p_fa, thr):
        assert (a, b, c) == (pytest.approx(pm, abs=1e-12), pytest.approx(pf, abs=1e-12), t)
    assert np.all(np.diff(p_miss) >= 0) and np.all(np.diff(p_fa) <= 0)


ADVERSARIAL = {
    "all_equal": ([0.3] * 6, [1, 0, 1, 0, 0, 1]),
    "separated": ([0.1, 0.2, 0.3, 0.8, 0.9], [0, 0, 0, 1, 1]),
    "inverted": ([0.8, 0.9, 0.1, 0.2, 0.3], [0, 0, 1, 1, 1]),
    "tiny": ([0.5, 0.4], [1, 0]),
    "tiny_inverted": ([0.4, 0.5], [1, 0]),
    "tie_across_classes": ([0.1, 0.5, 0.5, 0.5, 0.9], [0, 1, 0, 1, 1]),
    "infinite_scores": ([-np.inf, 0.0, np.inf, 1.0], [0, 0, 1, 1]),
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_inputs_match_brute_force(name):
    scores, labels = ADVERSARIAL[name]
    assert metrics.eer(scores, labels) == pytest.approx(brute_eer(scores, labels)[0], abs=1e-12)
    assert metrics.eer_threshold(scores, labels) == brute_eer(scores, labels)[1]
    for p in (0.01, 0.05):
        assert metrics.min_dcf(scores, labels, p) == pytest.approx(
            brute_min_dcf(scores, labels, p), abs=1e-12)


def test_known_values():
    assert metrics.eer(*ADVERSARIAL["separated"]) == 0.0
    assert metrics.eer(*ADVERSARIAL["inverted"]) == 1.0
    assert metrics.eer(*ADVERSARIAL["all_equal"]) == 0.5
    assert metrics.min_dcf(*ADVERSARIAL["separated"], 0.01) == 0.0
    # all-equal scores: the best system is a trivial one, normalised cost 1
    assert metrics.min_dcf(*ADVERSARIAL["all_equal"], 0.01) == pytest.approx(1.0)
    # bool labels work like 1/0
    s, lab = random_trials(9, 100)
    assert metrics.eer(s, lab.astype(bool)) == metrics.eer(s, lab)


@pytest.mark.parametrize("bad", [
    ([0.1, 0.2], [1, 1]),
    ([0.1, 0.2], [0, 0]),
    ([], []),
    ([0.1, 0.2, 0.3], [1, 0]),
    ([0.1, float("nan")], [1, 0]),
    ([0.1, 0.2], [1, 2]),
])
def test_invalid_trials_raise(bad):
    for fn in (metrics.eer, metrics.eer_threshold, metrics.det_curve,
               lambda s, l: metrics.min_dcf(s, l, 0.01), metrics.bootstrap_eer):
        with pytest.raises(ValueError):
            fn(*bad)


def test_one_class_message_is_clear():
    with pytest.raises(ValueError, match="only target trials"):
        metrics.eer([0.2, 0.3], [1, 1])
    with pytest.raises(ValueError, match="p_target"):
        metrics.min_dcf([0.2, 0.3], [1, 0], 1.5)


def test_weighted_eers_equal_eer_of_repeated_trials():
    rng = np.random.default_rng(3)
    scores, labels = random_trials(3, 80, ties=True)
    lab = labels.astype(bool)
    order, starts = metrics._sorted_groups(scores, lab)
    counts = rng.integers(0, 3, size=(20, scores.size))
    counts[:, np.flatnonzero(lab)[0]] += 1  # both classes present in every copy
    counts[:, np.flatnonzero(~lab)[0]] += 1
    got = metrics._eers_from_sorted_counts(lab[order], starts, counts[:, order])
    for b in range(counts.shape[0]):
        ref = metrics.eer(np.repeat(scores, counts[b]), np.repeat(labels, counts[b]))
        assert got[b] == pytest.approx(ref, abs=1e-12)


def test_bootstrap_eer_interval():
    rng = np.random.default_rng(0)
    n = 4000
    labels = rng.random(n) < 0.5
    scores = rng.normal(size=n) + 2.0 * labels
    point = metrics.eer(scores, labels)
    lo, hi = metrics.bootstrap_eer(scores, labels, n_boot=300, seed=1)
    assert lo < point < hi
    assert hi - lo < 0.05
    assert (lo, hi) == metrics.bootstrap_eer(scores, labels, n_boot=300, seed=1)
    lo_s, hi_s = metrics.bootstrap_eer(scores[:400], labels[:400], n_boot=300, seed=1)
    assert hi_s - lo_s > hi - lo  # fewer trials, wider interval


def test_nmi_and_purity_hand_computed():
    true = [0, 0, 0, 1, 1, 1]
    pred = [0, 0, 1, 1, 1, 1]
    # contingency [[2, 1], [0, 3]]
    n = 6
    h_t = math.log(2)
    h_p = -(2 / 6 * math.log(2 / 6) + 4 / 6 * math.log(4 / 6))
    mi = (2 / n * math.log(2 * n / (3 * 2)) + 1 / n * math.log(1 * n / (3 * 4))
          + 3 / n * math.log(3 * n / (3 * 4)))
    assert metrics.nmi(true, pred) == pytest.approx(mi / ((h_t + h_p) / 2), abs=1e-12)
    assert metrics.purity(true, pred) == pytest.approx(5 / 6, abs=1e-12)
    assert metrics.nmi(true, true) == pytest.approx(1.0, abs=1e-12)
    assert metrics.nmi([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.0, abs=1e-12)
    assert metrics.nmi([3, 3, 3], [7, 7, 7]) == 1.0
    assert metrics.purity([0, 1, 2, 3], [0, 0, 0, 0]) == 0.25
    assert metrics.purity([0, 1, 2, 3], [0, 1, 2, 3]) == 1.0


def test_nmi_purity_invariant_to_label_permutation():
    rng = np.random.default_rng(4)
    true = rng.integers(0, 7, 300)
    pred = np.where(rng.random(300) < 0.7, true, rng.integers(0, 9, 300))
    perm = rng.permutation(20)
    names = np.array([f"spk{i}" for i in range(7)])
    assert metrics.nmi(names[true], perm[pred]) == pytest.approx(metrics.nmi(true, pred), abs=1e-12)
    assert metrics.purity(true, perm[pred] + 100) == pytest.approx(
        metrics.purity(true, pred), abs=1e-12)
    assert metrics.nmi(true, pred) == pytest.approx(metrics.nmi(pred, true), abs=1e-12)
    with pytest.raises(ValueError):
        metrics.nmi([0, 1], [0])
    with pytest.raises(ValueError):
        metrics.purity([], [])


def test_small_trial_list_warning():
    three = np.array([1, 0, 0])
    assert metrics.eer([0.9, 0.1, 0.2], three) == 0.0  # a perfect-looking EER of 3 trials ...
    msg = metrics.small_trial_list_warning(three)  # ... is warned about
    assert msg.startswith("only 1 target and 2 non-target trials (fewer than 100 / 100)") and "\n" not in msg
    enough = np.r_[np.ones(100, np.int8), np.zeros(100, np.int8)]
    assert metrics.small_trial_list_warning(enough) is None
    assert metrics.small_trial_list_warning(enough.astype(bool)) is None
    assert "99 target and 5000" in metrics.small_trial_list_warning(np.r_[np.ones(99), np.zeros(5000)])
    assert "100 target and 99 non-target" in metrics.small_trial_list_warning(np.r_[np.ones(100), np.zeros(99)])
    assert metrics.small_trial_list_warning(three, min_target=1, min_nontarget=2) is None


# ----------------------------------------------------------- calibration metrics (issue 14)


def brute_cllr(llr, labels):
    """Cllr term by term in plain Python (log2(1 + e^x), x = ∓llr)."""

    def cost(x):
        if x == math.inf:
            return math.inf
        if x == -math.inf:
            return 0.0
        return math.log1p(math.exp(x)) / math.log(2) if x < 30 else x / math.log(2)

    tar = [cost(-float(v)) for v, l in zip(llr, labels) if l == 1]
    non = [cost(float(v)) for v, l in zip(llr, labels) if l == 0]
    return (sum(tar) / len(tar) + sum(non) / len(non)) / 2


def brute_min_cllr(scores, labels):
    """Try every partition of the distinct scores into runs of neighbours; each run gets one
    LLR (its best, log(t/N_t) - log(n/N_n)); keep the partitions whose LLRs never fall."""
    values = sorted(set(float(s) for s in scores))
    n_tar = sum(int(l) for l in labels)
    n_non = len(labels) - n_tar
    tar = [sum(1 for s, l in zip(scores, labels) if s == v and l == 1) for v in values]
    non = [sum(1 for s, l in zip(scores, labels) if s == v and l == 0) for v in values]
    best = math.inf
    for cuts in itertools.product((False, True), repeat=len(values) - 1):
        runs, start = [], 0
        for i, cut in enumerate(cuts, 1):
            if cut:
                runs.append((start, i))
                start = i
        runs.append((start, len(values)))
        llrs = []
        for a, b in runs:
            t, n = sum(tar[a:b]), sum(non[a:b])
            llrs.append(math.inf if n == 0 else -math.inf if t == 0
                        else math.log(t / n_tar) - math.log(n / n_non))
        if any(x > y for x, y in zip(llrs, llrs[1:])):
            continue
        llr_of = {}
        for (a, b), x in zip(runs, llrs):
            for v in values[a:b]:
                llr_of[v] = x
        best = min(best, brute_cllr([llr_of[float(s)] for s in scores], labels))
    return best


def brute_act_dcf(llr, labels, p, c_miss=1.0, c_fa=1.0):
    t = math.log(c_fa * (1 - p) / (c_miss * p))
    tar = [v for v, l in zip(llr, labels) if l == 1]
    non = [v for v, l in zip(llr, labels) if l == 0]
    p_miss = sum(1 for v in tar if not v >= t) / len(tar)
    p_fa = sum(1 for v in non if v >= t) / len(non)
    return (c_miss * p * p_miss + c_fa * (1 - p) * p_fa) / min(c_miss * p, c_fa * (1 - p))


def test_cllr_known_values_and_brute_force():
    labels = [1, 0, 1, 0]
    assert metrics.cllr([0.0] * 4, labels) == pytest.approx(1.0)  # says nothing: 1 bit
    assert metrics.cllr([np.inf, -np.inf, np.inf, -np.inf], labels) == 0.0
    assert metrics.cllr([-np.inf, -np.inf, np.inf, -np.inf], labels) == np.inf
    # by hand: targets llr 2 and 1, non-targets -1 and 0
    want = ((math.log2(1 + math.exp(-2)) + math.log2(1 + math.exp(-1))) / 2
            + (math.log2(1 + math.exp(-1)) + 1.0) / 2) / 2
    assert metrics.cllr([2.0, -1.0, 1.0, 0.0], labels) == pytest.approx(want, abs=1e-12)
    # large LLRs do not overflow
    assert metrics.cllr([800.0, -800.0], [1, 0]) == 0.0
    assert metrics.cllr([-800.0, 800.0], [1, 0]) == pytest.approx(800 / math.log(2))
    for seed in range(3):
        s, lab = random_trials(seed, 50)
        assert metrics.cllr(3 * s - 1, lab) == pytest.approx(brute_cllr(3 * s - 1, lab), abs=1e-12)


@pytest.mark.parametrize("seed,n,ties", list(itertools.product(range(4), (2, 7, 11), (False, True))))
def test_min_cllr_matches_brute_force(seed, n, ties):
    scores, labels = random_trials(seed, n, ties)
    assert metrics.min_cllr(scores, labels) == pytest.approx(brute_min_cllr(scores, labels), abs=1e-12)


def test_min_cllr_is_a_lower_bound_invariant_to_monotone_maps():
    scores, labels = random_trials(5, 400)
    m = metrics.min_cllr(scores, labels)
    assert 0.0 < m < 1.0
    assert metrics.min_cllr(np.exp(scores), labels) == pytest.approx(m, abs=1e-12)
    assert metrics.min_cllr(5 * scores - 3, labels) == pytest.approx(m, abs=1e-12)
    rng = np.random.default_rng(0)
    for _ in range(20):  # no affine calibration beats the PAV map
        a, b = rng.uniform(0.1, 5), rng.uniform(-3, 3)
        assert metrics.cllr(a * scores + b, labels) >= m - 1e-12
    llr = metrics.pav_llr(scores, labels)
    assert metrics.cllr(llr, labels) == pytest.approx(m, abs=1e-12)
    order = np.argsort(scores)
    assert (llr[order][1:] >= llr[order][:-1]).all()  # order kept
    assert metrics.min_cllr(*ADVERSARIAL["separated"]) == 0.0
    assert metrics.min_cllr(*ADVERSARIAL["all_equal"]) == pytest.approx(1.0)
    assert metrics.min_cllr(*ADVERSARIAL["inverted"]) == pytest.approx(1.0)  # best monotone map: constant
    # tied scores share one LLR
    tied = metrics.pav_llr(*ADVERSARIAL["tie_across_classes"])
    assert tied[1] == tied[2] == tied[3]


@pytest.mark.parametrize("seed", range(4))
def test_act_dcf_matches_brute_force_and_bounds(seed):
    scores, labels = random_trials(seed, 300)
    llr = 2.0 * scores - 1.0
    for p in (0.01, 0.05, 0.5, 0.9):
        got = metrics.act_dcf(llr, labels, p)
        assert got == pytest.approx(brute_act_dcf(llr, labels, p), abs=1e-12)
        assert got >= metrics.min_dcf(llr, labels, p) - 1e-12
        assert metrics.act_dcf(llr, labels, p, c_miss=10.0) == pytest.approx(
            brute_act_dcf(llr, labels, p, c_miss=10.0), abs=1e-12)
        # the PAV map is calibrated on its own trials: deciding at the Bayes threshold is optimal
        assert metrics.act_dcf(metrics.pav_llr(scores, labels), labels, p) == pytest.approx(
            metrics.min_dcf(scores, labels, p), abs=1e-9)
    # uninformative LLRs: reject all at p = 0.01 (threshold log 99), accept all at 0.5 (threshold 0)
    zero, lab = np.zeros(6), [1, 0, 1, 0, 0, 1]
    assert metrics.act_dcf(zero, lab, 0.01) == pytest.approx(1.0)
    assert metrics.act_dcf(zero, lab, 0.5) == pytest.approx(1.0)
    # a shifted but perfectly separating LLR still decides wrongly: actDCF sees miscalibration
    sep = np.array([0.1, 0.2, 0.3, 0.8, 0.9]) - 5.0
    assert metrics.min_dcf(sep, ADVERSARIAL["separated"][1], 0.05) == 0.0
    assert metrics.act_dcf(sep, ADVERSARIAL["separated"][1], 0.05) == pytest.approx(1.0)


def test_bayes_threshold_and_invalid_calibration_inputs():
    assert metrics.bayes_threshold(0.5) == 0.0
    assert metrics.bayes_threshold(0.01) == pytest.approx(math.log(99))
    assert metrics.bayes_threshold(0.2, c_miss=4.0) == pytest.approx(0.0)
    for bad in ([0.1, 0.2], [1, 1]), ([0.1, float("nan")], [1, 0]), ([], []):
        for fn in (metrics.cllr, metrics.min_cllr, lambda s, l: metrics.act_dcf(s, l, 0.01)):
            with pytest.raises(ValueError):
                fn(*bad)
    with pytest.raises(ValueError, match="p_target"):
        metrics.act_dcf([0.2, 0.3], [1, 0], 0.0)
    with pytest.raises(ValueError, match="p_target"):
        metrics.bayes_threshold(1.0)
