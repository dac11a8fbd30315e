"""C-DINO with clusters of known purity: does cluster-aware DINO pay when its clusters are right?

A diagnostic, not a recipe: it trains the C-DINO stage of a recipe (``cdino train --stage
cdino``) with its k-means clusters replaced by the **true training speakers**, of which a
fraction ``--noise`` of the utterances is moved to a random other speaker (purity about
``1 - noise``), then evaluates the model on the corpus's **dev** trials. Compared with the
same stage on its own k-means clusters and with DINO continued for the same epoch, it
measures how C-DINO's gain depends on the purity of its clusters. True labels feed the
clusters here on purpose; no recipe reads this script's output to choose anything.

    python bench/cdino_oracle.py --corpus CORPUS --init DINO/model --out OUT --noise 0.0 --seed 0 > r.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def _patch_clusters(noise: float, seed: int) -> None:
    """Make C-DINO's re-clustering return the true speakers with ``noise`` of them moved."""
    import cdino.methods.cluster_aware as ca
    from cdino.pseudo.kmeans import Clustering

    original = ca.ClusterAwareDinoMethod._recluster

    def recluster(self, epoch: int) -> None:
        if self.true_labels is None:
            raise SystemExit("the training folder has no utt2spk: true clusters need it")
        rng = np.random.default_rng(seed + epoch)
        labels = np.asarray(self.true_labels, dtype=np.int64).copy()
        n_classes = int(labels.max()) + 1
        moved = rng.random(labels.size) < noise
        shift = rng.integers(1, n_classes, size=int(moved.sum()))
        labels[moved] = (labels[moved] + shift) % n_classes  # always another speaker

        def true_clusters(emb, cfg, device=None):
            sizes = np.bincount(labels, minlength=n_classes)
            return Clustering(labels=labels, centroids=np.zeros((n_classes, emb.shape[1]), np.float32),
                              sizes=sizes, n_clusters=n_classes,
                              similarity=np.ones(labels.size, np.float32), seconds=0.0, backend="true labels")

        saved = ca.cluster
        ca.cluster = true_clusters
        try:
            original(self, epoch)
        finally:
            ca.cluster = saved

    ca.ClusterAwareDinoMethod._recluster = recluster


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, required=True, help="corpus folder with train/ (utt2spk) and dev/ (trials)")
    ap.add_argument("--init", type=Path, required=True, help="the DINO model folder C-DINO starts from")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--recipe", default="demo")
    ap.add_argument("--noise", type=float, default=0.0, help="fraction of utterances moved to another speaker")
    ap.add_argument("--seed", type=int, default=0, help="trainer.seed and the noise draw")
    args = ap.parse_args(argv)
    from contextlib import redirect_stdout

    from cdino.cli import main as _cli

    def cli(argv: list[str]) -> int:  # the commands' own output goes to stderr; stdout is the JSON
        with redirect_stdout(sys.stderr):
            return _cli(argv)

    _patch_clusters(args.noise, args.seed)
    t0 = time.perf_counter()
    rc = cli(["train", "--recipe", args.recipe, "--stage", "cdino", "--data", str(args.corpus / "train"),
              "--out", str(args.out / "run"), "--init", str(args.init), "--resume",
              "--set", f"trainer.seed={args.seed}"])
    if rc:
        return rc
    seconds = time.perf_counter() - t0
    rc = cli(["eval", "--model", str(args.out / "run" / "model"), "--data", str(args.corpus / "dev"),
              "--trials", str(args.corpus / "dev" / "trials"), "--json", str(args.out / "dev.json"),
              "--device", "cpu"])
    if rc:
        return rc
    dev = json.loads((args.out / "dev.json").read_text())
    log = (args.out / "run" / "train.log").read_text().splitlines()
    clustering = [line.split("clustering ", 1)[1] for line in log if " clustering " in line]
    print(json.dumps({"bench": "cdino_oracle", "init": str(args.init), "noise": args.noise, "seed": args.seed,
                      "dev_eer": dev["eer"], "dev_mindcf_0.01": dev["mindcf_0.01"], "clustering_log": clustering,
                      "train_seconds": round(seconds, 1), "threads": os.environ.get("CDINO_THREADS")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
