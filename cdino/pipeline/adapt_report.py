"""results.json and report.md of an adaptation run (:mod:`cdino.pipeline.adapt`).

The table compares the source model, the adapted model and the oracle on the target
trials, and the source model before and after on the source trials, with a bootstrap
95 % EER interval; the goals (share of the source → oracle gap closed, source-domain
forgetting) are stated as met, missed or not measured.
"""

from __future__ import annotations

import math
from pathlib import Path

from cdino.pipeline.staged_run import print_finished

GOALS_NOTE = ("goals: what the adaptation should achieve (the recipe's `goals`), checked against this "
              "run's figures for information; nothing is tuned on them")
METRICS = ("eer", "mindcf_0.01", "mindcf_0.05", "cllr", "min_cllr", "actdcf_0.01", "actdcf_0.05", "n_trials")


def _entry(res: dict | None, scores_path: Path, labels, n_boot: int) -> dict | None:
    """The reported metrics of one evaluation, with a bootstrap 95 % EER interval from the
    scores it wrote (``labels``: its trials' target flags)."""
    if not res or "eer" not in res:
        return None
    entry = {k: res[k] for k in METRICS if res.get(k) is not None}
    if n_boot > 0 and labels is not None and scores_path.is_file():
        import numpy as np

        from cdino.metrics import bootstrap_eer

        scores = np.array([float(line.split()[2]) for line in scores_path.read_text().splitlines() if line.strip()])
        if len(scores) == len(labels):
            lo, hi = bootstrap_eer(scores, labels, n_boot=n_boot, seed=0)
            entry["eer_ci95"] = [float(lo), float(hi)]
    return entry


def _trial_labels(path: Path | None):
    import numpy as np

    from cdino.data.kaldi_dir import read_trials

    return None if path is None or not Path(path).is_file() else np.asarray(read_trials(path).labels)


def _goals(res: dict, goals) -> dict:
    tgt, src = res["target"], res["source_domain"]
    out = {}
    a, b, c = (tgt[k]["eer"] if tgt.get(k) else None for k in ("source", "adapted", "oracle"))
    gap = {"target": goals.gap_closed, "value": None, "status": "not measured"}
    if None in (a, b, c):
        gap["why"] = "no oracle (no target labels, or run_oracle false)" if c is None else "missing evaluation"
    elif a - c <= 0:
        gap["why"] = f"no gap: the oracle ({100 * c:.2f} %) is not better than the source model ({100 * a:.2f} %)"
    else:
        gap["value"] = (a - b) / (a - c)
        gap["status"] = "met" if gap["value"] >= goals.gap_closed else "missed"
    out["gap_closed"] = gap
    before, after = (src[k]["eer"] if src.get(k) else None for k in ("before", "after"))
    loss = {"target": goals.max_source_loss, "value": None, "status": "not measured"}
    if None in (before, after):
        loss["why"] = "no source test trials"
    else:
        loss["value"] = (after - before) / before if before > 0 else (0.0 if after <= 0 else math.inf)
        loss["status"] = "met" if loss["value"] <= goals.max_source_loss else "missed"
    out["source_forgetting"] = loss
    adapted = tgt.get("adapted") or {}
    cal = {"target": goals.max_actdcf, "cllr_ratio_target": goals.max_cllr_ratio,
           "value": adapted.get("actdcf_0.01"), "status": "not measured"}
    if cal["value"] is None:
        cal["why"] = "the adapted model has no calibration"
    else:
        ratio = adapted["cllr"] / adapted["min_cllr"] if adapted.get("min_cllr") else math.inf
        cal["cllr_over_min"] = ratio
        ok = cal["value"] <= goals.max_actdcf and ratio <= goals.max_cllr_ratio
        cal["status"] = "met" if ok else "missed"
    out["calibration"] = cal
    return out


def collect_adapt_results(pipe) -> dict:
    """results.json of an adaptation run: ``adapt.target.{source,adapted,oracle}`` and
    ``adapt.source_domain.{before,after}`` (EER and minDCF as fractions), the rounds,
    step counts, goals and seconds."""
    _, s_test, s_trials = pipe.source_data()
    _, t_test, t_trials = pipe.target_data()
    labels = {"target": _trial_labels(t_trials), "source_domain": _trial_labels(s_trials)}

    def entry(info: dict, name: str) -> dict | None:
        side = name.split("/")[0]
        return _entry(info.get(side), pipe.out / "eval" / name / "scores.txt", labels[side], pipe.r.bootstrap)

    src, ada, ora = pipe.stage_info("source"), pipe.stage_info("adapt"), pipe.stage_info("oracle")
    sel = pipe.stage_info("select")
    last = sel.get("shipped") or f"adapt_r{pipe.rounds}"
    aligned = ada.get("aligned") or {}
    res = {
        "target": {"source": entry(src, "target/source"), "aligned": entry(aligned, "target/aligned"),
                   "adapted": entry(sel, f"target/{last}"), "oracle": entry(ora, "target/oracle")},
        **({"target_asnorm": {**(entry({"target": sel["target_asnorm"]}, f"target/{last}_asnorm") or {}),
                              "top_n": sel["target_asnorm"].get("top_n"), "cohort": sel["target_asnorm"].get("cohort")}}
           if sel.get("target_asnorm") else {}),
        "source_domain": {"before": entry(src, "source_domain/before"),
                          "aligned": entry(aligned, "source_domain/aligned"),
                          "after": entry(sel, "source_domain/after")},
    }
    seconds = {s: pipe.stage_info(s).get("seconds") for s in pipe.stages[:-1]}
    seconds["total"] = sum(v for v in seconds.values() if v)
    rounds = {}
    for name, r in (ada.get("rounds") or {}).items():
        keep = {k: r[k] for k in ("eer", "mindcf_0.01", "mindcf_0.05", "nmi", "purity", "n_clusters", "seconds")
                if r.get(k) is not None}
        rounds[name] = keep
    return {
        "name": pipe.r.name,
        "kind": "adapt",
        "scoring": "cosine, train-mean subtracted (each model's own training mean)",
        "data": {"source": {"model": str(pipe.source_model_dir), "test": _str(s_test), "trials": _str(s_trials)},
                 "target": {"train": str(pipe.target_data()[0]), "test": str(t_test), "trials": str(t_trials)}},
        "adapt": res,
        "rounds": rounds,
        "steps": {"source": src.get("steps"), "adapt": ada.get("steps"), "oracle": ora.get("steps")},
        "oracle": ora.get("skipped", "trained on the target's true labels, as many steps as the adaptation"
                          + (", from the source model" if pipe.r.oracle_from_source else ", from scratch")),
        "goals": _goals(res, pipe.r.goals),
        "final": last,
        "selection": sel.get("selection"),
        "seconds": seconds,
    }


def _str(p) -> str | None:
    return None if p is None else str(p)


def _pct(entry: dict | None, key: str = "eer") -> str:
    if not entry or entry.get(key) is None:
        return "–"
    if key != "eer":
        return f"{entry[key]:.3f}"
    ci = entry.get("eer_ci95")
    return f"{100 * entry['eer']:.2f}" + (f" ({100 * ci[0]:.2f}–{100 * ci[1]:.2f})" if ci else "")


def _goal_lines(goals: dict) -> list[str]:
    g, f = goals["gap_closed"], goals["source_forgetting"]
    lines = []
    text = (f"{g['value']:.2f} of the gap closed" if g["value"] is not None else g.get("why", ""))
    lines.append(f"adapted model closes ≥ {g['target']:.2f} of the source → oracle gap on the target: "
                 f"**{g['status']}** ({text})")
    text = (f"{100 * f['value']:+.1f} % relative source-domain EER" if f["value"] is not None
            else f.get("why", ""))
    lines.append(f"adapted model loses ≤ {100 * f['target']:.0f} % relative on the source domain: "
                 f"**{f['status']}** ({text})")
    c = goals.get("calibration")
    if c is not None:
        text = (f"actDCF(0.01) {c['value']:.3f}, Cllr / minCllr {c['cllr_over_min']:.2f}" if c["value"] is not None
                else c.get("why", ""))
        lines.append(f"adapted model's label-free calibration holds on the target (actDCF(0.01) ≤ {c['target']:g}, "
                     f"Cllr ≤ {c['cllr_ratio_target']:g} × minCllr): **{c['status']}** ({text})")
    return lines


def adapt_report_md(results: dict) -> str:
    a, steps = results["adapt"], results["steps"]
    t, s = a["target"], a["source_domain"]
    oracle_steps = f", {steps['oracle']} steps" if steps.get("oracle") else ""
    sel = results.get("selection")
    shipped = (f"shipped: {results['final']}, picked without labels by {sel['criterion']}" if sel
               else f"shipped: {results['final']}")
    rows = [("(a) source model", t["source"], s["before"]),
            ("(a') aligned (target BatchNorm statistics, mean, calibration; no labels, no training)",
             t.get("aligned"), s.get("aligned")),
            (f"(b) adapted ({len(results['rounds'])} DLG-LC rounds, {steps.get('adapt')} steps; {shipped})",
             t["adapted"], s["after"]),
            (f"(c) oracle (target labels{oracle_steps})", t["oracle"], None)]
    if a.get("target_asnorm"):
        asn = a["target_asnorm"]
        rows.insert(3, (f"(b+) adapted, AS-norm scoring (top {asn['top_n']} of a cohort of {asn['cohort']} target "
                        "training recordings, unlabelled)", asn, None))
    rows = [r for r in rows if r[1] is not None or not r[0].startswith("(a')")]
    out = [f"# Domain adaptation: {results['name']}", "",
           "Target-domain trials score the models on the domain adapted to; source-domain trials show "
           "what the adaptation forgets. EER in % (95 % bootstrap interval over trials), minDCF absolute. "
           "The adaptation used no target labels.", "",
           "| model | target EER % | target minDCF 0.01 | target minDCF 0.05 | target actDCF 0.01 | target Cllr / minCllr | source-domain EER % | source-domain minDCF 0.01 |",
           "|---|---|---|---|---|---|---|---|"]
    for name, tgt, src in rows:
        cllr = (f"{tgt['cllr']:.3f} / {tgt['min_cllr']:.3f}" if tgt and tgt.get("cllr") is not None
                and tgt.get("min_cllr") is not None else "–")
        out.append(f"| {name} | {_pct(tgt)} | {_pct(tgt, 'mindcf_0.01')} | {_pct(tgt, 'mindcf_0.05')} | "
                   f"{_pct(tgt, 'actdcf_0.01')} | {cllr} | {_pct(src)} | {_pct(src, 'mindcf_0.01')} |")
    out += ["", "## Goals", ""] + [f"- {line}" for line in _goal_lines(results["goals"])]
    if results["rounds"]:
        out += ["", "## Rounds (target test trials; clustering scored against the target labels, diagnostics only)", "",
                "| round | EER % | minDCF 0.01 | NMI | purity | seconds |", "|---|---|---|---|---|---|"]
        for name, r in results["rounds"].items():
            nmi = f"{r['nmi']:.3f}" if "nmi" in r else "–"
            pur = f"{r['purity']:.3f}" if "purity" in r else "–"
            out.append(f"| {name} | {_pct(r)} | {_pct(r, 'mindcf_0.01')} | {nmi} | {pur} | {r.get('seconds', 0):.0f} |")
    if sel:
        crit = sel["criterion"]
        eers = {"aligned": (t.get("aligned") or {}).get("eer"),
                **{n: r.get("eer") for n, r in results["rounds"].items()}}
        out += ["", f"## Stop rule (label-free: {crit} on the target's training recordings; the lowest is shipped)", "",
                f"| candidate | {crit} % | target test EER % (not used to choose) |", "|---|---|---|"]
        for name, row in sel["values"].items():
            mark = " (shipped)" if name == results["final"] else ""
            e = eers.get(name)
            out.append(f"| {name}{mark} | {100 * row[crit]:.2f} | {'–' if e is None else f'{100 * e:.2f}'} |")
    d = results["data"]
    out += ["", "## Data", "",
            f"- source model: `{d['source']['model']}`; source test trials: `{d['source']['trials']}`",
            f"- target training audio (unlabelled): `{d['target']['train']}`; target trials: `{d['target']['trials']}`",
            f"- oracle: {results['oracle']}",
            f"- total {results['seconds']['total']:.0f} s (" + ", ".join(
                f"{k} {v:.0f} s" for k, v in results["seconds"].items() if k != "total" and v) + ")", ""]
    return "\n".join(out)


def print_adapt_summary(results: dict, out: Path) -> None:
    a = results["adapt"]
    for label, entry in (("target  source model", a["target"]["source"]), ("target  adapted", a["target"]["adapted"]),
                         ("target  oracle", a["target"]["oracle"]), ("source  before", a["source_domain"]["before"]),
                         ("source  after", a["source_domain"]["after"])):
        print(f"{label:<22} EER {_pct(entry)} %")
    if a.get("target_asnorm"):
        print(f"{'target  adapted+ASnorm':<22} EER {_pct(a['target_asnorm'])} %")
    print(GOALS_NOTE)
    for line in _goal_lines(results["goals"]):
        print("goal " + line.replace("**", ""))
    print_finished("adaptation", out, results["seconds"]["total"])
