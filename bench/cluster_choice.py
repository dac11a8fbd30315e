"""Choose how pseudo labels are clustered, on the labelled development split.

For each model folder given, embeds the corpus's ``dev`` and ``train`` utterances (full
utterances, as ``cdino embed`` does; cached in ``--out``) and clusters them with each
variant below, at ``--dev-clusters`` clusters for dev (40 speakers) and ``--train-clusters``
for train (250 speakers; the demo's over-estimate 300). Prints one JSON object with the
purity and NMI of every variant per model and their means.

The **dev** figures are the ones to choose on: dev speakers are disjoint from train and
test, and their labels are meant for recipe choices. The **train** figures use the
training speakers' true labels and are a diagnostic only (what round 1 of the pseudo-label
stage would see). Variants whose whitening needs a covariance are also run on dev with the
covariance fitted on the (unlabelled) train embeddings, as a pool of the size the pipeline
clusters.

    python bench/cluster_choice.py --corpus CORPUS --models M1 M2 M3 --out exp/emb > result.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

VARIANTS = {  # name -> (whiten, KMeansConfig overrides)
    "kmeans (k-means++ seeds, centred)": (None, {}),
    "ward-seeded k-means": (None, {"init": "ward"}),
    "whitened k-means": ("plain", {}),
    "whitened ward-seeded k-means": ("plain", {"init": "ward"}),
    "shrunk-whitened ward-seeded k-means": ("shrunk", {"init": "ward"}),
}


def _embed(model: Path, data: Path, out: Path) -> tuple[list[str], np.ndarray]:
    from cdino.eval.embed import load_embeddings

    if not (out / "embeddings.npy").is_file():
        env = {**os.environ, "CDINO_NO_PROGRESS": "1"}
        subprocess.run([sys.executable, "-m", "cdino.cli", "embed", "--model", str(model), "--data", str(data),
                        "--out", str(out), "--device", "cpu"], env=env, check=True, capture_output=True)
    return load_embeddings(out)


def _scores(x: np.ndarray, truth: np.ndarray, k: int, whiten: str | None, overrides: dict, seed: int,
            ref: np.ndarray | None = None) -> dict:
    from cdino.metrics import nmi, purity
    from cdino.pseudo.kmeans import KMeansConfig, cluster, pca_whiten

    if whiten is None:
        x = x - x.mean(0)
    else:
        shrink = 0.0 if whiten == "plain" else None
        x = pca_whiten(x, shrinkage=shrink) if ref is None else \
            pca_whiten(np.concatenate([ref, x]), shrinkage=shrink)[len(ref):]
    labels = cluster(x, KMeansConfig(n_clusters=k, seed=seed, **overrides)).labels
    return {"purity": round(float(purity(truth, labels)), 4), "nmi": round(float(nmi(truth, labels)), 4)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, required=True, help="corpus folder with train/ and dev/")
    ap.add_argument("--models", type=Path, nargs="+", required=True, help="model folders (one per seed)")
    ap.add_argument("--out", type=Path, required=True, help="embedding cache folder")
    ap.add_argument("--dev-clusters", type=int, default=48)
    ap.add_argument("--train-clusters", type=int, default=300)
    args = ap.parse_args(argv)
    from cdino.data.kaldi_dir import DataDir

    t0 = time.perf_counter()
    rows = []
    for i, model in enumerate(args.models):
        emb = {split: _embed(model, args.corpus / split, args.out / f"m{i}_{split}") for split in ("dev", "train")}
        for split, k in (("dev", args.dev_clusters), ("train", args.train_clusters)):
            utts, x = emb[split]
            truth, _ = DataDir.load(args.corpus / split).speaker_labels(utts)
            for name, (whiten, over) in VARIANTS.items():
                rows.append({"model": str(model), "split": split, "variant": name,
                             **_scores(x, truth, k, whiten, over, seed=i)})
                if split == "dev" and whiten is not None:
                    rows.append({"model": str(model), "split": "dev", "variant": name + ", train-fitted whitening",
                                 **_scores(x, truth, k, whiten, over, seed=i, ref=emb["train"][1])})
    means = {}
    for r in rows:
        means.setdefault(f"{r['split']}: {r['variant']}", []).append((r["purity"], r["nmi"]))
    summary = {key: {"purity": round(float(np.mean([p for p, _ in v])), 4),
                     "nmi": round(float(np.mean([n for _, n in v])), 4)} for key, v in means.items()}
    print(json.dumps({"bench": "cluster_choice", "corpus": str(args.corpus), "models": [str(m) for m in args.models],
                      "dev_clusters": args.dev_clusters, "train_clusters": args.train_clusters,
                      "mean": summary, "rows": rows, "seconds": round(time.perf_counter() - t0, 1)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
