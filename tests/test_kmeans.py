"""k-means pseudo-labeller: recovery, determinism, Ward seeding, whitening, tiny-cluster
rule, merging, files."""

from __future__ import annotations

import numpy as np
import pytest

from cdino.atomic import leftovers
from cdino.config import from_dict
from cdino.errors import ConfigError, DataError
from cdino.metrics import nmi
from cdino.pseudo.kmeans import (KMeansConfig, cluster, cluster_size_stats, kmeans,
                                 ledoit_wolf_shrinkage, pca_whiten, read_utt2cluster, write_utt2cluster)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny problems: one thread avoids OpenMP spin-waits on a busy 2-core machine."""
    import faiss
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(before)
    faiss.omp_set_num_threads(before)


def sphere_blobs(n=1500, k=8, d=16, spread=0.15, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((k, d))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    truth = np.repeat(np.arange(k), n // k)
    x = means[truth] + spread / np.sqrt(d) * rng.standard_normal((truth.size, d))
    return x.astype(np.float32), truth


@pytest.mark.parametrize("backend", ["torch", "faiss"])
@pytest.mark.parametrize("seed", [0, 1])
def test_recovers_separated_clusters(backend, seed):
    x, truth = sphere_blobs()
    labels, centroids = kmeans(x, 8, n_iter=20, seed=seed, backend=backend)  # auto: k-means++
    assert labels.dtype == np.int64 and labels.shape == (x.shape[0],)
    assert centroids.dtype == np.float32 and centroids.shape == (8, 16)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-4)
    assert nmi(truth, labels) > 0.95


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_deterministic_for_a_seed(backend):
    x, _ = sphere_blobs(n=800, k=30, spread=0.8, seed=1)  # hard data: init matters
    for init in ("random", "kmeans++"):
        a = kmeans(x, 30, n_iter=10, seed=5, backend=backend, init=init)
        b = kmeans(x, 30, n_iter=10, seed=5, backend=backend, init=init)
        c = kmeans(x, 30, n_iter=10, seed=6, backend=backend, init=init)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        assert not np.array_equal(a[0], c[0])


def test_backends_agree_in_quality():
    x, truth = sphere_blobs(n=2000, k=20, spread=0.3, seed=2)
    scores = {b: np.mean([nmi(truth, kmeans(x, 20, seed=s, backend=b, init="random")[0])
                          for s in range(3)])
              for b in ("torch", "faiss")}
    assert min(scores.values()) > 0.9
    assert abs(scores["torch"] - scores["faiss"]) < 0.03


def test_euclidean_and_kmeanspp():
    rng = np.random.default_rng(3)
    centres = np.array([[0, 0], [10, 0], [0, 10], [20, 20]], dtype=np.float32)
    truth = rng.integers(0, 4, 400)
    x = centres[truth] + rng.standard_normal((400, 2)).astype(np.float32)
    labels, cents = kmeans(x, 4, backend="torch", spherical=False, init="kmeans++")
    assert nmi(truth, labels) > 0.98
    # centroids are the (unnormalised) means: close to the true centres
    assert np.abs(np.sort(cents[:, 0]) - np.sort(centres[:, 0])).max() < 0.6


@pytest.mark.parametrize("seed", range(4))
def test_empty_clusters_are_reseeded(seed):
    # 50 copies each of two points and three single points: random init almost surely
    # duplicates a centroid, whose cluster then empties and must be re-seeded
    rng = np.random.default_rng(0)
    pts = rng.standard_normal((5, 8)).astype(np.float32)
    x = np.concatenate([np.repeat(pts[:1], 50, 0), np.repeat(pts[1:2], 50, 0), pts[2:]])
    labels, _ = kmeans(x, 5, n_iter=10, seed=seed, backend="torch", init="random")
    assert len(np.unique(labels)) == 5
    assert len(np.unique(labels[:50])) == 1 and len(np.unique(labels[50:100])) == 1


def test_min_cluster_size_rule():
    # three tight blobs and two isolated points, all mutually orthogonal directions:
    # k-means++ into 5 gives the isolated points clusters of their own
    rng = np.random.default_rng(4)
    d = 16
    axes = np.eye(d, dtype=np.float32)
    truth = np.repeat(np.arange(3), 100)
    blobs = axes[truth] + 0.01 * rng.standard_normal((300, d)).astype(np.float32)
    lone = axes[[7, 11]] + 0.3 * axes[[0, 1]]  # nearest blobs: 0 and 1
    x = np.concatenate([blobs, lone])
    plain = cluster(x, KMeansConfig(n_clusters=5, min_cluster_size=1, backend="torch"))
    assert sorted(plain.sizes.tolist()) == [1, 1, 100, 100, 100]
    res = cluster(x, KMeansConfig(n_clusters=5, min_cluster_size=3, backend="torch"))
    assert res.labels.shape == (x.shape[0],)
    assert res.n_clusters == 3 == res.centroids.shape[0] == res.sizes.size
    assert res.sizes.min() >= 3 and res.sizes.sum() == x.shape[0]
    np.testing.assert_array_equal(np.bincount(res.labels), res.sizes)
    assert np.all(np.diff(res.sizes) <= 0)  # renumbered by decreasing size
    assert nmi(truth, res.labels[:300]) == pytest.approx(1.0)
    # the isolated points joined the blob of highest cosine
    assert res.labels[300] == res.labels[0] and res.labels[301] == res.labels[100]
    assert res.sizes.tolist() == [101, 101, 100]
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(np.linalg.norm(res.centroids, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(res.similarity, np.einsum("nd,nd->n", xn, res.centroids[res.labels]),
                               atol=1e-5)
    stats = res.stats()
    assert stats["n_clusters"] == 3 and stats["min_size"] == 100 and stats["singletons"] == 0
    with pytest.raises(ConfigError, match="min_cluster_size=500"):
        cluster(x, KMeansConfig(n_clusters=5, min_cluster_size=500, backend="torch"))


def test_merge_to_merges_sub_clusters():
    # 4 well separated groups, each made of 3 nearby tight sub-clusters
    rng = np.random.default_rng(5)
    d = 24
    groups = rng.standard_normal((4, d))
    groups /= np.linalg.norm(groups, axis=1, keepdims=True)
    subs = np.repeat(groups, 3, 0) + 0.25 * rng.standard_normal((12, d)) / np.sqrt(d)
    sub_of = np.repeat(np.arange(12), 60)
    noise = 0.03 * rng.standard_normal((sub_of.size, d)) / np.sqrt(d)
    x = (subs[sub_of] + noise).astype(np.float32)
    group_of = sub_of // 3
    fine = cluster(x, KMeansConfig(n_clusters=12, backend="torch", seed=1))
    assert fine.n_clusters == 12 and nmi(sub_of, fine.labels) > 0.99
    res = cluster(x, KMeansConfig(n_clusters=12, merge_to=4, backend="torch", seed=1))
    assert res.n_clusters == 4
    assert nmi(group_of, res.labels) == pytest.approx(1.0)
    # the merge of 12 into 7 also yields exactly that many clusters
    assert cluster(x, KMeansConfig(n_clusters=12, merge_to=7, backend="faiss")).n_clusters == 7


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_ward_seeding_beats_kmeanspp_on_many_small_clusters(backend):
    """A speaker corpus's shape: many small clusters of equal size that overlap a little.
    Lloyd from Ward's groups ends nearer the truth than from k-means++ seeds."""
    gain = []
    for data_seed in range(3):
        x, truth = sphere_blobs(n=600, k=60, d=16, spread=0.8, seed=data_seed)
        ward = nmi(truth, kmeans(x, 60, seed=0, backend=backend, init="ward")[0])
        pp = np.mean([nmi(truth, kmeans(x, 60, seed=s, backend=backend, init="kmeans++")[0])
                      for s in range(3)])
        gain.append(ward - pp)
    assert min(gain) > 0.0 and np.mean(gain) > 0.01, gain


def test_ward_seeding_samples_and_is_deterministic():
    x, truth = sphere_blobs(n=800, k=8, spread=0.3, seed=2)
    a = cluster(x, KMeansConfig(n_clusters=8, init="ward", backend="torch"))
    b = cluster(x, KMeansConfig(n_clusters=8, init="ward", backend="torch"))
    np.testing.assert_array_equal(a.labels, b.labels)
    assert nmi(truth, a.labels) > 0.95
    # a tree over a 100-row sample still seeds all 8 clusters; the seed picks the sample
    small = [cluster(x, KMeansConfig(n_clusters=8, init="ward", ward_max_points=100, seed=s,
                                     n_iter=1, backend="torch")) for s in (0, 1)]
    assert all(r.n_clusters == 8 and nmi(truth, r.labels) > 0.9 for r in small)
    with pytest.raises(ConfigError, match="ward_max_points"):
        from_dict(KMeansConfig, {"n_clusters": 50, "init": "ward", "ward_max_points": 20})


def test_pca_whiten_gives_unit_covariance():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 6)) @ rng.standard_normal((6, 6)) * 5 + 3
    w = pca_whiten(x, shrinkage=0.0)
    assert w.dtype == np.float32 and w.shape == x.shape
    np.testing.assert_allclose(w.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.cov(w, rowvar=False, bias=True), np.eye(6), atol=1e-3)
    # a direction with (almost) no variance is floored, not blown up to unit variance
    flat = np.concatenate([x, np.full((2000, 1), 7.0) + 1e-9 * rng.standard_normal((2000, 1))], 1)
    assert np.abs(pca_whiten(flat, shrinkage=0.0)).max() < 10
    with pytest.raises(ValueError, match="at least 2"):
        pca_whiten(x[:1])
    with pytest.raises(ValueError, match="shrinkage"):
        pca_whiten(x, shrinkage=1.5)


def test_ledoit_wolf_shrinkage_grows_as_rows_get_few():
    rng = np.random.default_rng(1)
    mix = rng.standard_normal((32, 32))
    a = {n: ledoit_wolf_shrinkage((x := rng.standard_normal((n, 32)) @ mix) - x.mean(0))
         for n in (40, 400, 40_000)}
    assert 0.0 <= a[40_000] < a[400] < a[40] <= 1.0, a
    assert a[40_000] < 0.01
    iso = rng.standard_normal((50, 8))  # identity covariance: all shrinkage
    assert ledoit_wolf_shrinkage(iso - iso.mean(0)) > 0.5


def test_shrunk_whitening_keeps_structure_with_few_rows():
    """24 rows in 64 dims: plain whitening makes all rows equidistant; shrunk keeps groups."""
    x, truth = sphere_blobs(n=24, k=3, d=64, spread=1.0, seed=3)
    plain = pca_whiten(x, shrinkage=0.0)
    d = np.linalg.norm(plain[:, None] - plain[None], axis=2)[np.triu_indices(24, 1)]
    assert d.std() / d.mean() < 1e-3  # a simplex: no structure left
    shrunk = cluster(x, KMeansConfig(n_clusters=3, whiten=True, init="ward")).labels
    assert nmi(truth, shrunk) > 0.95


def test_whitening_finds_speakers_under_a_loud_nuisance():
    """Speakers differ in 14 quiet directions; 2 loud ones carry a per-utterance nuisance
    (a channel): cosine k-means follows the nuisance, whitened k-means the speakers."""
    rng = np.random.default_rng(0)
    means = rng.standard_normal((8, 16))
    means[:, :2] = 0
    truth = np.repeat(np.arange(8), 100)
    x = means[truth] + 0.3 * rng.standard_normal((truth.size, 16))
    x[:, :2] += 6 * rng.standard_normal((truth.size, 2))
    x = x.astype(np.float32)
    plain = nmi(truth, cluster(x, KMeansConfig(n_clusters=8)).labels)
    white = nmi(truth, cluster(x, KMeansConfig(n_clusters=8, whiten=True)).labels)
    assert plain < 0.5 and white > 0.85, (plain, white)


def test_cluster_size_stats_known():
    stats = cluster_size_stats(np.array([5, 5, 5, 2, 2, 9]))
    assert stats == {"n_clusters": 3, "min_size": 1, "median_size": 2.0, "max_size": 3,
                     "singletons": 1}


def test_config_checks():
    with pytest.raises(ConfigError, match="merge_to"):
        from_dict(KMeansConfig, {"n_clusters": 10, "merge_to": 20})
    with pytest.raises(ConfigError, match="unknown config key 'n_cluster'"):
        from_dict(KMeansConfig, {"n_cluster": 10})
    with pytest.raises(ConfigError, match="n_clusters=50"):
        cluster(np.ones((10, 4), np.float32), KMeansConfig(n_clusters=50))
    with pytest.raises(ValueError, match="non-finite"):
        cluster(np.full((10, 4), np.nan, np.float32), KMeansConfig(n_clusters=2))


def test_utt2cluster_round_trip(tmp_path):
    utts = [f"spk{i % 3}-utt{i}" for i in range(10)]
    labels = np.arange(10) % 4
    path = tmp_path / "sub" / "utt2cluster"
    write_utt2cluster(path, utts, labels)
    got_utts, got = read_utt2cluster(path)
    assert got_utts == utts
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, labels)
    assert not leftovers(tmp_path / "sub")
    bad = tmp_path / "bad"
    bad.write_text("a 1\nb x\n")
    with pytest.raises(DataError, match=r"bad:2: cluster 'x'"):
        read_utt2cluster(bad)
    bad.write_text("a 1\na 2\n")
    with pytest.raises(DataError, match="duplicate"):
        read_utt2cluster(bad)
    with pytest.raises(DataError, match="cannot read"):
        read_utt2cluster(tmp_path / "missing")
    with pytest.raises(ValueError):
        write_utt2cluster(path, utts, labels[:3])
