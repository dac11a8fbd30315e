"""Label-free criteria for choosing among models: which one would verify speakers best?

A user of cdino has no speaker labels, yet must choose: the cluster count, correction
settings, how many rounds, which round to ship. Each criterion below scores a model on
*unlabelled* recordings (lower is better, like an EER) and is measured against the truth
on the labelled development split (``bench/select_criteria.py``, BENCHMARKS.md).

``own_clusters``  the model's k-means clusters of the recordings as pseudo labels (the
                  older validation EER, :mod:`cdino.eval.validation`): every model is graded on
                  clusters *it* finds, so a model that clumps recordings by channel looks good.
``split``         each recording cut in two halves: the halves of one recording are a
                  target trial, halves of two recordings a non-target. No model decides the
                  labels, but the halves share their recording's channel and speaker alike.
``shared``        one partition for every candidate: k-means of the candidates' embeddings
                  concatenated (each L2-normalised), so no candidate is graded on its own
                  clusters alone.
``cross_channel`` audio only: as ``cross_view``, with the candidates' embeddings side by side
                  standing in for the other view (targets: near in all candidates together,
                  far in channel statistics).
``cross_view``    for data with a second view (faces): target trials are pairs the *other*
                  view finds alike (among its nearest neighbours) and that the recordings'
                  long-term spectra (channel statistics: a session's band, equaliser and
                  noise) find unlike, i.e. probably one person in two sessions; non-targets are
                  random pairs. Its errors do not come from the audio model it grades.

All score cosines after subtracting the model's mean, as evaluation scores: ``own_clusters``,
``split`` and ``shared`` as an EER, ``cross_view`` and ``cross_channel`` as 1 − AUC (their
targets include some pairs of two people, which floors an EER; see :func:`cross_view_error`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cdino.metrics import eer

CRITERIA = ("own_clusters", "split", "shared", "cross_channel", "cross_view")


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _pair_eer(emb: np.ndarray, mean: np.ndarray | None, enroll, test, is_target) -> float:
    x = _unit(emb - (0 if mean is None else mean))
    scores = np.einsum("nd,nd->n", x[enroll], x[test])
    return float(eer(scores, is_target))


def _random_nontargets(n: int, count: int, rng: np.random.Generator, avoid=None) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random pairs of distinct rows (``avoid(a, b)`` True: redrawn)."""
    a = rng.integers(0, n, count)
    b = rng.integers(0, n, count)
    bad = a == b if avoid is None else (a == b) | avoid(a, b)
    for _ in range(100):
        if not bad.any():
            break
        b[bad] = rng.integers(0, n, int(bad.sum()))
        bad = a == b if avoid is None else (a == b) | avoid(a, b)
    return a, b


def own_clusters_eer(emb: np.ndarray, mean: np.ndarray | None, utts_per_cluster: int = 10,
                     n_trials: int = 20000, seed: int = 0) -> float:
    """EER on trials from the model's own k-means clusters of ``emb``."""
    from cdino.eval.threshold import pseudo_label_scores
    from cdino.pseudo.kmeans import KMeansConfig, cluster

    k = int(np.clip(len(emb) // utts_per_cluster, 2, len(emb) // 2))
    x = emb - (0 if mean is None else mean)
    labels = np.asarray(cluster(x, KMeansConfig(n_clusters=k, seed=seed)).labels)
    scores, is_target = pseudo_label_scores(emb, labels, mean, n_trials=n_trials, seed=seed)
    return float(eer(scores, is_target))


def split_eer(first: np.ndarray, second: np.ndarray, mean: np.ndarray | None, n_nontarget: int = 20000,
              seed: int = 0) -> float:
    """EER of trials between recording halves: ``first[i]`` with ``second[i]`` (targets),
    ``first[i]`` with ``second[j]``, ``j != i`` (non-targets)."""
    n = len(first)
    rng = np.random.default_rng(seed)
    a, b = _random_nontargets(n, n_nontarget, rng)
    x = np.concatenate([first, second])
    enroll = np.concatenate([np.arange(n), a])
    test = np.concatenate([np.arange(n) + n, b + n])
    labels = np.concatenate([np.ones(n, np.int8), np.zeros(len(a), np.int8)])
    return _pair_eer(x, mean, enroll, test, labels)


def side_by_side(embeddings: list[np.ndarray]) -> np.ndarray:
    """The candidates' centred, L2-normalised embeddings concatenated (each weighs the same
    whatever its dimension)."""
    return np.concatenate([_unit(e - e.mean(0)) for e in embeddings], axis=1) / np.sqrt(len(embeddings))


def shared_partition(embeddings: list[np.ndarray], utts_per_cluster: int = 10, seed: int = 0) -> np.ndarray:
    """One k-means partition of the recordings for all candidates: k-means of
    :func:`side_by_side`."""
    from cdino.pseudo.kmeans import KMeansConfig, cluster

    x = side_by_side(embeddings)
    k = int(np.clip(len(x) // utts_per_cluster, 2, len(x) // 2))
    return np.asarray(cluster(x, KMeansConfig(n_clusters=k, seed=seed)).labels)


def partition_eer(emb: np.ndarray, mean: np.ndarray | None, labels: np.ndarray, n_trials: int = 20000,
                  seed: int = 0) -> float:
    """EER of ``emb`` on trials built from a given partition of its recordings."""
    from cdino.eval.threshold import pseudo_label_scores

    scores, is_target = pseudo_label_scores(emb, labels, mean, n_trials=n_trials, seed=seed)
    return float(eer(scores, is_target))


@dataclass
class CrossViewTrials:
    """Trials of recordings chosen by the other view (see the module docstring)."""

    enroll: np.ndarray
    test: np.ndarray
    is_target: np.ndarray


def cross_view_trials(visual: np.ndarray, has_visual: np.ndarray, channel, neighbours: int = 5,
                      n_nontarget: int = 20000, seed: int = 0, anchors: np.ndarray | None = None) -> CrossViewTrials:
    """Targets: for every anchor recording (default: every recording with a face), among
    its ``neighbours`` nearest faces over *all* recordings, the one whose channel statistics
    are least alike — probably the same person in another session. Non-targets: random
    pairs of the recordings the targets use. ``channel``: an ``(N, F)`` array of channel
    statistics (e.g. mean/std log-mel of each recording), or a function giving them for
    row indices (only the anchors and their neighbours are asked for). Indices are rows."""
    rows = np.flatnonzero(has_visual)
    if len(rows) < neighbours + 2:
        raise ValueError(f"cross-view trials need more than {neighbours + 1} recordings with a second view")
    anchors = rows if anchors is None else np.asarray(anchors)
    v = _unit(visual)
    sim = v[anchors] @ v[rows].T
    sim[anchors[:, None] == rows[None, :]] = -np.inf
    near = rows[np.argpartition(-sim, neighbours, axis=1)[:, :neighbours]]
    asked = np.unique(np.concatenate([anchors, near.ravel()]))
    stats = channel(asked) if callable(channel) else np.asarray(channel)[asked]
    c = np.zeros((len(visual), stats.shape[1]))
    c[asked] = _unit(stats - stats.mean(0))
    pick = near[np.arange(len(anchors)), np.einsum("nd,nkd->nk", c[anchors], c[near]).argmin(1)]
    used = np.unique(np.concatenate([anchors, pick]))
    rng = np.random.default_rng(seed)
    a, b = _random_nontargets(len(used), n_nontarget, rng)
    enroll = np.concatenate([anchors, used[a]])
    test = np.concatenate([pick, used[b]])
    labels = np.concatenate([np.ones(len(anchors), np.int8), np.zeros(len(a), np.int8)])
    return CrossViewTrials(enroll, test, labels)


def _restricted(trials: CrossViewTrials, rows: np.ndarray) -> CrossViewTrials:
    """``trials`` with their row indices mapped to positions in ``rows`` (which holds them all)."""
    pos = {int(r): i for i, r in enumerate(rows)}
    to = np.vectorize(pos.__getitem__, otypes=[np.int64])
    return CrossViewTrials(to(trials.enroll), to(trials.test), trials.is_target)


def cross_view_error(emb: np.ndarray, mean: np.ndarray | None, trials: CrossViewTrials) -> float:
    """1 − AUC of the cross-view trials: the chance that a random non-target outscores a
    random target. Not the EER: a share of the chosen targets are in fact two people, and a
    good model scores them as such, so the EER floors at that share whatever the model,
    while the AUC keeps ranking how well the true targets are separated."""
    x = _unit(emb - (0 if mean is None else mean))
    scores = np.einsum("nd,nd->n", x[trials.enroll], x[trials.test])
    tar = trials.is_target.astype(bool)
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    n_tar, n_non = int(tar.sum()), int((~tar).sum())
    auc = (ranks[tar].sum() - n_tar * (n_tar + 1) / 2) / (n_tar * n_non)
    return float(1.0 - auc)


@dataclass
class RecordingEmbeddings:
    """A model's embeddings of unlabelled recordings: whole, and each half on its own."""

    utts: list[str]
    whole: np.ndarray
    first: np.ndarray
    second: np.ndarray
    mean: np.ndarray


def embed_recordings(model_dir, waves: list[np.ndarray], utts: list[str], device: str = "cpu") -> RecordingEmbeddings:
    """Embed ``waves`` (16 kHz) whole and by halves with the model folder's encoder."""
    from cdino.eval.embed import embed_waves
    from cdino.eval.model_folder import read_model_folder

    model = read_model_folder(model_dir, device=device, optimize="fp32" if device == "cpu" else False)
    fbank = model.fbank

    def run(ws):
        return embed_waves(model.encoder, fbank, ws, model.device).float().cpu().numpy()

    halves = [(w[: len(w) // 2], w[len(w) // 2:]) for w in waves]
    return RecordingEmbeddings(utts, run(waves), run([h[0] for h in halves]), run([h[1] for h in halves]),
                               np.asarray(model.mean, dtype=np.float64))


def criteria(candidates: dict[str, RecordingEmbeddings], visual: np.ndarray | None = None,
             has_visual: np.ndarray | None = None, channel: np.ndarray | None = None,
             seed: int = 0, views: CrossViewTrials | None = None) -> dict[str, dict[str, float]]:
    """Every criterion (:data:`CRITERIA`; ``cross_channel`` needs channel statistics,
    ``cross_view`` a second view too, or ready ``views`` trials) for every candidate:
    ``{candidate: {criterion: value}}``, lower is better."""
    wholes = [c.whole for c in candidates.values()]
    shared = shared_partition(wholes, seed=seed)
    audio = None
    if channel is not None:
        audio = cross_view_trials(side_by_side(wholes), np.ones(len(wholes[0]), bool), channel, seed=seed)
    if views is None and visual is not None and channel is not None:
        views = cross_view_trials(visual, has_visual, channel, seed=seed)
    out = {}
    for name, c in candidates.items():
        row = {"own_clusters": own_clusters_eer(c.whole, c.mean, seed=seed),
               "split": split_eer(c.first, c.second, c.mean, seed=seed),
               "shared": partition_eer(c.whole, c.mean, shared, seed=seed)}
        if audio is not None:
            row["cross_channel"] = cross_view_error(c.whole, c.mean, audio)
        if views is not None:
            row["cross_view"] = cross_view_error(c.whole, c.mean, views)
        out[name] = row
    return out


def pick_candidate(values: dict[str, dict[str, float]], criterion: str = "auto") -> tuple[str, str]:
    """``(criterion, candidate)``: the candidate of :func:`criteria`'s ``values`` with the
    lowest ``criterion``; ``auto`` takes ``cross_view`` where it was scored (a second view),
    else ``cross_channel``."""
    if criterion == "auto":
        criterion = "cross_view" if "cross_view" in next(iter(values.values())) else "cross_channel"
    return criterion, min(values, key=lambda n: values[n][criterion])


def score_candidates(models: dict, data_dir, max_utts: int = 1600, device: str = "cpu",
                     seed: int = 0, embed=None) -> tuple[dict[str, dict[str, float]], list[str], dict[str, RecordingEmbeddings]]:
    """Every criterion for every candidate model folder (``{name: path}``) on a data folder's
    recordings (their labels are never read). With a second view (``visual.npy``), the
    recordings are ``max_utts / 2`` random anchors and their cross-view targets found among
    all recordings (:func:`cross_view_trials`); without one, ``max_utts`` random recordings.
    ``embed(name, path, utts, waves)`` replaces :func:`embed_recordings` (e.g. to read cached
    embeddings of those recordings). Returns the values (:func:`criteria`),
    the recordings used and the candidates' embeddings of them."""
    from dataclasses import replace

    from cdino.data.audio import load_audio
    from cdino.data.kaldi_dir import DataDir, read_visual
    from cdino.eval.baselines import fbank_statistics
    from cdino.frontend.fbank import Fbank, FbankConfig

    data = DataDir.load(data_dir)
    everyone = list(data.utts)
    rng = np.random.default_rng(seed)
    fbank = Fbank(replace(FbankConfig(), mean_norm=False))
    known: dict[int, np.ndarray] = {}

    def channel_of(rows) -> np.ndarray:  # channel statistics, computed once per recording
        new = [int(r) for r in rows if int(r) not in known]
        if new:
            for r, x in zip(new, fbank_statistics(data, [everyone[r] for r in new], fbank)):
                known[r] = x
        return np.stack([known[int(r)] for r in rows])

    views = None
    got = read_visual(data.root)
    if got is not None:
        # Anchors are a random sample; their face neighbours come from all recordings, so a
        # large folder of many speakers still yields same-person targets.
        ids, rows = got
        row = {u: i for i, u in enumerate(ids)}
        has_visual = np.array([u in row for u in everyone])
        visual = np.stack([rows[row[u]] if u in row else np.zeros(rows.shape[1], np.float32) for u in everyone])
        faces = np.flatnonzero(has_visual)
        anchors = np.sort(rng.choice(faces, min(len(faces), max_utts // 2), replace=False))
        views = cross_view_trials(visual, has_visual, channel_of, anchors=anchors, seed=seed)
        chosen = np.unique(np.concatenate([views.enroll, views.test]))
        views = _restricted(views, chosen)
    else:
        chosen = np.sort(rng.choice(len(everyone), min(len(everyone), max_utts), replace=False))
    utts = [everyone[i] for i in chosen]
    waves = [load_audio(data.wav[u]) for u in utts]
    embed = embed or (lambda name, path, utts, waves: embed_recordings(path, waves, utts, device=device))
    emb = {name: embed(name, path, utts, waves) for name, path in models.items()}
    return criteria(emb, channel=channel_of(chosen), seed=seed, views=views), utts, emb
