"""Choose stage-1 (DINO) settings on the labelled development split.

Trains the DINO stage of a recipe once per arm (the recipe's DINO settings with the arm's
overrides on top) on a corpus's training folder, and prints one JSON object: per arm the
EER and minDCF on the **dev** trials (speakers disjoint from train and test), the seconds
it took, and — as diagnostics from the training speakers' true labels, never used to
choose — NMI and purity of k-means on the model's training embeddings (what round 1 of
the pseudo-label stage would start from) at ``--clusters``. Test trials are never read.

Arms run side by side (``--parallel`` processes of ``CDINO_THREADS`` threads each), so
two 1-thread arms use a 2-core machine fully. An arm already done in ``--out`` is read
back, so a sweep resumes.

    python bench/tune_stage1.py --corpus exp/corpus --out exp/tune --arms arms.yaml > result.json

``arms.yaml`` maps an arm's name to ``KEY=VALUE`` overrides of the stage's training config
(on top of the recipe's base and stage settings; e.g. ``dino.global_seconds=3.0``,
``augment.channel_prob=0.6``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def _train(arm: str, overrides: list[str], args) -> dict:
    out = args.out / arm
    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    env = {**os.environ, "CDINO_THREADS": str(args.threads), "OMP_NUM_THREADS": str(args.threads),
           "CDINO_NO_PROGRESS": "1"}
    sets = [x for o in overrides for x in ("--set", o)]
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "cdino.cli", "train", "--recipe", args.recipe, "--stage", args.stage,
           "--data", str(args.corpus / "train"), "--out", str(out / "run"), "--resume", *sets]
    if args.init:
        cmd += ["--init", str(args.init)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"arm": arm, "error": proc.stderr[-2000:]}
    seconds = time.perf_counter() - t0
    res = subprocess.run([sys.executable, "-m", "cdino.cli", "eval", "--model", str(out / "run" / "model"),
                          "--data", str(args.corpus / "dev"), "--trials", str(args.corpus / "dev" / "trials"),
                          "--json", str(out / "dev.json"), "--device", "cpu"], env=env, capture_output=True, text=True)
    if res.returncode != 0:
        return {"arm": arm, "error": res.stderr[-2000:]}
    dev = json.loads((out / "dev.json").read_text())
    emb = subprocess.run([sys.executable, "-m", "cdino.cli", "embed", "--model", str(out / "run" / "model"),
                          "--data", str(args.corpus / "train"), "--out", str(out / "train_emb"), "--device", "cpu"],
                         env=env, capture_output=True, text=True)
    if emb.returncode != 0:
        return {"arm": arm, "error": emb.stderr[-2000:]}
    result = {"arm": arm, "overrides": overrides, "dev_eer": dev["eer"], "dev_mindcf_0.01": dev["mindcf_0.01"],
              "dev_mindcf_0.05": dev["mindcf_0.05"], "train_seconds": round(seconds, 1),
              **_clustering(out / "train_emb", args)}
    done.write_text(json.dumps(result, indent=1))
    return result


def _clustering(folder: Path, args) -> dict:
    """Diagnostics only: how well k-means of the training embeddings (full utterances, as
    round 1 of the pseudo-label stage embeds them) matches the speakers."""
    import numpy as np

    from cdino.data.kaldi_dir import DataDir
    from cdino.eval.embed import load_embeddings
    from cdino.metrics import nmi, purity
    from cdino.pseudo.kmeans import KMeansConfig, cluster

    data = DataDir.load(args.corpus / "train")
    utts, emb = load_embeddings(folder)
    labels, _ = data.speaker_labels(utts)
    got = cluster(emb - emb.mean(0), KMeansConfig(n_clusters=args.clusters, seed=0))
    pred = np.asarray(got.labels)
    return {"train_nmi": float(nmi(labels, pred)), "train_purity": float(purity(labels, pred))}


def _machine() -> dict:
    import platform

    import torch

    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__,
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, required=True, help="corpus folder with train/ and dev/ (dev/trials)")
    ap.add_argument("--out", type=Path, required=True, help="one folder per arm")
    ap.add_argument("--arms", type=Path, required=True, help="YAML: arm name -> list of KEY=VALUE recipe overrides")
    ap.add_argument("--recipe", default="demo")
    ap.add_argument("--stage", default="dino", help="the recipe stage trained (dino, cdino, supervised ...)")
    ap.add_argument("--init", type=Path, help="model folder the stage starts from (cdino, pseudo)")
    ap.add_argument("--clusters", type=int, default=300, help="k-means clusters of the diagnostic")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="*", help="run these arms only")
    args = ap.parse_args(argv)
    import yaml

    arms = yaml.safe_load(args.arms.read_text())
    if args.only:
        arms = {k: v for k, v in arms.items() if k in args.only}
    args.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda kv: _train(kv[0], list(kv[1] or []), args), arms.items()))
    ok = [r for r in results if "dev_eer" in r]
    print(json.dumps({"bench": "tune_stage1", "recipe": args.recipe, "stage": args.stage, "corpus": str(args.corpus),
                      "machine": _machine(), "arms": results,
                      "best_on_dev": min(ok, key=lambda r: r["dev_eer"])["arm"] if ok else None}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
