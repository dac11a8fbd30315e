"""The adaptation over several training seeds, as one JSON object: each step's target EER,
its share of the source → oracle gap, the source domain's loss, the calibration goal and
the label-free stop rule's regret.

Reads folders written by ``cdino run adapt --out DIR --set base.trainer.seed=S``
(``results.json`` and ``select/done.json``). The steps: the source model, the aligned model
(target BatchNorm statistics and target mean, no training), each DLG-LC round, the shipped
model (the stop rule's pick) and the oracle (the target's true labels, same steps).

    python bench/adapt_seeds.py /tmp/adapt_s0 /tmp/adapt_s1 /tmp/adapt_s2 > bench/results/adapt/three_seeds.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def _mean_sd(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
            "values": values}


def seed_summary(folder: Path) -> dict:
    """One run's steps, gap shares, source-domain change, calibration and stop-rule regret."""
    path = folder / "results.json"
    if not path.is_file():
        print(f"{path}: no results.json (the adaptation has not finished)", file=sys.stderr)
        raise SystemExit(2)
    res = json.loads(path.read_text())
    target = res["adapt"]["target"]
    eer = {"source": target["source"]["eer"], "aligned": target["aligned"]["eer"]}
    eer.update({name: r["eer"] for name, r in res["rounds"].items()})
    eer["shipped"], eer["oracle"] = target["adapted"]["eer"], target["oracle"]["eer"]
    if (res["adapt"].get("target_asnorm") or {}).get("eer") is not None:  # the shipped model, AS-norm scoring
        eer["shipped_asnorm"] = res["adapt"]["target_asnorm"]["eer"]
    gap = eer["source"] - eer["oracle"]
    share = {name: (eer["source"] - e) / gap for name, e in eer.items() if name not in ("source", "oracle")}
    select_path = folder / "select" / "done.json"
    picked = json.loads(select_path.read_text())["shipped"] if select_path.is_file() else None
    candidates = {k: v for k, v in eer.items() if k not in ("source", "shipped", "shipped_asnorm", "oracle")}
    best = min(candidates.values())
    src = res["adapt"]["source_domain"]
    adapted = target["adapted"]
    return {
        "folder": str(folder),
        "target_eer": eer,
        "gap_share": share,
        "stop_rule": {"picked": picked, "best": min(candidates, key=candidates.get),
                      "regret": (candidates[picked] - best) / best if picked in candidates else None},
        "source_domain_eer": {k: src[k]["eer"] for k in ("before", "aligned", "after") if k in src},
        "source_forgetting": src["after"]["eer"] / src["before"]["eer"] - 1.0,
        "calibration": {"actdcf_0.01": adapted["actdcf_0.01"], "cllr": adapted["cllr"],
                        "min_cllr": adapted["min_cllr"], "cllr_ratio": adapted["cllr"] / adapted["min_cllr"],
                        "met": adapted["actdcf_0.01"] <= 1.0 and adapted["cllr"] <= 1.2 * adapted["min_cllr"]},
        "purity": {name: r.get("purity") for name, r in res["rounds"].items()},
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", type=Path, nargs="+", help="adaptation output folders, one per seed")
    args = ap.parse_args(argv)
    seeds = [seed_summary(f) for f in args.folders]
    steps = list(seeds[0]["target_eer"])
    out = {
        "bench": "adapt_seeds",
        "seeds": seeds,
        "target_eer": {s: _mean_sd([x["target_eer"][s] for x in seeds]) for s in steps},
        "gap_share": {s: _mean_sd([x["gap_share"][s] for x in seeds]) for s in seeds[0]["gap_share"]},
        "source_forgetting": _mean_sd([x["source_forgetting"] for x in seeds]),
        "calibration_met": sum(x["calibration"]["met"] for x in seeds),
        "stop_rule_regret": [x["stop_rule"]["regret"] for x in seeds],
        "goals": {"gap_closed": 0.5, "source_forgetting": 0.1, "actdcf_0.01": 1.0, "cllr_ratio": 1.2},
    }
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
