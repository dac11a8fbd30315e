"""A label-free validation split of the training data.

Choices a run makes (correction settings, cluster count, which checkpoint or arm) must
not look at test trials, and the training data has no labels. So a small, fixed part of
the training utterances is held out of every training stage, and a model is judged on
trials built from **pseudo labels of those held-out utterances**: the model embeds them
whole, k-means groups them (about ``utts_per_cluster`` per cluster), and pairs from the
same cluster are the targets, pairs from different clusters the non-targets, scored by
cosine after subtracting the model's training mean, exactly as test trials are. Lower
validation EER means the model separates the groups it finds more cleanly. No true
label is read.

It is a proxy with a known bias (each model is judged on the clusters *it* finds, so a
model that clumps utterances by channel can look better than it is); the study recipe
(``cdino run ablations``) reports it beside the test EER of every arm so a reader sees
how far its ranking agrees with the test trials'.

The split is a hash of each utterance id (``seed`` salts it), so it stays the same when
the folder is reordered or grows, and needs no state.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from cdino.data.kaldi_dir import DataDir, read_visual, write_data_dir, write_visual
from cdino.errors import ConfigError, DataError

__all__ = ["held_out", "split_data_dir", "subset_visual", "validation_eer"]


def held_out(utts: list[str], fraction: float, seed: int = 0, min_utts: int = 20) -> list[str]:
    """The utterances (in folder order) whose salted hash falls under ``fraction``; at
    least ``min_utts`` (the lowest hashes; at most a quarter of a small folder) so a
    small folder still yields trials."""
    if not 0.0 < fraction < 0.5:
        raise ConfigError(f"validation fraction: must lie in (0, 0.5), got {fraction}")
    if len(utts) < 8:
        raise DataError(f"{len(utts)} training utterances: too few to hold out a validation split")
    min_utts = min(min_utts, len(utts) // 4)

    def h(u: str) -> float:
        d = hashlib.blake2b(f"{seed}:{u}".encode(), digest_size=8).digest()
        return int.from_bytes(d, "big") / 2.0 ** 64

    values = np.array([h(u) for u in utts])
    keep = values < fraction
    if keep.sum() < min_utts:
        keep = np.zeros(len(utts), dtype=bool)
        keep[np.argsort(values)[:min_utts]] = True
    return [u for u, k in zip(utts, keep) if k]


def split_data_dir(src: str | Path, out: str | Path, fraction: float, seed: int = 0) -> tuple[Path, Path]:
    """Write ``out/train`` (the training part) and ``out/valid`` (held out): data folders
    with the same audio paths, speakers (for diagnostics only), durations and visual rows.
    Returns their paths."""
    data = DataDir.load(src)
    valid = set(held_out(data.utts, fraction, seed))
    out = Path(out)
    for name, utts in (("train", [u for u in data.utts if u not in valid]),
                       ("valid", [u for u in data.utts if u in valid])):
        part = data.subset(utts)
        d = write_data_dir(out / name, part.wav, part.utt2spk, utt2dur=part.utt2dur)
        subset_visual(data.root, d, utts)
    return out / "train", out / "valid"


def subset_visual(src: str | Path, dst: str | Path, utts) -> bool:
    """Copy the visual rows of ``utts`` from data folder ``src`` to folder ``dst``
    (``visual.npy`` + ``visual_utts.txt``); ``False`` when ``src`` has none."""
    visual = read_visual(src)
    if visual is None:
        return False
    ids, rows = visual
    wanted = set(utts)
    keep = [i for i, u in enumerate(ids) if u in wanted]
    write_visual(dst, [ids[i] for i in keep], rows[keep])
    return True


def validation_eer(model_dir: str | Path, valid_dir: str | Path, device: str = "cpu",
                   utts_per_cluster: int = 10, n_trials: int = 20000, seed: int = 0,
                   distributed: bool = False, num_workers: int = 0) -> dict:
    """EER of a model on pseudo-label trials of the held-out utterances (see the module
    docstring). Under torchrun call it on every rank: the ranks embed together and rank 0
    returns the result (the others ``{}``)."""
    from cdino.eval.embed import extract_embeddings
    from cdino.eval.model_folder import read_model_folder
    from cdino.eval.threshold import pseudo_label_scores
    from cdino.metrics import eer
    from cdino.pseudo.kmeans import KMeansConfig, cluster
    from cdino.distributed import is_main

    model = read_model_folder(model_dir, device=device, optimize="fp32" if device == "cpu" else False)
    utts, emb = extract_embeddings(model.encoder, model.fbank, DataDir.load(valid_dir), device=model.device,
                                   progress=False, distributed=distributed, num_workers=num_workers,
                                   desc="embedding validation utterances")
    if distributed and not is_main():
        return {}
    k = int(np.clip(len(emb) // utts_per_cluster, 2, len(emb) // 2))
    x = emb - model.mean
    labels = np.asarray(cluster(x, KMeansConfig(n_clusters=k, seed=seed), device=device).labels)
    out = {"valid_eer": None, "valid_utts": len(utts), "valid_clusters": int(len(np.unique(labels)))}
    try:  # k-means may leave fewer than two clusters on a handful of utterances
        scores, is_target = pseudo_label_scores(emb, labels, model.mean, n_trials=n_trials, seed=seed)
        out["valid_eer"] = float(eer(scores, is_target))
    except ValueError as exc:
        out["valid_note"] = str(exc)
    return out
