"""The ablation study: the same pipeline with several training seeds, compared in pairs.

``cdino run ablations --out DIR`` runs the pipeline once per training seed ``S`` into
``DIR/seed{S}/`` (each an ordinary pipeline output folder: ``results.json``, and per-trial
scores ``eval/<folder>/scores.txt``, lines ``enroll test score``) on one test trial list,
``DIR/corpus/test/trials``. This module reads those folders and answers two questions:

- **How much do the seeds spread?** Per arm (:data:`ARMS`, one trained system of the
  pipeline) the EER of every seed, their mean, sample sd, min and max.
- **Which claims hold?** Per claim (:data:`CLAIMS`, "arm A beats arm B") the EER
  difference ``worse - better`` of every seed (positive: the claim holds in that seed),
  how many seeds it wins, and a 95 % *paired bootstrap over trials*: each resample draws
  one set of trials (with replacement, targets and non-targets keeping their counts),
  the same for every arm and seed, so each resample's difference is paired; the
  differences are averaged over the seeds. The verdict is **supported** when the interval
  lies above 0 and every seed wins, **contradicted** when it lies below 0, and **not
  supported (within noise)** otherwise.

The bootstrap evaluates each system's EER on all resamples at once (:func:`_bootstrap_eers`):
a resample only moves the EER near the full-sample crossing, so each row's EER is computed
from the trials in a window around it (plus the counts below and above the window, found
for every system in one matrix product) and checked to be bracketed by the window; rows
that are not are recomputed on all trials. The result equals :func:`cdino.metrics.eer` on
each resample exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from cdino import metrics
from cdino.atomic import write_lines
from cdino.data.kaldi_dir import Trials, read_trials
from cdino.errors import DataError

__all__ = ["Arm", "ARMS", "Claim", "CLAIMS", "summarize", "write_study", "print_study", "plot_study"]


@dataclass(frozen=True)
class Arm:
    """Where one trained system of the study is found in a seed's pipeline output."""

    sources: tuple[str, ...]
    """Dotted paths into ``results.json``, tried in order: ``stages.<name>`` is the stage
    entry of that name, ``ablations.<name>``, ``controls.<name>``, ``supervised``..."""
    scores: tuple[str, ...]
    """Folders under ``eval/`` holding its ``scores.txt``, tried in order (the first present
    is used, and must reproduce the recorded EER)."""
    label: str
    """What the report calls it."""


#: The arms, in the report's order. An arm absent from a seed's results is skipped.
ARMS: dict[str, Arm] = {
    "dino": Arm(("stages.dino",), ("dino",), "DINO"),
    "dino_equal": Arm(("controls.dino_equal",), ("dino_equal",), "DINO continued for C-DINO's epochs"),
    "cdino": Arm(("stages.cdino",), ("cdino",), "C-DINO"),
    # One round each from the same C-DINO model; an ablation without overrides reuses the
    # main audio round 1 (recipe.stage_ablations), whose scores are eval/pseudo_r1.
    "gate_off": Arm(("ablations.gate_off",), ("gate_off", "gate_off_r1", "pseudo_r1"), "no loss gate"),
    "fixed_gate": Arm(("ablations.fixed_gate",), ("fixed_gate", "fixed_gate_r1", "pseudo_r1"), "fixed-threshold gate"),
    "dlg": Arm(("ablations.dlg",), ("dlg", "dlg_r1", "pseudo_r1"), "DLG"),
    "dlg_lc": Arm(("ablations.dlg_lc",), ("dlg_lc", "dlg_lc_r1", "pseudo_r1"), "DLG-LC"),
    "audio_visual": Arm(("stages.mm_r1",), ("audio_visual", "mm_r1"), "audio-visual DLG-LC"),
    "audio_visual_weak": Arm(("ablations.audio_visual_weak",), ("audio_visual_weak_r1",),
                             "audio-visual DLG-LC, weak face proxy"),
    "supervised": Arm(("supervised",), ("supervised",), "supervised, DINO's steps"),
    "supervised_full": Arm(("controls.supervised_full",), ("supervised_full",), "supervised, the pipeline's steps"),
}


class Claim(NamedTuple):
    """A paired comparison: ``better`` has a lower EER than ``worse``."""

    name: str
    better: str
    worse: str
    sentence: str


CLAIMS: tuple[Claim, ...] = (
    Claim("cdino_vs_dino_equal", "cdino", "dino_equal",
          "C-DINO beats DINO trained for the same number of epochs."),
    Claim("dlg_lc_vs_dlg", "dlg_lc", "dlg", "Label correction improves on the dynamic loss gate alone."),
    Claim("dlg_vs_fixed_gate", "dlg", "fixed_gate", "A dynamic loss gate beats a fixed-threshold gate."),
    Claim("dlg_vs_gate_off", "dlg", "gate_off", "The dynamic loss gate beats training on every pseudo-label."),
    Claim("dlg_lc_vs_gate_off", "dlg_lc", "gate_off", "DLG-LC beats training on every pseudo-label."),
    Claim("audio_visual_vs_audio", "audio_visual", "dlg_lc",
          "Audio-visual pseudo-labels beat audio-only ones."),
    Claim("audio_visual_weak_vs_audio", "audio_visual_weak", "dlg_lc",
          "Audio-visual pseudo-labels beat audio-only ones even with the weak face proxy."),
)

SUPPORTED = "supported"
CONTRADICTED = "contradicted"
WITHIN_NOISE = "not supported (within noise)"

#: A score file whose EER differs more than this from the recorded one is from another run.
EER_TOLERANCE = 0.002
#: The bootstrap's random seed (the study is reproducible).
BOOTSTRAP_SEED = 0
#: Half-width of each system's EER window, in standard deviations of ``P_miss - P_fa``.
WINDOW_SIGMAS = 6.0


# ------------------------------------------------------------------------ reading


def _lookup(results: dict, path: str) -> dict | None:
    """The entry at a dotted path (a list step picks the element with that ``name``)."""
    node = results
    for key in path.split("."):
        if isinstance(node, list):
            node = next((e for e in node if isinstance(e, dict) and e.get("name") == key), None)
        elif isinstance(node, dict):
            node = node.get(key)
        else:
            return None
        if node is None:
            return None
    return node if isinstance(node, dict) and "eer" in node else None


def _read_results(seed_dir: Path) -> dict:
    path = seed_dir / "results.json"
    if not path.is_file():
        raise DataError(f"{seed_dir}: no results.json (the pipeline for this seed has not finished)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None


def _trials_path(study_dir: Path, results: dict[int, dict]) -> Path:
    path = study_dir / "corpus" / "test" / "trials"
    if path.is_file():
        return path
    recorded = {r.get("test", {}).get("trials") for r in results.values()} - {None}
    if len(recorded) == 1:
        return Path(recorded.pop())
    raise DataError(f"{path}: no trial list (and the seeds' results.json do not name one trial list: "
                    f"{sorted(recorded) or 'none'})")


def read_trial_scores(path: Path, trials: Trials) -> np.ndarray:
    """Scores of ``path`` (``enroll test score`` lines), checked against the trial list."""
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    if len(rows) != len(trials):
        raise DataError(f"{path}: {len(rows)} scores but {trials.path} holds {len(trials)} trials")
    for i, (row, e, t) in enumerate(zip(rows, trials.enroll, trials.test)):
        if len(row) != 3 or row[0] != e or row[1] != t:
            raise DataError(f"{path}:{i + 1}: expected '{e} {t} <score>' (trial {i + 1} of {trials.path}), "
                            f"got '{' '.join(row)}'")
    try:
        scores = np.array([float(r[2]) for r in rows])
    except ValueError as exc:
        raise DataError(f"{path}: a score is not a number ({exc})") from None
    if np.isnan(scores).any():
        raise DataError(f"{path}:{int(np.flatnonzero(np.isnan(scores))[0]) + 1}: score is NaN")
    return scores


def _arm_scores(seed_dir: Path, arm: Arm, entry: dict, trials: Trials) -> tuple[np.ndarray, Path] | None:
    """The arm's per-trial scores in this seed and their file, or ``None`` when there is none."""
    for folder in arm.scores:
        path = seed_dir / "eval" / folder / "scores.txt"
        if path.is_file():
            scores = read_trial_scores(path, trials)
            got = metrics.eer(scores, trials.labels)
            if abs(got - float(entry["eer"])) > EER_TOLERANCE:
                raise DataError(f"{path}: these scores give EER {100 * got:.2f} % but "
                                f"{seed_dir / 'results.json'} records {100 * float(entry['eer']):.2f} % "
                                "(a score file of another run?)")
            return scores, path
    return None


# ---------------------------------------------------------------------- bootstrap


@dataclass
class _EerWindow:
    """One system's trials sorted by score, and the window around its EER crossing."""

    order: np.ndarray  # trial indices in ascending score order
    starts: np.ndarray  # first sorted position of each group of equal scores
    tar_sorted: np.ndarray  # target flag per sorted position
    trials: np.ndarray  # trial indices in the window [lo, hi) of sorted positions
    tar_window: np.ndarray  # target flag per window trial
    front_tar: np.ndarray  # trial-order masks: targets / non-targets sorted below the window
    front_non: np.ndarray
    reduced_tar: np.ndarray  # target flags and group starts of the reduced problem
    reduced_starts: np.ndarray
    n_tar: int
    n_non: int


def _eer_window(scores: np.ndarray, is_tar: np.ndarray, sigmas: float) -> _EerWindow:
    """The window of operating points whose ``P_miss - P_fa`` lies within ``sigmas``
    standard deviations of 0 (one more on each side): a resample's crossing lies inside."""
    order, starts = metrics._sorted_groups(scores, is_tar)
    tar_sorted = is_tar[order]
    n, n_tar = is_tar.size, int(is_tar.sum())
    n_non = n - n_tar
    tar_below = np.r_[0, np.cumsum(tar_sorted)][starts]
    d = tar_below / n_tar - (n_non - (starts - tar_below)) / n_non  # non-decreasing
    e = metrics.eer(scores, is_tar)
    delta = sigmas * np.sqrt(max(e * (1 - e), 0.01) * (1 / n_tar + 1 / n_non))
    g_lo = max(int(np.searchsorted(d, -delta, side="left")) - 1, 0)
    g_hi = int(np.searchsorted(d, delta, side="right"))  # first group beyond; may be len(starts)
    lo = int(starts[g_lo])
    hi = int(starts[g_hi]) if g_hi < starts.size else n
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    below = rank < lo
    # Reduced problem: [targets below, non-targets below] | window | [targets above, non-targets above].
    # Its operating points are accept-all, the window's groups and the first group above it.
    reduced_starts = np.r_[0, starts[g_lo:g_hi] - lo + 2, hi - lo + 2]
    return _EerWindow(order, starts, tar_sorted, order[lo:hi], tar_sorted[lo:hi],
                      below & is_tar, below & ~is_tar,
                      np.r_[True, False, tar_sorted[lo:hi], True, False], reduced_starts, n_tar, n_non)


def _window_eers(win: _EerWindow, counts: np.ndarray, front_tar: np.ndarray,
                 front_non: np.ndarray) -> np.ndarray:
    """EER of each row of ``counts`` (B, n: how often each trial is drawn), exactly as
    :func:`cdino.metrics.eer` on the repeated trials; ``front_*`` are the counts of the
    targets / non-targets below the window."""
    window = counts[:, win.trials]
    n_tar, n_non = win.n_tar, win.n_non
    back_tar = n_tar - front_tar - window[:, win.tar_window].sum(axis=1)
    back_non = n_non - front_non - window[:, ~win.tar_window].sum(axis=1)
    reduced = np.concatenate([front_tar[:, None], front_non[:, None], window,
                              back_tar[:, None], back_non[:, None]], axis=1)
    eers = metrics._eers_from_sorted_counts(win.reduced_tar, win.reduced_starts, reduced)
    # The window brackets the crossing when P_miss - P_fa <= 0 at its first point and
    # >= 0 at the first point above it (exact integer comparisons).
    low_ok = front_tar * n_non <= (n_non - front_non) * n_tar
    high_ok = (n_tar - back_tar) * n_non >= back_non * n_tar
    redo = np.flatnonzero(~(low_ok & high_ok))
    if redo.size:
        eers[redo] = metrics._eers_from_sorted_counts(win.tar_sorted, win.starts, counts[redo][:, win.order])
    return eers


def _resample_counts(rng: np.random.Generator, tar_idx: np.ndarray, non_idx: np.ndarray,
                     n: int, rows: int) -> np.ndarray:
    """(rows, n) draw counts: per row, n_tar targets and n_non non-targets with replacement."""
    draws = np.concatenate([tar_idx[rng.integers(0, tar_idx.size, (rows, tar_idx.size))],
                            non_idx[rng.integers(0, non_idx.size, (rows, non_idx.size))]], axis=1)
    draws += (np.arange(rows) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=rows * n).reshape(rows, n)


def _bootstrap_eers(systems: list[np.ndarray], labels, n_boot: int, seed: int = BOOTSTRAP_SEED,
                    sigmas: float = WINDOW_SIGMAS) -> np.ndarray:
    """(len(systems), n_boot) EERs of every system on the same stratified resamples of the
    trials (resample ``b`` is one draw of trials, shared by all systems)."""
    is_tar = np.asarray(labels).astype(bool)
    n = is_tar.size
    windows = [_eer_window(np.asarray(s, dtype=np.float64), is_tar, sigmas) for s in systems]
    masks = np.stack([m for w in windows for m in (w.front_tar, w.front_non)], axis=1).astype(np.float64)
    tar_idx, non_idx = np.flatnonzero(is_tar), np.flatnonzero(~is_tar)
    rng = np.random.default_rng(seed)
    block = max(1, min(n_boot, 4_000_000 // n))
    out = np.empty((len(systems), n_boot))
    for b0 in range(0, n_boot, block):
        rows = min(block, n_boot - b0)
        counts = _resample_counts(rng, tar_idx, non_idx, n, rows)
        front = np.rint(counts.astype(np.float64) @ masks).astype(np.int64)  # exact: integer sums < 2**53
        for k, win in enumerate(windows):
            out[k, b0:b0 + rows] = _window_eers(win, counts, front[:, 2 * k], front[:, 2 * k + 1])
    return out


# ---------------------------------------------------------------------- summary


def _spread(values: list[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size >= 2 else None,
            "min": float(v.min()), "max": float(v.max())}


def _verdict(lo: float, hi: float, wins: int, n: int) -> str:
    if lo > 0 and wins == n:
        return SUPPORTED
    if hi < 0:
        return CONTRADICTED
    return WITHIN_NOISE


def claim_figures(diff: list[float], boot_diff: np.ndarray) -> dict:
    """A claim's figures from ``diff`` (per seed, EER of the worse arm minus the better's)
    and ``boot_diff`` (the bootstrap distribution of their mean over seeds): mean and
    spread, wins, the 95 % interval and the verdict (module doc)."""
    lo, hi = (float(q) for q in np.quantile(boot_diff, [0.025, 0.975]))
    wins = int(sum(d > 0 for d in diff))
    spread = _spread(diff)
    return {"eer_diff": [float(d) for d in diff], "mean": spread["mean"], "sd": spread["sd"], "wins": wins,
            "n": len(diff), "ci95": [lo, hi], "verdict": _verdict(lo, hi, wins, len(diff))}


def paired_claim(better: list[np.ndarray], worse: list[np.ndarray], labels, n_boot: int = 1000) -> dict:
    """"``better`` beats ``worse``" over seeds, judged as the study judges its claims:
    ``better[i]`` and ``worse[i]`` are seed ``i``'s per-trial scores of the two systems on
    the same trials (``labels``); EERs from the scores, the paired bootstrap over trials
    (the study's resamples) of the mean difference."""
    if not better or len(better) != len(worse):
        raise ValueError(f"need one score array of each system per seed; got {len(better)} and {len(worse)}")
    labels = np.asarray(labels)
    n = len(better)
    boot = _bootstrap_eers([*better, *worse], labels, n_boot)
    diff = [metrics.eer(w, labels) - metrics.eer(b, labels) for b, w in zip(better, worse)]
    return claim_figures(diff, np.mean([boot[n + i] - boot[i] for i in range(n)], axis=0))


def summarize(study_dir: Path, seeds: list[int], n_boot: int = 1000) -> dict:
    """Per-arm spread over ``seeds`` and the verdict on every claim (see the module doc).

    Arms are read from ``study_dir/seed{S}/results.json`` (EERs and minDCFs recomputed from
    the arm's scores, which must reproduce the recorded EER); arms absent from a seed are
    skipped, claims with no seed holding both arms are left out. A seed folder without
    ``results.json`` is a :class:`~cdino.errors.DataError`.
    """
    study_dir = Path(study_dir)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("no seeds to summarize")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat: {seeds}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1; got {n_boot}")
    results = {s: _read_results(study_dir / f"seed{s}") for s in seeds}
    trials = read_trials(_trials_path(study_dir, results))
    labels = np.asarray(trials.labels)
    for s, res in results.items():
        recorded = res.get("test", {}).get("n_trials")
        if recorded is not None and int(recorded) != len(trials):
            raise DataError(f"{study_dir / f'seed{s}' / 'results.json'}: evaluated on {recorded} trials, "
                            f"but {trials.path} holds {len(trials)}")

    arms: dict[str, dict] = {}
    scores: dict[tuple[str, int], np.ndarray] = {}
    for name, arm in ARMS.items():
        row = {"label": arm.label, "seeds": [], "eer": [], "mindcf_0.01": [], "scores": [], "valid_eer": []}
        for s in seeds:
            seed_dir = study_dir / f"seed{s}"
            entry = next((e for e in (_lookup(results[s], p) for p in arm.sources) if e is not None), None)
            if entry is None:
                continue
            found = _arm_scores(seed_dir, arm, entry, trials)
            row["seeds"].append(s)
            row["valid_eer"].append(float(entry["valid_eer"]) if entry.get("valid_eer") is not None else None)
            if found is None:
                row["eer"].append(float(entry["eer"]))
                row["mindcf_0.01"].append(float(entry["mindcf_0.01"]) if "mindcf_0.01" in entry else None)
                row["scores"].append(None)
            else:
                sc, path = found
                scores[name, s] = sc
                row["eer"].append(metrics.eer(sc, labels))
                row["mindcf_0.01"].append(metrics.min_dcf(sc, labels, 0.01))
                row["scores"].append(str(path.relative_to(study_dir)))
        if row["seeds"]:
            arms[name] = {**row, **_spread(row["eer"])}

    testable = []
    for claim in CLAIMS:
        if claim.better not in arms or claim.worse not in arms:
            continue
        both = [s for s in arms[claim.better]["seeds"] if s in arms[claim.worse]["seeds"]]
        if not both:
            continue
        for arm in (claim.better, claim.worse):
            missing = [s for s in both if (arm, s) not in scores]
            if missing:
                s = missing[0]
                raise DataError(f"{study_dir / f'seed{s}' / 'eval'}: no scores.txt for arm '{arm}' "
                                f"(looked in {', '.join(ARMS[arm].scores)}); claim '{claim.name}' "
                                "needs per-trial scores for its bootstrap")
        testable.append((claim, both))

    keys = sorted({(arm, s) for claim, both in testable for arm in (claim.better, claim.worse) for s in both},
                  key=lambda k: (list(ARMS).index(k[0]), seeds.index(k[1])))
    boot = dict(zip(keys, _bootstrap_eers([scores[k] for k in keys], labels, n_boot))) if keys else {}

    claims: dict[str, dict] = {}
    eer_of = {name: dict(zip(a["seeds"], a["eer"])) for name, a in arms.items()}
    for claim, both in testable:
        diff = [eer_of[claim.worse][s] - eer_of[claim.better][s] for s in both]
        boot_mean = np.mean([boot[claim.worse, s] - boot[claim.better, s] for s in both], axis=0)
        claims[claim.name] = {"better": claim.better, "worse": claim.worse, "sentence": claim.sentence,
                              "seeds": both, **claim_figures(diff, boot_mean)}
    baselines = {}
    for s in seeds:
        for name, b in (results[s].get("baselines") or {}).items():
            if isinstance(b, dict) and "eer" in b:
                baselines.setdefault(name, []).append(float(b["eer"]))
    return {"seeds": seeds, "trials": {"path": str(trials.path), "n_trials": len(trials)},
            "n_boot": int(n_boot), "arms": arms, "claims": claims, "baselines": baselines,
            "validation": validation_agreement(arms)}


#: The round-1 variants a run could choose between on the validation split.
CHOICE = ("gate_off", "fixed_gate", "dlg", "dlg_lc")


def validation_agreement(arms: dict) -> dict:
    """How the label-free validation EER ranks the arms, against the test EER: Spearman's
    rank correlation over the self-supervised arms that have both, and the round-1 variant
    (:data:`CHOICE`) each would pick. Empty when no arm has a validation EER."""
    from scipy.stats import spearmanr

    have = {n: a for n, a in arms.items() if not n.startswith("supervised")
            and a.get("valid_eer") and all(v is not None for v in a["valid_eer"])}
    if len(have) < 2:
        return {}
    names = list(have)
    valid = [float(np.mean(have[n]["valid_eer"])) for n in names]
    test = [have[n]["mean"] for n in names]
    rho = spearmanr(valid, test).statistic if len(set(valid)) > 1 and len(set(test)) > 1 else float("nan")
    out = {"arms": names, "valid_mean": valid, "test_mean": test, "spearman": float(rho)}
    pick = [n for n in CHOICE if n in have]
    if pick:
        out["choice_by_valid"] = min(pick, key=lambda n: valid[names.index(n)])
        out["choice_by_test"] = min(pick, key=lambda n: test[names.index(n)])
    return out


# ----------------------------------------------------------------------- output


def _pct(x: float | None, sign: bool = False) -> str:
    return "–" if x is None else (f"{100 * x:+.2f}" if sign else f"{100 * x:.2f}")


def plot_study(summary: dict, path: Path) -> Path:
    """EER (%) of every arm: one point per seed (marker per seed) and the mean as a bar."""
    from matplotlib.figure import Figure

    from cdino.eval.plots import save_figure

    names = list(summary["arms"])
    fig = Figure(figsize=(max(5.0, 0.75 * len(names) + 2), 4.2))
    ax = fig.add_subplot()
    x = np.arange(len(names))
    means = [100 * summary["arms"][n]["mean"] for n in names]
    ax.bar(x, means, width=0.6, color="tab:blue", alpha=0.35, label="mean over seeds")
    markers = "oDs^v<>pP*X"
    seeds = summary["seeds"]
    for j, seed in enumerate(seeds):
        offset = (j - (len(seeds) - 1) / 2) * 0.12
        xs = [xi + offset for xi, n in zip(x, names) if seed in summary["arms"][n]["seeds"]]
        ys = [100 * summary["arms"][n]["eer"][summary["arms"][n]["seeds"].index(seed)]
              for n in names if seed in summary["arms"][n]["seeds"]]
        ax.plot(xs, ys, ls="none", marker=markers[j % len(markers)], ms=5, color="tab:blue",
                label=f"seed {seed}")
    for xi, m, n in zip(x, means, names):
        ax.annotate(f"{m:.2f}", (xi, max(m, 100 * max(summary["arms"][n]["eer"]))), xytext=(0, 5), textcoords="offset points", ha="center",
                    va="bottom", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("EER (%)")
    top = max([100 * max(summary["arms"][n]["eer"]) for n in names] + [1e-3])
    ax.set_ylim(0, top * 1.15)
    ax.grid(True, axis="y", lw=0.5, color="0.85")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def write_study(study_dir: Path, seeds: list[int], summary: dict, out_json: Path, out_md: Path) -> None:
    """Write the summary as ``out_json`` and a report ``out_md`` with a plot beside it
    (``plots/eer_by_seed.png``), both atomically."""
    study_dir, out_json, out_md = Path(study_dir), Path(out_json), Path(out_md)
    write_lines(out_json, [json.dumps(summary, indent=1)])
    plot = plot_study(summary, out_md.parent / "plots" / "eer_by_seed.png")
    seeds = list(seeds)
    lines = [f"# Ablation study — {len(seeds)} training seed{'s' * (len(seeds) != 1)} ({', '.join(map(str, seeds))})",
             "",
             f"Folders `{study_dir}/seed{{S}}`; test trials `{summary['trials']['path']}` "
             f"({summary['trials']['n_trials']} trials, the same for every seed and arm). EERs in %; "
             "sd is the sample sd over seeds.", "",
             "| arm | what | EER % mean ± sd | per-seed EER % | minDCF 0.01 mean | valid EER % mean |",
             "|---|---|---|---|---|---|"]
    for name, a in summary["arms"].items():
        per_seed = ", ".join(f"{s}: {_pct(e)}" for s, e in zip(a["seeds"], a["eer"]))
        dcf = [v for v in a["mindcf_0.01"] if v is not None]
        val = [v for v in a.get("valid_eer", []) if v is not None]
        sd = "–" if a["sd"] is None else _pct(a["sd"])
        lines.append(f"| {name} | {a['label']} | {_pct(a['mean'])} ± {sd} | {per_seed} | "
                     f"{f'{np.mean(dcf):.3f}' if dcf else '–'} | {_pct(float(np.mean(val))) if val else '–'} |")
    base = summary.get("baselines", {})
    if "visual_only" in base:
        weak = base.get("visual_only_weak")
        lines += ["", f"Face proxy alone (cosine, test trials where both sides have a face): EER "
                      f"{_pct(base['visual_only'][0])} % (default)"
                      + (f", {_pct(weak[0])} % (weak, used by `audio_visual_weak`)" if weak else "") + "."]
    v = summary.get("validation") or {}
    if v:
        lines += ["", f"**Label-free validation** (pseudo-label trials of held-out training utterances): "
                      f"Spearman ρ = {v['spearman']:.2f} between the arms' mean validation EER and mean test EER "
                      f"({len(v['arms'])} self-supervised arms)."
                      + (f" Among the round-1 variants it would choose **{v['choice_by_valid']}**; the test "
                         f"trials rank **{v['choice_by_test']}** best." if "choice_by_valid" in v else "")]
    lines += ["", "## Claims", "",
              "ΔEER = EER(worse) − EER(better) in percentage points, per seed; positive means the claim "
              f"holds in that seed. The 95 % interval is a paired bootstrap over trials ({summary['n_boot']} "
              "resamples, one common resample of the trials for both arms and every seed), of the mean ΔEER "
              "over seeds. **supported**: the interval lies above 0 and every seed wins; **contradicted**: "
              "it lies below 0; otherwise **not supported (within noise)**.", "",
              "| claim | better | worse | ΔEER pp mean ± sd | per-seed ΔEER pp | wins | 95 % interval pp | verdict |",
              "|---|---|---|---|---|---|---|---|"]
    for name, c in summary["claims"].items():
        sd = "–" if c["sd"] is None else _pct(c["sd"])
        lines.append(f"| {name} | {c['better']} | {c['worse']} | {_pct(c['mean'], True)} ± {sd} | "
                     f"{', '.join(_pct(d, True) for d in c['eer_diff'])} | {c['wins']}/{c['n']} | "
                     f"[{_pct(c['ci95'][0], True)}, {_pct(c['ci95'][1], True)}] | **{c['verdict']}** |")
    lines.append("")
    for name, c in summary["claims"].items():
        lines.append(f"- {c['sentence']} — **{c['verdict']}** ({_pct(c['mean'], True)} pp, "
                     f"{c['wins']} of {c['n']} seeds).")
    untested = [c for c in CLAIMS if c.name not in summary["claims"]]
    for c in untested:
        lines.append(f"- {c.sentence} — **not tested**: no seed has both `{c.better}` and `{c.worse}`.")
    lines += ["", f"![EER per arm and seed]({plot.relative_to(out_md.parent).as_posix()})", ""]
    write_lines(out_md, lines)


def print_study(summary: dict) -> None:
    """A short console summary: each arm's EER spread and each claim's verdict."""
    seeds = summary["seeds"]
    print(f"ablation study: {len(seeds)} seeds ({', '.join(map(str, seeds))}), "
          f"{summary['trials']['n_trials']} trials, {summary['n_boot']} bootstrap resamples")
    for name, a in summary["arms"].items():
        sd = "–" if a["sd"] is None else f"{100 * a['sd']:.2f}"
        print(f"  {name:<19} EER {100 * a['mean']:6.2f} ± {sd:>5} %  "
              f"({', '.join(f'{100 * e:.2f}' for e in a['eer'])})")
    for name, c in summary["claims"].items():
        print(f"  {name:<28} ΔEER {100 * c['mean']:+6.2f} pp  wins {c['wins']}/{c['n']}  "
              f"95 % [{100 * c['ci95'][0]:+.2f}, {100 * c['ci95'][1]:+.2f}]  {c['verdict']}")
