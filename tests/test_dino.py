"""DINO and cluster-aware DINO: the loss, centring, EMA, the cluster-aware sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cdino.methods.cluster_aware import ClusterPositiveSampler, confident_members
from cdino.methods.dino import MultiCropModel, dino_loss, embedding_regularisers
from cdino.models.dino_head import DinoHead


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


def test_embedding_regularisers_measure_spread_and_redundancy():
    g = torch.Generator().manual_seed(0)
    white = torch.randn(4000, 8, generator=g) * 2.0  # independent dimensions, std 2 > 1
    diversity, decorrelation = embedding_regularisers(white)
    assert diversity.item() == 0.0 and decorrelation.item() < 0.05
    base = torch.randn(4000, 1, generator=g)
    copies = base.repeat(1, 8) * 2.0  # one dimension repeated: every covariance is 4
    _, redundant = embedding_regularisers(copies)
    assert redundant.item() == pytest.approx(8 * 7 * 16.0 / 8, rel=0.1)
    still = torch.full((50, 8), 3.0)  # no spread at all: the hinge is at its largest
    diversity, _ = embedding_regularisers(still)
    assert diversity.item() == pytest.approx(1.0 - 1e-2, abs=1e-3)


def test_embedding_regularisers_pull_embeddings_apart():
    """Gradient steps on the two terms alone spread a collapsed batch and decorrelate it."""
    g = torch.Generator().manual_seed(1)
    emb = (torch.randn(64, 1, generator=g).repeat(1, 6) * 0.1 + torch.randn(64, 6, generator=g) * 0.01)
    emb.requires_grad_(True)
    opt = torch.optim.SGD([emb], lr=20.0)
    start = [t.item() for t in embedding_regularisers(emb)]
    for _ in range(200):
        diversity, decorrelation = embedding_regularisers(emb)
        opt.zero_grad()
        (diversity + 0.1 * decorrelation).backward()
        opt.step()
    end = [t.item() for t in embedding_regularisers(emb)]
    assert end[0] < 0.5 * start[0]
    corr = torch.corrcoef(emb.detach().T)
    assert (corr - torch.eye(6)).abs().max().item() < 0.5  # was ~1: one direction repeated


def test_multicrop_model_returns_global_embeddings_on_request():
    encoder = torch.nn.Sequential(torch.nn.Flatten(1), torch.nn.Linear(3 * 4, 5))
    model = MultiCropModel(encoder, DinoHead(5, 7, 8, 3))
    g, loc = torch.randn(2, 2, 3, 4), torch.randn(2, 3, 3, 4)
    logits, emb = model(g, loc, with_embeddings=True)
    assert logits.shape == (5, 2, 7) and emb.shape == (2, 2, 5)
    assert torch.allclose(emb[1], encoder(g[:, 1]))
    assert torch.equal(model(g, loc), logits)


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


def _dino_method(frontend=None, **dino):
    from pathlib import Path

    from cdino.config import load_config
    from cdino.methods.base import FeatureFrontend, MethodContext
    from cdino.methods.dino import DinoMethod
    from cdino.train.trainer import TrainConfig

    cfg = load_config(TrainConfig, {
        "encoder": {"name": "ecapa_tdnn_small"}, "trainer": {"epochs": 1, "global_batch": 4},
        "dino": {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "augment": False, **dino}})
    torch.manual_seed(0)
    ctx = MethodContext(cfg=cfg, device=torch.device("cpu"), rank=0, world_size=1, store=None, data=None,
                        out_dir=Path("."), frontend=frontend or FeatureFrontend(cfg.fbank, None, None))
    method = DinoMethod()
    method.setup(ctx)
    method.steps_per_epoch_value = 10
    return method


def _dino_step_loss(diversity: float, decorrelation: float):
    method = _dino_method(diversity_weight=diversity, decorrelation_weight=decorrelation)
    g = torch.Generator().manual_seed(0)
    batch = {"global": torch.randn(4, 2, 8000, generator=g) * 0.1, "local": torch.randn(4, 2, 4000, generator=g) * 0.1}
    return method.training_step(method.student, batch, 0, 0, g)


def test_dino_step_adds_the_embedding_regularisers_when_weighted():
    plain, plain_stats = _dino_step_loss(0.0, 0.0)
    both, stats = _dino_step_loss(2.0, 0.5)
    assert "diversity" not in plain_stats and "decorrelation" not in plain_stats
    want = plain + 2.0 * stats["diversity"] + 0.5 * stats["decorrelation"]
    assert both.item() == pytest.approx(want.item(), rel=1e-5)
    assert stats["diversity"].item() > 0 and stats["decorrelation"].item() > 0


@pytest.mark.parametrize("views", ["augmented", "clean"])
def test_the_teacher_sees_the_augmented_or_the_clean_global_crops(views):
    from cdino.frontend.fbank import FbankConfig
    from cdino.methods.base import FeatureFrontend

    class MarkedFrontend(FeatureFrontend):  # "augmentation" adds 1 to every feature
        def forward(self, wave, augment=True, generator=None):
            return super().forward(wave, False, generator) + (1.0 if augment else 0.0)

    frontend = MarkedFrontend(FbankConfig(), None, None)
    method = _dino_method(frontend, augment=True, teacher_views=views)
    seen = {}
    method.teacher.register_forward_pre_hook(lambda mod, args: seen.setdefault("teacher", args[0].clone()))
    method.student.register_forward_pre_hook(lambda mod, args: seen.setdefault("student", args[0].clone()))
    g = torch.Generator().manual_seed(0)
    batch = {"global": torch.randn(4, 2, 8000, generator=g) * 0.1, "local": torch.zeros(4, 0, 4000)}
    method.training_step(method.student, batch, 0, 0, g)
    clean = frontend(batch["global"], augment=False)
    torch.testing.assert_close(seen["student"], clean + 1.0)  # the student always gets augmented crops
    torch.testing.assert_close(seen["teacher"], clean + 1.0 if views == "augmented" else clean)
