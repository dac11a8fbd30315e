"""results.json (the contract of DESIGN.md section 3) and report.md with plots."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from cdino.atomic import write_text

TARGETS_NOTE = ("targets: goals of the method's paper that this run's figures are checked against, "
                "for information; nothing is tuned on them")
METRIC_KEYS = ("eer", "mindcf_0.01", "mindcf_0.05", "valid_eer",  # valid_eer: label-free (held-out training utterances)
               "dev_eer", "dev_mindcf_0.01", "dev_mindcf_0.05")  # dev_*: the labelled dev split settings are chosen on


def _scores(out: Path, name: str):
    """The scores a stage's evaluation wrote (in trial order), or ``None``."""
    path = out / "eval" / name / "scores.txt"
    if not path.is_file():
        return None
    scores = np.array([float(line.split()[2]) for line in path.read_text().splitlines() if line.strip()])
    return scores


def _with_ci(entry: dict, scores, labels, n_boot: int, seed: int = 0) -> dict:
    from cdino.metrics import bootstrap_eer

    if scores is not None and len(scores) == len(labels) and n_boot > 0:
        lo, hi = bootstrap_eer(scores, labels, n_boot=n_boot, seed=seed)
        entry["eer_ci95"] = [float(lo), float(hi)]
    return entry


def _metrics(d: dict) -> dict:
    return {k: float(d[k]) for k in METRIC_KEYS if d.get(k) is not None}


def collect_results(pipe, final: str) -> dict:
    from cdino.data.kaldi_dir import read_trials

    out = pipe.out
    trials = read_trials(pipe.trials)
    labels = np.asarray(trials.labels)
    n_boot = pipe.r.bootstrap
    stages = []

    def add(name: str, res: dict, extra: dict | None = None) -> None:
        entry = {"name": name, **_metrics(res), "seconds": float(res.get("seconds", 0.0))}
        for k in ("nmi", "purity", "nmi_audio_only", "n_clusters"):
            if k in res:
                entry[k] = res[k]
        if extra:
            entry.update(extra)
        stages.append(_with_ci(entry, _scores(out, name), labels, n_boot))

    for name in ("dino", "cdino"):
        info = pipe.stage_info(name)
        if info:
            clusters = [h.get("clustering") for h in info.get("history", []) if isinstance(h, dict) and h.get("clustering")]
            add(name, info, {"clusterings": clusters} if clusters else None)
    stops = {}
    for stage in ("pseudo", "mm"):
        info = pipe.stage_info(stage)
        rounds = info.get("rounds", {})
        for name in sorted(rounds, key=lambda n: int(n.rsplit("_r", 1)[1])):
            res = rounds[name]
            add(name, res, {"gate": res.get("gate", [])})
            if "stop" in res:
                stops.setdefault(stage, []).append({"after": name, **res["stop"]})
    results = {
        "test": {"data": str(pipe.test_dir), "trials": str(pipe.trials), "n_trials": int(len(labels))},
        "scoring": "cosine, train-mean subtracted",
        "stages": stages,
        "final": final,
        "selection": getattr(pipe, "selection", None),
        "choose": _choices(pipe.stage_info("choose")),
        "stops": {stage: {"decisions": d, "kept": pipe.stage_info(stage).get("kept")} for stage, d in stops.items()},
    }
    base = pipe.stage_info("baselines")
    results["baselines"] = {}
    for name in ("untrained", "fbank_stats", "visual_only", "visual_only_weak"):
        if name in base:
            results["baselines"][name] = _with_ci({**_metrics(base[name]),
                                                   "seconds": float(base[name].get("seconds", 0.0))},
                                                  _scores(out, name), labels, n_boot)
    sup = pipe.stage_info("supervised")
    if sup:
        results["supervised"] = _with_ci({**_metrics(sup), "seconds": float(sup.get("seconds", 0.0)),
                                          "steps": sup.get("steps")}, _scores(out, "supervised"),
                                         labels, n_boot)
    abl = pipe.stage_info("ablations")
    results["ablations"] = {}
    for name, res in abl.items():
        if isinstance(res, dict) and "eer" in res:
            scores_name = "pseudo_r1" if res.get("same_run_as") == "pseudo_r1" else f"{name}_r1"
            results["ablations"][name] = _with_ci({**_metrics(res), "seconds": float(res.get("seconds", 0.0)),
                                                   "gate": res.get("gate", []), "scores": scores_name},
                                                  _scores(out, scores_name), labels, n_boot)
    results["controls"] = {}
    for name, res in pipe.stage_info("controls").items():
        if isinstance(res, dict) and "eer" in res:
            results["controls"][name] = _with_ci({**_metrics(res), "seconds": float(res.get("seconds", 0.0)),
                                                  "steps": res.get("steps")}, _scores(out, name), labels, n_boot)
    corpus = pipe.stage_info("corpus")
    # The one total: every stage's recorded wall time (those of earlier runs included) and
    # the report's own, so results.json, report.md and the console say the same number.
    total = sum(float(pipe.stage_info(s).get("seconds", 0.0)) for s in
                ("corpus", "baselines", "dino", "cdino", "choose", "pseudo", "mm", "ablations", "controls",
                 "supervised"))
    total += time.perf_counter() - getattr(pipe, "report_started", time.perf_counter())
    results["seconds"] = {"corpus": float(corpus.get("seconds", 0.0)), "total": total}
    return results


def _choices(info: dict) -> list[dict]:
    """The ``choose`` stage's decisions: per key, every candidate's label-free criterion
    beside its test (and dev) EER, and the pick."""
    out = []
    for d in info.get("keys", []):
        cands = {}
        for value, res in d.get("candidates", {}).items():
            cands[value] = {"criterion": d["values"][value][d["criterion"]], **_metrics(res), "folder": res.get("folder")}
        out.append({"key": d["key"], "criterion": d["criterion"], "pick": d["pick"], "recordings": d.get("recordings"),
                    "data": d.get("data"), "candidates": cands})
    return out


def _choice_lines(results: dict) -> list[str]:
    lines = []
    if results.get("choose"):
        lines += ["## Settings chosen without labels (`choose`)", "",
                  "Each candidate trained round 1 from C-DINO; the label-free criterion on unlabelled recordings "
                  f"(`{results['choose'][0].get('data') or 'the training data'}`) picked the value (keys in order, each "
                  "with the earlier picks). Test and dev EER are shown for the reader; nothing read them.", "",
                  "| key | value | label-free % | EER % | dev EER % | picked |", "|---|---|---|---|---|---|"]
        for d in results["choose"]:
            for value, c in d["candidates"].items():
                picked = "**yes**" if value == json.dumps(d["pick"], default=str) else ""
                lines.append(f"| {d['key']} | {value} | {_fmt_pct(c['criterion'])} | {_fmt_pct(c.get('eer'))} | "
                             f"{_fmt_pct(c.get('dev_eer'))} | {picked} |")
        lines.append("")
    for stage, st in (results.get("stops") or {}).items():
        lines += [f"Stop rule of the {stage} rounds (`pseudo.stop: criterion`): "
                  + "; ".join(f"after {d['after']} {d['criterion']} "
                              + ", ".join(f"r{k[len('round'):]} {100 * v[d['criterion']]:.2f} %" for k, v in d["values"].items())
                              + (f" → stop, keep round {d['best']}" if d["stop"] else " → go on")
                              for d in st["decisions"]) + ".", ""]
    return lines


def _fmt_pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def targets(results: dict) -> list[tuple[str, bool, str]]:
    """The demo's targets (issue #7), each (statement, met, numbers)."""
    by = {s["name"]: s for s in results["stages"]}
    out = []
    pseudo = [s for s in results["stages"] if s["name"].startswith("pseudo_r")]
    mm = [s for s in results["stages"] if s["name"].startswith("mm_r")]
    if "dino" in by and "cdino" in by and pseudo:
        seq = [by["dino"]["eer"], by["cdino"]["eer"], pseudo[-1]["eer"]]
        out.append(("EER falls along DINO → C-DINO → last audio DLG-LC round",
                    seq[0] > seq[1] > seq[2], " → ".join(f"{100 * e:.2f} %" for e in seq)))
    if pseudo and mm:
        out.append(("last audio-visual round beats last audio-only round at equal cost",
                    mm[-1]["eer"] < pseudo[-1]["eer"],
                    f"{100 * mm[-1]['eer']:.2f} % vs {100 * pseudo[-1]['eer']:.2f} %"))
    sup = results.get("supervised")
    final = by.get(results["final"])
    if sup and pseudo:
        ratio = pseudo[-1]["eer"] / max(sup["eer"], 1e-9)
        out.append(("last audio-only round within 2.0× of the supervised reference", ratio <= 2.0,
                    f"{100 * pseudo[-1]['eer']:.2f} % vs {100 * sup['eer']:.2f} % (×{ratio:.2f})"))
    if sup and final:
        ratio = final["eer"] / max(sup["eer"], 1e-9)
        out.append(("final self-supervised EER within 1.25× of the supervised reference",
                    ratio <= 1.25, f"{100 * final['eer']:.2f} % vs {100 * sup['eer']:.2f} % (×{ratio:.2f})"))
    return out


def write_report(pipe, final: str) -> dict:
    from cdino.eval import plots

    out = pipe.out
    results = collect_results(pipe, final)
    write_text(out / "results.json", json.dumps(results, indent=1))

    pdir = out / "plots"
    pdir.mkdir(exist_ok=True)
    names = [s["name"] for s in results["stages"]]
    eers = [s["eer"] for s in results["stages"]]
    lo = [s.get("eer_ci95", [s["eer"]] * 2)[0] for s in results["stages"]]
    hi = [s.get("eer_ci95", [s["eer"]] * 2)[1] for s in results["stages"]]
    sup = results.get("supervised")
    if names:
        plots.plot_eer_by_stage(names, eers, pdir / "eer_by_stage.png", lo=lo, hi=hi,
                                reference=sup["eer"] if sup else None)
    from cdino.data.kaldi_dir import read_trials

    labels = np.asarray(read_trials(pipe.trials).labels)
    systems = {}
    for name in ["fbank_stats", "untrained", "dino", "cdino"] + names[-1:] + (["supervised"] if sup else []):
        sc = _scores(out, name)
        if sc is not None and name not in systems:
            systems[name] = (sc, labels)
    if systems:
        plots.plot_det(systems, pdir / "det.png", title="DET curves (test trials)")
    gate_plots = sorted(p.relative_to(out) for p in out.glob("pseudo/round*/plots/*.png"))
    gate_plots += sorted(p.relative_to(out) for p in out.glob("mm/round*/plots/*.png"))

    lines = [f"# cdino report — {pipe.r.name}", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M')}. Test: `{results['test']['trials']}` "
             f"({results['test']['n_trials']} trials). Scoring: {results['scoring']}. "
             "EER and minDCF are in %/absolute; 95 % intervals come from a bootstrap over trials. "
             + (f"The exported model (`model/`) is the recipe's fixed final stage **{final}**; "
                "nothing was selected on the test trials." if not results.get("selection") else
                f"The exported model (`model/`) is **{final}**, picked after training by the label-free "
                f"criterion {results['selection']['criterion']} on {results['selection']['recordings']} unlabelled "
                f"recordings of `{results['selection'].get('data') or 'the training data'}` (column *label-free %*); "
                "nothing was selected on the test trials.")
             + (" *valid EER* is label-free: trials from k-means pseudo labels of training utterances "
                "held out of every stage (`validation` in the recipe)." if pipe.valid_dir else "")
             + (" *dev EER* is on the labelled development split (speakers of neither train nor test) "
                "that recipe settings are chosen on." if any("dev_eer" in st for st in results["stages"]) else "")
             + " NMI and purity score each round's pseudo labels against the true training speakers "
             "(a diagnostic; nothing reads them to decide).", "",
             "| stage | EER % | 95 % CI | minDCF 0.01 | minDCF 0.05 | dev EER % | NMI | purity | valid EER % | "
             "label-free % | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    sel = results.get("selection") or {}

    def row(name, s):
        crit = sel.get("values", {}).get(s.get("name", ""), {}).get(sel.get("criterion", ""))
        ci = s.get("eer_ci95")
        ci_txt = f"{100 * ci[0]:.2f}–{100 * ci[1]:.2f}" if ci else "–"
        nmi = f"{s['nmi']:.3f}" if "nmi" in s else "–"
        pur = f"{s['purity']:.3f}" if "purity" in s else "–"
        return (f"| {name} | {_fmt_pct(s.get('eer'))} | {ci_txt} | {s.get('mindcf_0.01', float('nan')):.3f} | "
                f"{s.get('mindcf_0.05', float('nan')):.3f} | {_fmt_pct(s.get('dev_eer'))} | {nmi} | {pur} | "
                f"{_fmt_pct(s.get('valid_eer'))} | {_fmt_pct(crit)} | {s.get('seconds', 0):.0f} |")

    for name, s in results["baselines"].items():
        lines.append(row(f"baseline: {name}", s))
    for s in results["stages"]:
        lines.append(row(s["name"] + (" (final)" if s["name"] == final else ""), s))
    if sup:
        lines.append(row("supervised reference", sup))
    lines.append("")
    if sup:
        lines.append(f"The supervised reference trained {sup.get('steps')} steps on true labels with the same "
                     "encoder, trainer and AAM loss (its budget is at least that of the longest self-supervised stage).")
        lines.append("")
    if results.get("controls"):
        lines += ["## Equal-cost controls", "",
                  "`dino_equal`: DINO trained on for C-DINO's epochs with C-DINO's schedule (compare with "
                  "`cdino`). `supervised_full`: the supervised reference at the steps of DINO + C-DINO + "
                  "every round.", "",
                  "| control | EER % | 95 % CI | minDCF 0.01 | steps |", "|---|---|---|---|---|"]
        for name, s in results["controls"].items():
            ci = s.get("eer_ci95")
            lines.append(f"| {name} | {_fmt_pct(s['eer'])} | "
                         f"{f'{100 * ci[0]:.2f}–{100 * ci[1]:.2f}' if ci else '–'} | {s['mindcf_0.01']:.3f} | "
                         f"{s.get('steps')} |")
        lines.append("")
    lines += _choice_lines(results)
    if not results["ablations"]:
        lines += ["Ablations of the loss gate and label correction, the equal-cost controls and "
                  "their spread over training seeds are the subject of `cdino run ablations` "
                  "(several seeds, paired comparisons); this run has none.", ""]
    if results["ablations"]:
        lines += ["## Loss-gate ablations (one round from C-DINO each)", "",
                  "| variant | EER % | 95 % CI | minDCF 0.01 |", "|---|---|---|---|"]
        for name, s in results["ablations"].items():
            ci = s.get("eer_ci95")
            lines.append(f"| {name} | {_fmt_pct(s['eer'])} | "
                         f"{f'{100 * ci[0]:.2f}–{100 * ci[1]:.2f}' if ci else '–'} | {s['mindcf_0.01']:.3f} |")
        lines.append("")
    gate_rows = []
    for s in results["stages"]:
        for g in s.get("gate", []) or []:
            gate_rows.append((s["name"], g))
    if gate_rows:
        lines += ["## Loss gate and label correction per epoch", "",
                  "Gate precision/recall at finding wrong pseudo labels and correction accuracy use the "
                  "training set's true labels as a diagnostic only. \"Classes corrected into\" (label-free) is "
                  "the effective number of classes the corrections went to, exp(entropy): a small count means "
                  "corrections pile into a few classes, the sign of a runaway.", "",
                  "| stage | epoch | threshold | reliable | corrected | corrected / unreliable | classes corrected into | gate precision | gate recall | correction acc. |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        f = lambda v: "–" if v is None else (f"{v:.3f}" if np.isfinite(v) else "∞")
        for name, g in gate_rows:
            into = g.get("corrected_classes_effective")
            lines.append(f"| {name} | {g.get('epoch', 0) + 1} | {f(g.get('threshold'))} | "
                         f"{f(g.get('reliable_fraction'))} | {f(g.get('corrected_fraction'))} | "
                         f"{f(g.get('corrected_of_unreliable'))} | {'–' if into is None else f'{into:.0f}'} | "
                         f"{f(g.get('gate_precision'))} | {f(g.get('gate_recall'))} | "
                         f"{f(g.get('correction_accuracy'))} |")
        lines.append("")
    tg = targets(results)
    if tg:
        lines += ["## Targets", "", TARGETS_NOTE.removeprefix("targets: ").capitalize() + ".", ""]
        for text, ok, nums in tg:
            lines.append(f"- {'met' if ok else '**missed**'}: {text} ({nums})")
        lines.append("")
    lines += ["## Plots", "", "![EER per stage](plots/eer_by_stage.png)", "", "![DET](plots/det.png)", ""]
    if gate_plots:
        lines += ["### Loss gate per epoch (every round)", ""]
    for p in gate_plots:
        lines.append(f"![{p.stem}]({p})")
    lines += ["", f"Wall time: corpus {results['seconds']['corpus']:.0f} s, total {results['seconds']['total']:.0f} s.", ""]
    write_text(out / "report.md", "\n".join(lines))
    _print_summary(results)
    return results


def _print_summary(results: dict) -> None:
    print(f"{'stage':<22}{'EER %':>8}{'minDCF.01':>11}{'minDCF.05':>11}{'wall s':>9}")
    rows = [(f"baseline {k}", v) for k, v in results["baselines"].items()]
    rows += [(s["name"], s) for s in results["stages"]]
    if results.get("supervised"):
        rows.append(("supervised", results["supervised"]))
    rows += [(f"ablation {k}", v) for k, v in results.get("ablations", {}).items()]
    rows += [(f"control {k}", v) for k, v in results.get("controls", {}).items()]
    for name, s in rows:
        print(f"{name:<22}{100 * s['eer']:>8.2f}{s['mindcf_0.01']:>11.3f}{s['mindcf_0.05']:>11.3f}"
              f"{s.get('seconds', 0.0):>9.0f}")
    tg = targets(results)
    if tg:
        print(TARGETS_NOTE)
    for text, ok, nums in tg:
        print(f"target {'met' if ok else 'MISSED'}: {text} ({nums})")
