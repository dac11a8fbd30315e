"""Regret of the choices a method run made without labels, judged on the dev split.

A run of the method pipeline with ``choose`` (settings of the rounds picked by the
label-free criterion on training recordings) and ``pseudo.stop: criterion`` (the rounds end
at the first round the criterion finds no better than the best earlier one), evaluated with
``evaluate_dev: true``. For each choice this prints the candidates' criterion values and
dev EERs, the pick and the regret: the dev EER of the pick over the best candidate's,
relative. For the stop rule the candidates are all rounds the run has trained: to judge
it, train the rounds past the stop too (rerun with ``pseudo.pseudo.stop=never`` after
removing ``pseudo/done.json``: the rounds kept so far are reused and the later ones added).
The test trials are not read.

    python bench/select_in_run.py --run exp/choose1 > bench/results/selection/in_run_dev.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _task(values: dict[str, float], dev: dict[str, float], pick: str) -> dict:
    best = min(dev, key=dev.get)
    return {"criterion": values, "dev_eer": dev, "pick": pick, "best_by_dev": best,
            "regret": dev[pick] / dev[best] - 1.0}


def regrets(run: Path) -> dict:
    tasks = {}
    choose = run / "choose" / "done.json"
    if choose.is_file():
        for d in json.loads(choose.read_text())["keys"]:
            dev = {v: c["dev_eer"] for v, c in d["candidates"].items()}
            values = {v: d["values"][v][d["criterion"]] for v in d["candidates"]}
            tasks[d["key"]] = {"kind": "choose", "criterion_name": d["criterion"],
                               **_task(values, dev, json.dumps(d["pick"], default=str))}
    for stage in ("pseudo", "mm"):
        done = run / stage / "done.json"
        if not done.is_file():
            continue
        rounds = json.loads(done.read_text())["rounds"]
        stops = sorted((run / stage).glob("round*/stop.json"), key=lambda p: int(p.parent.name[5:]))
        if not stops:
            continue
        decisions = [json.loads(p.read_text()) for p in stops]
        ended = next((d for d in decisions if d["stop"]), None)
        kept = f"{stage}_r{ended['best'] if ended else len(rounds)}"
        dev = {n: r["dev_eer"] for n, r in rounds.items()}
        crit = {f"{stage}_r{k[5:]}": v[d["criterion"]] for d in decisions for k, v in d["values"].items()}
        tasks[f"{stage} rounds (stop rule)"] = {
            "kind": "stop", "criterion_name": decisions[0]["criterion"],
            "stopped_after": ended["round"] if ended else None, "rounds_trained": len(rounds),
            "decisions": [{k: d[k] for k in ("round", "best", "stop")} for d in decisions],
            **_task(crit, dev, kept)}
    ok = sum(t["regret"] <= 0.05 for t in tasks.values())
    return {"run": str(run), "tasks": tasks, "within_5_percent": ok, "n_tasks": len(tasks),
            "judged_on": "dev split (labelled; speakers of neither train nor test)"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="the method run's folder (evaluate_dev: true)")
    args = ap.parse_args(argv)
    if not (args.run / "recipe.yaml").is_file():
        print(f"error: --run {args.run}: not a run folder (no recipe.yaml)", file=sys.stderr)
        return 2
    json.dump(regrets(args.run), sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
