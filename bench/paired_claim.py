"""One claim of the study ("A beats B"), from per-trial score files of several seeds.

For comparisons outside `cdino run ablations` (e.g. arms trained by hand at another
budget): each seed gives a score file of system A and of system B on the same trial
list (``enroll test score`` lines in the list's order, as ``cdino eval --scores`` writes
them). Prints one JSON object with the study's figures and verdict
(:func:`cdino.pipeline.study.paired_claim`): per-seed EER difference B − A, wins, the
95 % interval of the mean difference from the paired bootstrap over trials, and
supported / contradicted / not supported.

    python bench/paired_claim.py --trials CORPUS/test/trials --better A0 A1 A2 --worse B0 B1 B2 > claim.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdino import metrics  # noqa: E402
from cdino.data.kaldi_dir import read_trials  # noqa: E402
from cdino.pipeline.study import paired_claim, read_trial_scores  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=Path, required=True)
    ap.add_argument("--better", type=Path, nargs="+", required=True, help="score files of the system claimed better, one per seed")
    ap.add_argument("--worse", type=Path, nargs="+", required=True, help="score files of the other system, the same seeds in order")
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args(argv)
    if len(args.better) != len(args.worse):
        ap.error(f"--better has {len(args.better)} files, --worse {len(args.worse)}: one each per seed")
    trials = read_trials(args.trials)
    labels = np.asarray(trials.labels)
    better = [read_trial_scores(p, trials) for p in args.better]
    worse = [read_trial_scores(p, trials) for p in args.worse]
    claim = paired_claim(better, worse, labels, args.n_boot)
    print(json.dumps({"bench": "paired_claim", "trials": str(args.trials), "n_trials": len(labels),
                      "better": [str(p) for p in args.better], "worse": [str(p) for p in args.worse],
                      "eer_better": [metrics.eer(s, labels) for s in better],
                      "eer_worse": [metrics.eer(s, labels) for s in worse], **claim}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
