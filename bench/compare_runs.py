"""Compare two pipeline runs stage by stage (e.g. 1 process against 2 ranks), as JSON.

For every trained stage both runs have: the relative L2 difference of the exported
encoders (weights and BatchNorm statistics), the test EER of each run, and for pseudo-label
rounds whether the round's pseudo labels are the same and the per-epoch gate thresholds.

    python bench/compare_runs.py EXP_ONE EXP_TWO > bench/results/ranks/compare.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def model_difference(a: Path, b: Path) -> float:
    from safetensors.numpy import load_file

    x, y = load_file(str(a / "encoder.safetensors")), load_file(str(b / "encoder.safetensors"))
    keys = [k for k in x if not k.endswith("num_batches_tracked")]
    diff = sum(float(((x[k].astype(np.float64) - y[k]) ** 2).sum()) for k in keys)
    return (diff / sum(float((x[k].astype(np.float64) ** 2).sum()) for k in keys)) ** 0.5


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    one, two = Path(argv[0]), Path(argv[1])
    res = [json.loads((d / "results.json").read_text()) for d in (one, two)]
    eers = [{s["name"]: s["eer"] for s in r["stages"]} | {"supervised": r["supervised"]["eer"]} for r in res]
    out = {"bench": "compare_runs", "one": str(one), "two": str(two), "stages": {}}
    for name in eers[0]:
        entry = {"eer": [eers[0][name], eers[1].get(name)]}
        if "_r" in name:
            stage, r = name.rsplit("_r", 1)
            folder = Path(stage) / f"round{r}"
            labels = [np.load(d / folder / "labels.npy") for d in (one, two)]
            entry["labels_equal_fraction"] = float((labels[0] == labels[1]).mean())
            summaries = [json.loads((d / folder / "summary.json").read_text())["epochs"] for d in (one, two)]
            entry["thresholds"] = [[e.get("threshold") for e in s] for s in summaries]
            model = folder / "model"
        else:
            model = Path(name) / "model"
        entry["model_difference"] = model_difference(one / model, two / model)
        out["stages"][name] = entry
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
