"""How well each label-free selection criterion ranks models the way the truth does.

For candidate model folders, compute every criterion of :mod:`cdino.eval.selection` on a
data folder's recordings without reading its labels, and the true EER on its labelled
trials (the dev split's, never the test split's); print one JSON object with the values,
Spearman and Kendall rank correlations of each criterion with the true EER, and for each
selection *task* (a group of candidates one choice is made among, e.g. the cluster
counts of a sweep) the regret of picking by each criterion: the true EER of the pick over
the best candidate's, relative.

    python bench/select_criteria.py --data exp/corpus/dev --candidates tasks.yaml > out.json

``tasks.yaml`` maps a task name to candidate model folders (name: path). A candidate may
appear in several tasks; it is scored once.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _cached_embedder(args):
    """``embed(name, path, utts, waves)`` keeping each model folder's embeddings of those
    recordings in ``args.cache``, so a rerun only scores."""
    import hashlib

    from cdino.eval.selection import RecordingEmbeddings, embed_recordings

    args.cache.mkdir(parents=True, exist_ok=True)

    def embed(name, path, utts, waves):
        digest = hashlib.blake2b("\n".join(utts).encode(), digest_size=6).hexdigest()
        key = args.cache / (str(path).strip("/").replace("/", "_") + f"_{digest}.npz")
        if key.is_file():
            z = np.load(key, allow_pickle=False)
            return RecordingEmbeddings(list(z["utts"]), z["whole"], z["first"], z["second"], z["mean"])
        got = embed_recordings(path, waves, utts, device=args.device)
        np.savez(key, utts=np.array(got.utts), whole=got.whole, first=got.first, second=got.second, mean=got.mean)
        return got

    return embed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="labelled data folder (dev split) with trials")
    ap.add_argument("--trials", type=Path, help="its trials (default DATA/trials)")
    ap.add_argument("--candidates", type=Path, required=True, help="YAML: task -> {candidate: model folder}")
    ap.add_argument("--max-utts", type=int, default=800, help="recordings the criteria use (score_candidates)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache", type=Path, help="keep each candidate's embeddings here (a rerun only scores)")
    args = ap.parse_args(argv)
    import yaml
    from scipy.stats import kendalltau, spearmanr

    from cdino.data.kaldi_dir import Trials, read_trials
    from cdino.eval.selection import CRITERIA, score_candidates
    from cdino.eval.verification import score_trials
    from cdino.metrics import eer

    tasks = yaml.safe_load(args.candidates.read_text())
    models = {name: Path(p) for group in tasks.values() for name, p in group.items()}
    trials = read_trials(args.trials or args.data / "trials")
    t0 = time.perf_counter()
    embed = _cached_embedder(args) if args.cache else None
    values, utts, emb = score_candidates(models, args.data, max_utts=args.max_utts, device=args.device, embed=embed)
    # Truth: the labelled trials among these recordings (dev trials only).
    index = {u: i for i, u in enumerate(utts)}
    sub = [i for i, (e, t) in enumerate(zip(trials.enroll, trials.test)) if e in index and t in index]
    dev = Trials([trials.enroll[i] for i in sub], [trials.test[i] for i in sub],
                 np.asarray(trials.labels)[sub], trials.path)
    truth = {name: float(eer(score_trials(e.whole, index, dev, mean=e.mean), dev.labels)) for name, e in emb.items()}
    names = sorted(models)
    report = {}
    for crit in CRITERIA:
        if crit not in values[names[0]]:
            continue
        x = [values[n][crit] for n in names]
        y = [truth[n] for n in names]
        report[crit] = {"spearman": float(spearmanr(x, y).statistic), "kendall": float(kendalltau(x, y).statistic)}
    regrets = {}
    for task, group in tasks.items():
        members = list(group)
        best = min(truth[m] for m in members)
        regrets[task] = {"candidates": len(members), "best": min(members, key=lambda m: truth[m]), "best_eer": best}
        for crit in report:
            pick = min(members, key=lambda m: values[m][crit])
            regrets[task][crit] = {"pick": pick, "eer": truth[pick], "regret": (truth[pick] - best) / best}
    print(json.dumps({"bench": "select_criteria", "data": str(args.data), "recordings": len(utts),
                      "dev_trials_used": len(sub), "seconds": round(time.perf_counter() - t0, 1),
                      "truth_dev_eer": truth, "criteria": values, "rank_correlation": report,
                      "regret": regrets}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
