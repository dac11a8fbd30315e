"""Audio-visual fusion: clustering gain, safety against a useless view, alignment, rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cdino.config import from_dict
from cdino.errors import ConfigError, DataError
from cdino.metrics import nmi
from cdino.pseudo.fusion import (FusionConfig, align_visual, estimate_visual_weight, fuse,
                                 fuse_embeddings, joint_loss, joint_prediction,
                                 multimodal_reliable)
from cdino.pseudo.kmeans import KMeansConfig, cluster

USELESS_MARGIN = 0.05  # documented: a useless visual view costs at most this much NMI


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def speakers(seed, n_spk=30, per=20, d_a=32, d_v=16, audio_noise=1.3, visual="faces",
             missing=0.2):
    """Noisy audio clusters; a visual view that is informative ("faces") or random."""
    rng = np.random.default_rng(seed)
    spk = np.repeat(np.arange(n_spk), per)
    a_mean = rng.standard_normal((n_spk, d_a))
    a_mean /= np.linalg.norm(a_mean, axis=1, keepdims=True)
    v_mean = rng.standard_normal((n_spk, d_v))
    v_mean /= np.linalg.norm(v_mean, axis=1, keepdims=True)
    audio = a_mean[spk] + audio_noise / np.sqrt(d_a) * rng.standard_normal((spk.size, d_a))
    if visual == "faces":
        vis = v_mean[spk] + 0.3 / np.sqrt(d_v) * rng.standard_normal((spk.size, d_v))
    else:
        vis = rng.standard_normal((spk.size, d_v))
    has = rng.random(spk.size) > missing
    vis[~has] = 0.0
    return audio.astype(np.float32), vis.astype(np.float32), has, spk


def kmeans_nmi(x, spk, seed):
    labels = cluster(x, KMeansConfig(n_clusters=30, seed=seed, backend="torch")).labels
    return nmi(spk, labels), labels


@pytest.mark.parametrize("seed", [0, 1])
def test_informative_visual_view_improves_clustering(seed):
    audio, vis, has, spk = speakers(seed)
    audio_only, _ = kmeans_nmi(audio, spk, seed)
    fused, weight = fuse(audio, vis, has, FusionConfig(), seed=seed)
    assert 0.5 < weight <= 1.0
    fused_nmi, labels = kmeans_nmi(fused, spk, seed)
    assert fused_nmi > audio_only + 0.03, (audio_only, fused_nmi)
    # rows without a visual view still get labels, as good as audio alone gives them
    assert labels.shape == spk.shape
    _, audio_labels = kmeans_nmi(audio, spk, seed)
    assert nmi(spk[~has], labels[~has]) > nmi(spk[~has], audio_labels[~has]) - 0.03
    # a fixed equal weight helps too
    assert kmeans_nmi(fuse_embeddings(audio, vis, has, 1.0), spk, seed)[0] > audio_only + 0.03


@pytest.mark.parametrize("seed", [0, 1])
def test_useless_visual_view_is_harmless_at_default(seed):
    audio, vis, has, spk = speakers(seed, visual="random")
    audio_only, _ = kmeans_nmi(audio, spk, seed)
    fused, weight = fuse(audio, vis, has, FusionConfig(), seed=seed)
    assert weight < 0.1
    assert kmeans_nmi(fused, spk, seed)[0] >= audio_only - USELESS_MARGIN
    # why the default is "auto": a blind equal weight hurts badly on this data
    assert kmeans_nmi(fuse_embeddings(audio, vis, has, 1.0), spk, seed)[0] < audio_only - 0.1


def test_visual_weight_estimate():
    a, v, has, _ = speakers(2)
    w, agree = estimate_visual_weight(a, v, has, max_weight=2.0)
    assert 0.5 < agree <= 1.0 and w == pytest.approx(2.0 * agree)
    a, v, has, _ = speakers(2, visual="random")
    assert estimate_visual_weight(a, v, has)[1] < 0.1
    # the visual view identical to audio agrees fully
    assert estimate_visual_weight(a, a, np.ones(len(a), bool))[1] == pytest.approx(1.0)
    # too few rows to judge: the configured maximum
    assert estimate_visual_weight(a, v, np.arange(len(a)) < 5, max_weight=0.7) == (0.7, 1.0)


def test_fused_geometry_and_imputation():
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((6, 4)).astype(np.float32) * 3
    vis = rng.standard_normal((6, 3)).astype(np.float32)
    has = np.array([True, True, True, True, True, False])
    w = 0.5
    f = fuse_embeddings(audio, vis, has, w)
    assert f.shape == (6, 7) and f.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(f[:, :4], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(f[:5, 4:], axis=1), np.sqrt(w), rtol=1e-5)
    # cosine of two full rows = (cos_a + w cos_v) / (1 + w)
    cos = lambda x, y: float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))  # noqa: E731
    assert cos(f[0], f[1]) == pytest.approx(
        (cos(audio[0], audio[1]) + w * cos(vis[0], vis[1])) / (1 + w), abs=1e-5)
    # the missing row's block: mean of its nearest audio neighbours' unit visual vectors
    audio[5] = audio[2] * 2.0  # nearest audio neighbour: row 2
    f = fuse_embeddings(audio, vis, has, 1.0, n_neighbors=1)
    np.testing.assert_allclose(f[5, 4:], vis[2] / np.linalg.norm(vis[2]), rtol=1e-5)
    f = fuse_embeddings(audio, vis, has, 1.0, n_neighbors=5)
    unit = vis[:5] / np.linalg.norm(vis[:5], axis=1, keepdims=True)
    np.testing.assert_allclose(f[5, 4:], unit.mean(0), rtol=1e-5, atol=1e-6)
    # no visual modality: normalised audio; weight 0: visual block ignored
    np.testing.assert_allclose(fuse_embeddings(audio, None, None), f[:, :4], rtol=1e-5)
    assert np.all(fuse_embeddings(audio, vis, has, 0.0)[:, 4:] == 0)
    with pytest.raises(ValueError):
        fuse_embeddings(audio, vis[:3], has, 1.0)
    with pytest.raises(ValueError):
        fuse_embeddings(audio, vis, has, -1.0)


def test_align_visual():
    utts = ["u1", "u2", "u3", "u4"]
    rows = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    out, has = align_visual(utts, ["u3", "u1", "u4"], rows)
    assert has.tolist() == [True, False, True, True]
    np.testing.assert_array_equal(out, [[0, 1], [0, 0], [1, 0], [1, 1]])
    with pytest.raises(DataError, match=r"visual_utts.txt: utterance 'zz' \(row 2\) is not in"):
        align_visual(utts, ["u1", "zz", "u2"], rows)
    with pytest.raises(DataError, match="appears twice"):
        align_visual(utts, ["u1", "u2", "u1"], rows)
    with pytest.raises(DataError, match="3 utterance ids but 2 visual rows"):
        align_visual(utts, ["u1", "u2", "u3"], rows[:2])
    with pytest.raises(DataError, match="dimension 2, expected 8"):
        align_visual(utts, ["u1", "u2", "u3"], rows, dim=8)
    bad = rows.copy()
    bad[1, 0] = np.nan
    with pytest.raises(DataError, match=r"data/v.txt: visual embedding of 'u2' \(row 2\)"):
        align_visual(utts, ["u1", "u2", "u3"], bad, where="data/v.txt")


def test_reliability_rules_and_joint_prediction():
    a = np.array([True, True, False, False, True])
    v = np.array([True, False, True, False, False])
    has = np.array([True, True, True, True, False])
    assert multimodal_reliable(a, v, has, "both").tolist() == [True, False, False, False, True]
    assert multimodal_reliable(a, v, has, "either").tolist() == [True, True, True, False, True]
    fused = np.array([False, True, True, False, False])
    got = multimodal_reliable(a, v, has, "fused", fused)
    assert got.tolist() == [False, True, True, False, True]
    got = multimodal_reliable(torch.from_numpy(a), torch.from_numpy(v), torch.from_numpy(has))
    assert got.dtype == torch.bool and got.tolist() == [True, False, False, False, True]
    with pytest.raises(ValueError):
        multimodal_reliable(a, v, has, "fused")
    with pytest.raises(ValueError):
        multimodal_reliable(a, v, has, "any")

    pa = torch.tensor([[0.6, 0.4], [0.2, 0.8]])
    pv = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    has_t = torch.tensor([True, False])
    joint = joint_prediction(pa, pv, has_t)
    assert torch.allclose(joint, torch.tensor([[0.3, 0.7], [0.2, 0.8]]))
    loss = joint_loss(pa, pv, torch.tensor([1, 0]), has_t)
    assert torch.allclose(loss, -torch.log(torch.tensor([0.7, 0.2])))
    np.testing.assert_allclose(joint_prediction(pa.numpy(), pv.numpy(), has_t.numpy()),
                               joint.numpy())


def test_config_is_strict():
    assert from_dict(FusionConfig, {}).visual_weight == "auto"
    assert from_dict(FusionConfig, {"visual_weight": 0.5}).visual_weight == 0.5
    assert from_dict(FusionConfig, {"visual_weight": 2}).visual_weight == 2.0
    with pytest.raises(ConfigError, match="visual_weight"):
        from_dict(FusionConfig, {"visual_weight": "big"})
    with pytest.raises(ConfigError, match="visual_weight"):
        from_dict(FusionConfig, {"visual_weight": -1.0})
    with pytest.raises(ConfigError, match="reliability"):
        from_dict(FusionConfig, {"reliability": "majority"})
    # no visual modality: fused input is audio, weight 0
    audio = np.ones((3, 2), np.float32)
    fused, weight = fuse(audio, None, None, FusionConfig())
    assert fused.shape == (3, 2) and weight == 0.0
