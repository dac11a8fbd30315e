"""Choose a pseudo-label setting on the label-free validation split.

From a finished pipeline folder (its C-DINO model and its validation split, a recipe run
with ``validation: F``), train one audio DLG-LC round per value of one setting (``--key``,
e.g. the correction temperature or the cluster count) with the recipe's pseudo-label
settings (``--fixed KEY=VALUE`` on top), and print one JSON object: per value the
validation EER (pseudo-label trials of held-out training utterances — no label read)
and, as diagnostics from the training set's true labels, the corrected fraction and the
corrections' accuracy in the last epoch. The value with the lowest validation EER is
``chosen``. Test trials are never touched.

    python bench/select_on_validation.py --exp ablations/seed0 --recipe ablations \
        --key pseudo.correction.temperature --values 1 1.5 2 3 > bench/results/select_temperature.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exp", required=True, type=Path, help="a pipeline folder (EXP/cdino/model done)")
    ap.add_argument("--recipe", default="ablations", help="the recipe the folder was run with")
    ap.add_argument("--seed", type=int, default=0, help="trainer.seed of the folder (a study's seed)")
    ap.add_argument("--study", type=Path, help="the study folder holding split/ (default: EXP's parent)")
    ap.add_argument("--key", default="pseudo.correction.temperature", help="the setting swept (dotted)")
    ap.add_argument("--values", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
    ap.add_argument("--fixed", action="append", default=[], metavar="KEY=VALUE",
                    help="settings held fixed on top of the recipe's (dotted key, YAML value)")
    args = ap.parse_args(argv)

    import yaml

    from cdino.eval.validation import validation_eer
    from cdino.pipeline.method import DataSpec, MethodPipeline as Pipeline, load_recipe
    from cdino.pipeline.recipe_source import merge_overrides as _merge
    from cdino.train.stages import train_pseudo_rounds

    study = args.study or args.exp.parent
    recipe = load_recipe(args.recipe)
    data = DataSpec(train=str(study / "split" / "train"), test=str(study / "corpus" / "test"),
                    trials=str(study / "corpus" / "test" / "trials"), valid=str(study / "split" / "valid"))
    recipe = replace(recipe, seeds=[], data=data, validation=0.0,
                     base=_merge(recipe.base, {"trainer": {"seed": args.seed}}))
    pipe = Pipeline.__new__(Pipeline)  # configs only: do not rewrite the folder's recipe.yaml
    pipe.r, pipe.out = recipe, args.exp
    init = args.exp / "cdino" / "model"
    def nested(key: str, value) -> dict:
        out: dict = value
        for part in reversed(key.split(".")):
            out = {part: out}
        return out

    fixed = {"pseudo": {"rounds": 1, "modality": "audio"}}
    for item in args.fixed:
        k, v = item.split("=", 1)
        fixed = _merge(fixed, nested(k, yaml.safe_load(v)))
    name = args.key.rsplit(".", 1)[-1]
    tag = "_".join(f"{k.rsplit('.', 1)[-1]}{v}" for k, v in (i.split("=", 1) for i in args.fixed))
    rows = []
    for t in args.values:
        t = int(t) if args.key.endswith("n_clusters") else t
        cfg = pipe.train_config("pseudo", _merge(fixed, nested(args.key, t)))
        out = args.exp / "selection" / f"{tag + '_' if tag else ''}{name}_{t:g}"
        t0 = time.perf_counter()
        summary = train_pseudo_rounds(cfg, pipe.train_dir, init, out, resume=True)[0]
        val = validation_eer(out / "round1" / "model", pipe.valid_dir)
        last = summary["epochs"][-1]
        rows.append({args.key: t, "temperature": cfg.pseudo.correction.temperature,
                     "threshold": cfg.pseudo.correction.threshold, "n_clusters": cfg.pseudo.kmeans.n_clusters,
                     "valid_eer": val["valid_eer"], "valid_utts": val["valid_utts"],
                     "corrected_fraction": last.get("corrected_fraction"),
                     "corrected_of_unreliable": last.get("corrected_of_unreliable"),
                     "corrected_classes_effective": last.get("corrected_classes_effective"),
                     "correction_accuracy_diagnostic": last.get("correction_accuracy"),
                     "seconds": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    chosen = min(rows, key=lambda r: r["valid_eer"])
    print(json.dumps({"exp": str(args.exp), "recipe": args.recipe, "seed": args.seed, "key": args.key,
                      "fixed": args.fixed, "criterion": "lowest label-free validation EER", "rows": rows,
                      "chosen": {args.key: chosen[args.key]}}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
