"""Trial scoring: cosine after centring, AS-norm, chunking, unknown utterances."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from cdino.config import from_dict
from cdino.errors import CdinoError, ConfigError, DataError
from cdino.eval import verification
from cdino.eval.verification import ASNormConfig, cosine_matrix, score_trials


def _setup(n_utts: int = 30, dim: int = 16, n_trials: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n_utts, dim)).astype(np.float32) + 2.0  # off-centre on purpose
    utts = [f"u{i:03d}" for i in range(n_utts)]
    order = rng.permutation(n_utts)  # rows not in utterance order
    utt_index = {utts[i]: int(order[i]) for i in range(n_utts)}
    emb_rows = np.empty_like(emb)
    emb_rows[order] = emb
    pairs = rng.integers(0, n_utts, size=(n_trials, 2))
    trials = SimpleNamespace(enroll=[utts[a] for a, _ in pairs], test=[utts[b] for _, b in pairs],
                             path="lists/trials.txt")
    return emb, emb_rows, utt_index, trials, pairs, rng


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_cosine_scores_match_a_direct_loop(monkeypatch):
    emb, rows, utt_index, trials, pairs, _ = _setup()
    mean = emb.mean(axis=0)
    monkeypatch.setattr(verification, "TRIAL_CHUNK", 37)  # several chunks, one partial
    got = score_trials(rows, utt_index, trials, mean=mean)
    want = [_cos(emb[a] - mean, emb[b] - mean) for a, b in pairs]
    assert got.dtype == np.float64 and got.shape == (len(pairs),)
    assert np.allclose(got, want, atol=1e-5)
    raw = score_trials(rows, utt_index, trials)
    assert np.allclose(raw, [_cos(emb[a], emb[b]) for a, b in pairs], atol=1e-5)
    assert not np.allclose(raw, got, atol=1e-2)  # the mean matters for off-centre embeddings


def _asnorm_direct(emb, mean, cohort, pairs, top_n):
    def stats(x):
        s = np.array([_cos(x - mean, c - mean) for c in cohort])
        top = np.sort(s)[::-1][:top_n]
        return top.mean(), top.std()

    out = []
    for a, b in pairs:
        s = _cos(emb[a] - mean, emb[b] - mean)
        (me, se), (mt, st) = stats(emb[a]), stats(emb[b])
        out.append(0.5 * ((s - me) / se + (s - mt) / st))
    return np.array(out)


def test_asnorm_matches_a_direct_implementation(monkeypatch):
    emb, rows, utt_index, trials, pairs, rng = _setup(n_utts=20, n_trials=60)
    cohort = rng.standard_normal((50, 16)).astype(np.float32) + 2.0
    mean = np.concatenate([emb, cohort]).mean(axis=0)
    monkeypatch.setattr(verification, "COHORT_BLOCK", 3 * 50 + 7)  # blocks of 3 utterances
    got = score_trials(rows, utt_index, trials, mean=mean, asnorm=ASNormConfig(top_n=10), cohort=cohort)
    want = _asnorm_direct(emb, mean, cohort, pairs, 10)
    assert np.allclose(got, want, atol=1e-4)
    # top_n larger than the cohort uses the whole cohort
    full = score_trials(rows, utt_index, trials, mean=mean, asnorm=ASNormConfig(top_n=1000), cohort=cohort)
    assert np.allclose(full, _asnorm_direct(emb, mean, cohort, pairs, 50), atol=1e-4)
    with pytest.raises(ValueError, match="cohort"):
        score_trials(rows, utt_index, trials, asnorm=ASNormConfig())
    with pytest.raises(ConfigError, match="top_n"):
        from_dict(ASNormConfig, {"top_n": 0})


def test_asnorm_separates_targets_better_than_raw_scores_on_shifted_speakers():
    # speakers whose embeddings sit in a crowded region get inflated raw scores; AS-norm
    # removes that per-side offset
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((40, 8))
    centres[:20] += 3.0 * rng.standard_normal(8)  # a crowded half
    emb = np.repeat(centres, 4, axis=0) + 0.8 * rng.standard_normal((160, 8))
    spk = np.repeat(np.arange(40), 4)
    cohort = np.repeat(centres, 3, axis=0) + 0.8 * rng.standard_normal((120, 8))
    utt_index = {f"u{i}": i for i in range(160)}
    a, b = rng.integers(0, 160, size=(2, 3000))
    keep = a != b
    a, b = a[keep], b[keep]
    trials = SimpleNamespace(enroll=[f"u{i}" for i in a], test=[f"u{i}" for i in b])
    labels = spk[a] == spk[b]

    def eer(s):
        thr = np.sort(s)
        miss = np.array([(s[labels] < t).mean() for t in thr])
        fa = np.array([(s[~labels] >= t).mean() for t in thr])
        i = np.argmin(np.abs(miss - fa))
        return (miss[i] + fa[i]) / 2

    raw = score_trials(emb, utt_index, trials)
    norm = score_trials(emb, utt_index, trials, asnorm=ASNormConfig(top_n=20), cohort=cohort)
    assert eer(norm) < eer(raw)


def test_unknown_trial_utterance_is_a_data_error_naming_it():
    emb, rows, utt_index, trials, _, _ = _setup()
    trials.test[5] = "ghost-utt"
    with pytest.raises(DataError) as info:
        score_trials(rows, utt_index, trials, where="data/test")
    msg = str(info.value)
    assert "ghost-utt" in msg and "data/test" in msg and "lists/trials.txt" in msg
    assert "\n" not in msg and isinstance(info.value, CdinoError)
    bad_index = dict(utt_index, u000=len(rows) + 3)  # a row past the end
    with pytest.raises(DataError, match="u000"):
        score_trials(rows, bad_index, trials)


def test_cosine_matrix_is_all_pairs():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((5, 7)), rng.standard_normal((4, 7))
    mean = rng.standard_normal(7)
    m = cosine_matrix(a, b, mean)
    assert m.shape == (5, 4)
    assert m[3, 2] == pytest.approx(_cos(a[3] - mean, b[2] - mean), abs=1e-6)
