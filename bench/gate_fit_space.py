"""The dynamic gate's GMM on log losses or on raw losses: which samples would each keep?

Reads the per-sample losses stored in the checkpoints of ``bench/gate_vs_noise.py`` runs
(one round on true labels with a known fraction ``p`` replaced by other speakers), fits
the two-component gate (:func:`cdino.pseudo.loss_gate.fit_loss_gate`) to them once on
log losses (cdino's default) and once on the raw losses (as the DLG paper describes its
GMM), and reports for each fit, from the known corruption (a diagnostic): the fraction
kept, the clean share of what is kept, the share of clean samples kept and of wrong
samples dropped. Prints one JSON object.

    python bench/gate_fit_space.py --runs exp/gate_noise --corpus exp/corpus > result.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdino.data.kaldi_dir import DataDir  # noqa: E402
from cdino.pseudo.loss_gate import fit_loss_gate  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gate_vs_noise import noisy_labels  # noqa: E402  (the runs' own corruption)


def gate_figures(losses: np.ndarray, wrong: np.ndarray, use_log: bool) -> dict:
    fin = np.isfinite(losses)
    fit = fit_loss_gate(losses[fin], use_log=use_log)
    keep = np.zeros(len(losses), bool)
    keep[fin] = losses[fin] <= fit.threshold
    return {"threshold": fit.threshold, "kept": float(keep.mean()),
            "clean_share_of_kept": float((~wrong[keep]).mean()) if keep.any() else None,
            "clean_kept": float(keep[~wrong].mean()), "wrong_dropped": float((~keep[wrong]).mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, required=True, help="--out folder of bench/gate_vs_noise.py")
    ap.add_argument("--corpus", type=Path, required=True, help="its corpus (train/utt2spk)")
    ap.add_argument("--seed", type=int, default=0, help="its --seed")
    args = ap.parse_args(argv)
    data = DataDir.load(args.corpus / "train")
    true = data.speaker_labels(list(data.utts))[0]
    rows = []
    for run in sorted(args.runs.glob("noise*_*")):
        p_text, setting = run.name[len("noise"):].split("_", 1)
        p = float(p_text)
        wrong = noisy_labels(true, p, args.seed) != true
        for ckpt in sorted((run / "checkpoints").glob("step-*.pt")):
            state = torch.load(ckpt, map_location="cpu", weights_only=False)["method"]
            if "gate_a" not in state:
                continue
            losses = next(v for v in state["gate_a"].values() if hasattr(v, "numel") and v.numel() == len(true))
            losses = losses.float().numpy()
            rows.append({"noise": p, "setting": setting, "checkpoint": ckpt.name,
                         "log": gate_figures(losses, wrong, True), "raw": gate_figures(losses, wrong, False)})
    print(json.dumps({"bench": "gate_fit_space", "runs": str(args.runs), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
