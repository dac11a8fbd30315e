"""Reference points every learned model must beat: the cosine of per-utterance mean and
standard deviation of log-mel fbank (no learning at all), and the strength of the second
view alone (cosine of the visual rows on the test trials). The third, an untrained
encoder, is exported by :func:`cdino.train.stages.untrained_model`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from cdino.atomic import atomic_open, write_text
from cdino.data.kaldi_dir import DataDir, read_trials
from cdino.eval.verification import score_trials
from cdino.frontend.fbank import Fbank, FbankConfig
from cdino.metrics import eer, min_dcf


@torch.no_grad()
def fbank_statistics(data: DataDir, utts: list[str], fbank: Fbank) -> np.ndarray:
    """(N, 2·n_mels): mean and standard deviation over time of each utterance's log-mel."""
    from cdino.data.audio import load_audio

    rows = []
    for utt in utts:
        feats = fbank(torch.from_numpy(load_audio(data.wav[utt]))[None])[0]
        rows.append(torch.cat([feats.mean(0), feats.std(0)]).numpy())
    return np.stack(rows).astype(np.float32)


def fbank_stats_baseline(cfg: FbankConfig, train_dir, test_dir, trials_path, out: Path) -> dict:
    """EER/minDCF of cosine on mean+std fbank vectors (training mean subtracted)."""
    from dataclasses import replace

    fbank = Fbank(replace(cfg, mean_norm=False))
    train, test = DataDir.load(train_dir), DataDir.load(test_dir)
    trials = read_trials(trials_path)
    trials.check_utts(set(test.utts), test.root)
    rng = np.random.default_rng(0)
    sub = list(rng.choice(train.utts, size=min(len(train.utts), 1000), replace=False))
    train_x = fbank_statistics(train, sub, fbank)
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-5
    utts = trials.utts
    x = (fbank_statistics(test, utts, fbank) - mu) / sd
    scores = score_trials(x, {u: i for i, u in enumerate(utts)}, trials)
    labels = np.asarray(trials.labels)
    res = {"eer": eer(scores, labels), "mindcf_0.01": min_dcf(scores, labels, 0.01),
           "mindcf_0.05": min_dcf(scores, labels, 0.05), "n_trials": int(len(labels))}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "eval.json", json.dumps(res, indent=1))
    with atomic_open(out / "scores.txt") as f:
        for e, t, s in zip(trials.enroll, trials.test, scores):
            f.write(f"{e} {t} {s:.6f}\n")
    return res


def visual_only_baseline(test_dir, trials_path, visual_dir=None) -> dict:
    """EER/minDCF of the visual view alone: cosine of the two sides' visual rows, on the
    trials whose both sides have one (``n_trials`` says how many). This measures how
    strong a (simulated) face view is, which bounds what the audio-visual rounds can gain."""
    from cdino.data.kaldi_dir import read_visual

    test = DataDir.load(test_dir)
    got = read_visual(visual_dir or test.root)
    if got is None:
        return {}
    ids, vis = got
    row = {u: i for i, u in enumerate(ids)}
    trials = read_trials(trials_path)
    keep = [i for i, (e, t) in enumerate(zip(trials.enroll, trials.test)) if e in row and t in row]
    if not keep:
        return {}
    v = vis / np.maximum(np.linalg.norm(vis, axis=1, keepdims=True), 1e-12)
    a = v[[row[trials.enroll[i]] for i in keep]]
    b = v[[row[trials.test[i]] for i in keep]]
    scores = (a * b).sum(1)
    labels = np.asarray(trials.labels)[keep]
    return {"eer": eer(scores, labels), "mindcf_0.01": min_dcf(scores, labels, 0.01),
            "mindcf_0.05": min_dcf(scores, labels, 0.05), "n_trials": int(len(labels))}
