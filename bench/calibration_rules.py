"""Label-free calibration rules, judged on a labelled development split.

Every exported model folder holds a calibration fitted without labels
(:func:`cdino.eval.calibration.pseudo_label_calibration`): k-means pseudo labels of
training recordings → target / non-target trials → linear logistic regression at an
effective prior. This script varies what that rule is free to choose — how many training
recordings (the export's seeded subset of 2000, or all), how many clusters (one per 8, 20
or 40 recordings) and the prior of the fit (0.5, 0.01) — and scores each calibration on
the **dev** trials of the same domain (speakers disjoint from training and test): Cllr,
min Cllr, actDCF at priors 0.01 and 0.05. Test trials are never read.

    python bench/calibration_rules.py --model RUN/model --train CORPUS/train --dev CORPUS/dev \\
        --work /tmp/cal > result.json

The rule every export uses is ``subset2000_per20_p0.5`` (all recordings where there are
at most 2000; :func:`cdino.train.stages.export_model`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdino.api import load_model  # noqa: E402
from cdino.data.kaldi_dir import DataDir, read_trials  # noqa: E402
from cdino.eval.calibration import pseudo_label_calibration  # noqa: E402
from cdino.eval.embed import extract_embeddings, load_embeddings  # noqa: E402
from cdino.eval.threshold import cosine_scores  # noqa: E402
from cdino.metrics import act_dcf, cllr, eer, min_cllr  # noqa: E402
from cdino.pseudo.kmeans import KMeansConfig, cluster  # noqa: E402

SUBSET = 2000  # cdino.train.stages.EXPORT_SUBSET


def _embed(model, folder: Path, out: Path) -> tuple[list[str], np.ndarray]:
    if not (out / "embeddings.npy").is_file():
        extract_embeddings(model.encoder, model.fbank, DataDir.load(folder), out_dir=out, device=model.device,
                           progress=False, skip_bad=True, desc=str(folder))
    return load_embeddings(out)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--train", required=True, help="unlabelled training recordings of the domain")
    ap.add_argument("--dev", required=True, help="labelled dev folder (its trials judge)")
    ap.add_argument("--trials", default=None, help="dev trials (default DEV/trials)")
    ap.add_argument("--work", required=True, help="folder for the embeddings (reused)")
    args = ap.parse_args(argv)
    work = Path(args.work)
    model = load_model(args.model, device="cpu", optimize="fp32")
    train_utts, train_emb = _embed(model, Path(args.train), work / "train")
    dev_utts, dev_emb = _embed(model, Path(args.dev), work / "dev")
    trials = read_trials(args.trials or Path(args.dev) / "trials")
    index = {u: i for i, u in enumerate(dev_utts)}
    keep = [i for i, (e, t) in enumerate(zip(trials.enroll, trials.test)) if e in index and t in index]
    enroll = np.array([index[trials.enroll[i]] for i in keep])
    test = np.array([index[trials.test[i]] for i in keep])
    labels = np.asarray(trials.labels)[keep]
    rows_all = np.arange(len(train_emb))
    rows_sub = (np.sort(np.random.default_rng(0).choice(len(train_emb), SUBSET, replace=False))
                if len(train_emb) > SUBSET else rows_all)
    rules = {}
    for subset, rows in (("subset2000", rows_sub), ("all", rows_all)):
        emb = train_emb[rows]
        mean = emb.mean(axis=0)
        scores = cosine_scores(dev_emb, enroll, test, mean)
        for per in (8, 20, 40):
            k = int(np.clip(len(emb) // per, 2, 6000))
            pseudo = np.asarray(cluster(emb - mean, KMeansConfig(n_clusters=k, seed=0), device="cpu").labels)
            for prior in (0.5, 0.01):
                name = f"{subset}_per{per}_p{prior}"
                try:
                    cal = pseudo_label_calibration(emb, pseudo, mean, seed=0, prior=prior)
                except ValueError as exc:  # a rule whose trials the model does not rank: no calibration
                    rules[name] = {"recordings": int(len(emb)), "clusters": k, "prior": prior, "error": str(exc)}
                    continue
                llr = cal.a * scores + cal.b
                rules[name] = {
                    "recordings": int(len(emb)), "clusters": k, "prior": prior, "a": cal.a, "b": cal.b,
                    "cllr": cllr(llr, labels), "min_cllr": min_cllr(scores, labels),
                    "actdcf_0.01": act_dcf(llr, labels, 0.01), "actdcf_0.05": act_dcf(llr, labels, 0.05),
                    "eer": eer(scores, labels)}
    out = {"bench": "calibration_rules", "model": str(args.model), "train": str(args.train),
           "dev": str(args.dev), "n_trials": int(len(labels)), "rules": rules}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
