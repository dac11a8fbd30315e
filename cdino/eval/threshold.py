"""The verification threshold of a model folder, set without speaker labels.

Trials are built from **pseudo labels of training utterances** (k-means clusters): pairs
in one cluster are targets, pairs across clusters non-targets. They are scored exactly as
evaluation scores (cosine after subtracting the training mean) and the threshold is their
EER threshold. Test labels are never used.
"""

from __future__ import annotations

import numpy as np

from cdino.metrics import eer_threshold

#: Recordings per k-means cluster of the pseudo-label trials (threshold and calibration).
#: On the dev splits of two simulated domains (four models, bench/results/calibration_rules/)
#: the calibration fitted on one cluster per 20 recordings had a Cllr within 6–18 % of its
#: minimum; one per 8 (clusters split below speakers: easy targets, an over-confident fit)
#: 1.9–2.8x. Those corpora have 20 recordings per speaker, so the rule gave about one
#: cluster per speaker; with many more recordings per speaker it over-splits, and a
#: cluster count near the expected number of speakers (``cdino calibrate --clusters``) is
#: the better choice.
RECORDINGS_PER_CLUSTER = 20


def label_free_clusters(n_recordings: int) -> int:
    """The k-means cluster count of the pseudo-label trials for ``n_recordings``
    recordings: one per :data:`RECORDINGS_PER_CLUSTER`, at least 2, at most 6000."""
    return int(np.clip(n_recordings // RECORDINGS_PER_CLUSTER, 2, 6000))


def pseudo_label_trials(labels: np.ndarray, n_trials: int = 20000,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random trials ``(enroll_idx, test_idx, is_target)`` from pseudo labels, half targets.

    Negative labels (utterances left unclustered) are ignored. A target pairs an utterance
    with another member of its cluster; a non-target pairs utterances of two clusters.
    """
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if n_trials < 2:
        raise ValueError(f"n_trials must be at least 2, got {n_trials}")
    rng = np.random.default_rng(seed)
    valid = np.flatnonzero(labels >= 0)
    order = valid[np.argsort(labels[valid], kind="stable")]  # members grouped by cluster
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]]) if order.size else np.zeros(0, int)
    sizes = np.diff(np.r_[starts, order.size])
    if starts.size < 2:
        raise ValueError("threshold trials need at least two pseudo-label clusters")
    if not (sizes >= 2).any():
        raise ValueError("threshold trials need a pseudo-label cluster with two or more utterances")

    n_target = n_trials // 2
    n_non = n_trials - n_target

    # Targets: a random member of a cluster of size >= 2, and another member of it.
    cluster_of = np.repeat(np.arange(starts.size), sizes)  # cluster number per sorted position
    eligible = np.flatnonzero(sizes[cluster_of] >= 2)
    pos = eligible[rng.integers(0, eligible.size, n_target)]
    c = cluster_of[pos]
    offset = rng.integers(1, sizes[c])  # 1..size-1: never the utterance itself
    mate = starts[c] + (pos - starts[c] + offset) % sizes[c]
    enroll_t, test_t = order[pos], order[mate]

    # Non-targets: two random utterances of different clusters (redraw collisions).
    a = rng.integers(0, order.size, n_non)
    b = rng.integers(0, order.size, n_non)
    clash = cluster_of[a] == cluster_of[b]
    while clash.any():
        b[clash] = rng.integers(0, order.size, int(clash.sum()))
        clash = cluster_of[a] == cluster_of[b]
    enroll_n, test_n = order[a], order[b]

    enroll = np.concatenate([enroll_t, enroll_n])
    test = np.concatenate([test_t, test_n])
    is_target = np.concatenate([np.ones(n_target, np.int8), np.zeros(n_non, np.int8)])
    return enroll, test, is_target


def cosine_scores(emb: np.ndarray, enroll: np.ndarray, test: np.ndarray,
                  mean: np.ndarray | None = None) -> np.ndarray:
    """Cosine of embedding pairs after subtracting ``mean`` (the evaluation scoring)."""
    x = np.asarray(emb, dtype=np.float64)
    if mean is not None:
        x = x - np.asarray(mean, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return np.einsum("nd,nd->n", x[enroll], x[test])


def pseudo_label_scores(emb: np.ndarray, labels: np.ndarray, mean: np.ndarray | None,
                        n_trials: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(scores, is_target) of trials built from pseudo labels of training utterances,
    scored as evaluation scores them (the threshold and the calibration both use them)."""
    emb = np.asarray(emb)
    labels = np.asarray(labels)
    if emb.ndim != 2 or labels.shape != (emb.shape[0],):
        raise ValueError(f"need emb (N, D) and labels (N,), got {emb.shape} and {labels.shape}")
    enroll, test, is_target = pseudo_label_trials(labels, n_trials, seed)
    return cosine_scores(emb, enroll, test, mean), is_target


def pseudo_label_threshold(emb: np.ndarray, labels: np.ndarray, mean: np.ndarray | None,
                           n_trials: int = 20000, seed: int = 0) -> float:
    """EER threshold of trials built from pseudo labels of training utterances."""
    scores, is_target = pseudo_label_scores(emb, labels, mean, n_trials, seed)
    return float(eer_threshold(scores, is_target))


def threshold_source(n_trials: int = 20000, labels: str = "k-means pseudo labels") -> str:
    """The sentence stored as ``threshold_source`` in a model folder."""
    return f"EER threshold of {n_trials} trials built from {labels} of training utterances"
