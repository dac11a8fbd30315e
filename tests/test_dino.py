"""DINO and cluster-aware DINO: the loss, centring, EMA, the cluster-aware sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cdino.methods.cluster_aware import ClusterPositiveSampler, confident_members
from cdino.methods.dino import dino_loss


def _direct_dino_loss(s, t, c, ts, tt):
    s, t, c = s.double().numpy(), t.double().numpy(), c.double().numpy()
    total, terms = 0.0, 0
    for i in range(t.shape[0]):
        q = np.exp((t[i] - c) / tt)
        q /= q.sum(-1, keepdims=True)
        for j in range(s.shape[0]):
            if i == j:
                continue
            z = s[j] / ts
            logp = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
            total += float(np.mean(np.sum(-q * logp, axis=-1)))
            terms += 1
    return total / terms, terms


def test_dino_loss_equals_direct_computation():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(6, 5, 17, generator=g)
    t = torch.randn(2, 5, 17, generator=g)
    c = torch.randn(1, 17, generator=g) * 0.1
    got = dino_loss(s, t, c, 0.1, 0.04).item()
    want, terms = _direct_dino_loss(s, t, c, 0.1, 0.04)
    assert terms == 10  # 2 teacher crops x 6 student crops, same-crop pairs skipped
    assert got == pytest.approx(want, rel=1e-5)


def test_dino_loss_is_minimal_when_student_matches_sharp_teacher():
    t = torch.zeros(2, 3, 8)
    t[:, :, 0] = 10.0
    good = torch.zeros(4, 3, 8)
    good[:, :, 0] = 10.0
    bad = torch.zeros(4, 3, 8)
    bad[:, :, 1] = 10.0
    c = torch.zeros(1, 8)
    assert dino_loss(good, t, c, 0.1, 0.04) < dino_loss(bad, t, c, 0.1, 0.04)


def test_cluster_sampler_only_pairs_within_a_cluster():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, size=200)
    confident = rng.random(200) < 0.8
    sampler = ClusterPositiveSampler(labels, confident, n_global=2, n_local=4, cross="locals")
    crossed = 0
    for anchor in range(200):
        for slot in range(6):
            src = sampler(anchor, slot, rng)
            if slot < 2 or not confident[anchor]:
                assert src == anchor  # globals stay on the anchor; unconfident anchors borrow nothing
            else:
                assert labels[src] == labels[anchor]
                assert confident[src]  # only confident members lend crops
                crossed += src != anchor
    assert crossed > 300  # cross-utterance positives really happen


def test_cluster_sampler_crop_choices():
    labels = np.array([0, 0, 0, 1, 1])
    conf = np.ones(5, dtype=bool)
    rng = np.random.default_rng(1)
    s_all = ClusterPositiveSampler(labels, conf, 2, 2, cross="all")
    s_second = ClusterPositiveSampler(labels, conf, 2, 2, cross="second_global")
    assert all(s_all(0, slot, rng) in (1, 2) for slot in range(4))
    assert s_second(0, 0, rng) == 0 and s_second(0, 1, rng) in (1, 2) and s_second(0, 2, rng) == 0


def test_confident_members_keeps_closest_fraction_per_cluster():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    sim = np.array([0.9, 0.1, 0.5, 0.7, 0.2, 0.3, 0.95, 0.8, 0.1, 0.6])
    keep = confident_members(labels, sim, 0.5)
    assert keep.tolist() == [True, False, False, True, False, False, True, True, False, True]
    assert confident_members(labels, sim, 1.0).all()
