"""Speaker-verification scoring of trials: cosine similarity and adaptive s-norm.

Embeddings are centred by subtracting a mean (the mean of unlabelled training
embeddings, in cdino's protocol) and L2-normalised; a trial's score is the cosine of its
enrolment and test embeddings. AS-norm (adaptive symmetric score normalisation)
standardises a score with the statistics of each side's top-N closest cohort scores:

    s' = ½ · ((s − μ_e) / σ_e + (s − μ_t) / σ_t)

where μ_e, σ_e are the mean and standard deviation of the N highest scores of the
enrolment utterance against the cohort (likewise for the test side).

An enrolment of several utterances (:func:`score_enrolled_trials`, ``cdino eval --enroll``,
``SpeakerModel.score([a, b, c], d)``) is one vector, :func:`average_enrolment`: the mean of
its utterances' mean-subtracted, L2-normalised embeddings; the score is its cosine with the
test side, and AS-norm treats it like a single enrolment embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

import numpy as np

from cdino.errors import ConfigError, DataError

#: Trials scored per vectorised step (bounds memory to a few tens of MB).
TRIAL_CHUNK = 65536
#: Entries of an utterance × cohort score block computed at once.
COHORT_BLOCK = 1 << 22


class TrialList(Protocol):
    """Anything with parallel ``enroll`` and ``test`` utterance lists (e.g. ``Trials``)."""

    enroll: Sequence[str]
    test: Sequence[str]


@dataclass
class ASNormConfig:
    """Adaptive s-norm settings."""

    top_n: int = 300
    """Cohort scores per side used for the mean and std (the N highest)."""

    def validate(self) -> None:
        if self.top_n < 1:
            raise ConfigError(f"top_n: must be >= 1, got {self.top_n}")


def _normalise(x: np.ndarray, mean: np.ndarray | None) -> np.ndarray:
    """Centre (optionally) and L2-normalise rows, as float32."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (n, dim), got shape {x.shape}")
    if mean is not None:
        mean = np.asarray(mean, dtype=np.float32).reshape(1, -1)
        if mean.shape[1] != x.shape[1]:
            raise ValueError(f"mean has {mean.shape[1]} dims, embeddings {x.shape[1]}")
        x = x - mean
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def average_enrolment(emb: np.ndarray, mean: np.ndarray | None = None) -> np.ndarray:
    """The enrolment vector of several recordings of one speaker, ``emb`` (n, D): the mean of
    their embeddings after subtracting ``mean`` and L2-normalising each (float32 (D,), not
    itself normalised: the cosine with the test side does that). One recording gives its
    normalised embedding, so scoring agrees with a single enrolment."""
    x = _normalise(emb, mean)
    if x.shape[0] == 0:
        raise ValueError("an enrolment needs at least one embedding")
    return x.mean(axis=0)


def cosine_matrix(a: np.ndarray, b: np.ndarray, mean: np.ndarray | None = None) -> np.ndarray:
    """Cosine similarity of every row of ``a`` (n, d) with every row of ``b`` (m, d) → (n, m),
    after subtracting ``mean`` from both."""
    return _normalise(a, mean) @ _normalise(b, mean).T


def _trial_rows(utts: Sequence[str], utt_index: dict[str, int], n_emb: int,
                trials: TrialList, where: str) -> np.ndarray:
    rows = np.fromiter((utt_index.get(u, -1) for u in utts), dtype=np.int64, count=len(utts))
    bad = np.flatnonzero((rows < 0) | (rows >= n_emb))
    if bad.size:
        utt = utts[int(bad[0])]
        source = getattr(trials, "path", None)
        prefix = f"{source}: " if source else ""
        place = f" in {where}" if where else ""
        raise DataError(f"{prefix}trial utterance '{utt}' has no embedding (not an utterance{place})")
    return rows


def _cohort_stats(emb: np.ndarray, cohort: np.ndarray, top_n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each row's ``top_n`` highest cosine scores against the cohort."""
    n, m = emb.shape[0], cohort.shape[0]
    top_n = min(top_n, m)
    means = np.empty(n, dtype=np.float64)
    stds = np.empty(n, dtype=np.float64)
    step = max(1, COHORT_BLOCK // max(m, 1))
    for start in range(0, n, step):
        block = emb[start:start + step] @ cohort.T
        if top_n < m:
            block = np.partition(block, m - top_n, axis=1)[:, m - top_n:]
        block = block.astype(np.float64)
        means[start:start + step] = block.mean(axis=1)
        stds[start:start + step] = block.std(axis=1)
    return means, np.maximum(stds, 1e-6)


def score_trials(emb: np.ndarray, utt_index: dict[str, int], trials: TrialList,
                 mean: np.ndarray | None = None, asnorm: ASNormConfig | None = None,
                 cohort: np.ndarray | None = None, where: str = "") -> np.ndarray:
    """Score every trial; returns float64 ``(n_trials,)`` in trial order.

    ``emb`` (N, D) holds one embedding per utterance and ``utt_index`` maps an utterance
    id to its row. Scores are cosines after subtracting ``mean`` (when given); with
    ``asnorm`` they are AS-normalised against ``cohort`` (M, D) embeddings, centred with
    the same mean. A trial utterance missing from ``utt_index`` raises ``DataError``
    naming it and ``where`` (the data folder).
    """
    if len(trials.enroll) != len(trials.test):
        raise ValueError("trials.enroll and trials.test differ in length")
    n_emb = np.shape(emb)[0]
    enroll = _trial_rows(trials.enroll, utt_index, n_emb, trials, where)
    test = _trial_rows(trials.test, utt_index, n_emb, trials, where)
    # only the utterances that occur in trials are normalised and (for AS-norm) scored
    used, inverse = np.unique(np.concatenate([enroll, test]), return_inverse=True)
    enroll, test = inverse[: len(enroll)], inverse[len(enroll):]
    x = _normalise(np.asarray(emb)[used], mean)
    scores = np.empty(len(enroll), dtype=np.float64)
    for start in range(0, len(enroll), TRIAL_CHUNK):
        e = x[enroll[start:start + TRIAL_CHUNK]]
        t = x[test[start:start + TRIAL_CHUNK]]
        scores[start:start + TRIAL_CHUNK] = np.einsum("ij,ij->i", e, t, dtype=np.float64)
    if asnorm is None:
        return scores
    if cohort is None or len(cohort) == 0:
        raise ValueError("AS-norm needs a non-empty cohort of embeddings")
    asnorm.validate()
    mu, sigma = _cohort_stats(x, _normalise(cohort, mean), asnorm.top_n)
    return 0.5 * ((scores - mu[enroll]) / sigma[enroll] + (scores - mu[test]) / sigma[test])


@dataclass
class _KeyedTrials:
    enroll: list[str]
    test: list[str]
    path: object = None


def score_enrolled_trials(emb: np.ndarray, utt_index: dict[str, int], trials: TrialList,
                          enrolments: Mapping[str, Sequence[str]], mean: np.ndarray | None = None,
                          asnorm: ASNormConfig | None = None, cohort: np.ndarray | None = None,
                          where: str = "") -> np.ndarray:
    """:func:`score_trials` for trials whose enrolment side names an entry of ``enrolments``
    (enrolment id -> its utterance ids, e.g. ``EnrollMap.utts``) and whose test side names
    an utterance. Each enrolment is :func:`average_enrolment` of its utterances; the score
    is its cosine with the test embedding (both centred with ``mean``), AS-normalised
    against ``cohort`` when ``asnorm`` is given."""
    if len(trials.enroll) != len(trials.test):
        raise ValueError("trials.enroll and trials.test differ in length")
    emb = np.asarray(emb)
    n_emb = emb.shape[0]
    ids = list(dict.fromkeys(trials.enroll))
    models = np.empty((len(ids), emb.shape[1]), dtype=np.float32)
    for j, e in enumerate(ids):
        if e not in enrolments:
            source = getattr(trials, "path", None)
            raise DataError(f"{f'{source}: ' if source else ''}enrolment '{e}' has no utterance list")
        rows = _trial_rows(list(enrolments[e]), utt_index, n_emb, trials, where)
        models[j] = average_enrolment(emb[rows], mean)
    test_rows = _trial_rows(trials.test, utt_index, n_emb, trials, where)
    used, inverse = np.unique(test_rows, return_inverse=True)
    # rows: the used test embeddings (centred, normalised), then the enrolment vectors; keys
    # in two name spaces so an enrolment id may equal an utterance id
    x = np.vstack([_normalise(emb[used], mean), models])
    index = {**{f"t:{i}": i for i in range(used.size)}, **{f"e:{e}": used.size + j for j, e in enumerate(ids)}}
    keyed = _KeyedTrials([f"e:{e}" for e in trials.enroll], [f"t:{i}" for i in inverse.reshape(-1)],
                         getattr(trials, "path", None))
    cohort_x = None if cohort is None else _normalise(cohort, mean)
    return score_trials(x, index, keyed, mean=None, asnorm=asnorm, cohort=cohort_x)
