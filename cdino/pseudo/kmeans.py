"""k-means pseudo-labeller: the one clustering module of cdino.

Speaker embeddings are clustered into ``K`` groups whose indices serve as pseudo
speaker labels (stage 2) or as the clusters C-DINO draws positive crops from.

Clustering is *spherical* by default: embeddings and centroids are L2-normalised and a
point joins the centroid of highest cosine. Two interchangeable back-ends:

- ``torch`` — chunked ``x @ c.T`` arg-max, centroid update with ``index_add_``, empty
  clusters re-seeded at the worst-fitting points; runs on any device (CUDA, optionally
  with bf16 distances). Deterministic for a seed on CPU; on CUDA the float atomics of
  ``index_add_`` may change the last bits between runs.
- ``faiss`` — ``faiss.Kmeans`` on CPU (the ``auto`` choice there). Deterministic for a
  seed and a fixed thread count (BLAS blocking depends on the thread count; call
  ``faiss.omp_set_num_threads`` to pin it).

:func:`cluster` adds the rules a pseudo-labeller needs on top of :func:`kmeans`:

0. **Whitening** (optional, ``whiten``): :func:`pca_whiten` (with Ledoit-Wolf
   shrinkage) fitted on the embeddings being clustered, before the L2 normalisation, so
   every direction of the embedding space has an equal say in the cosine.
   Self-supervised speaker embeddings spend much of their variance on a few directions
   that carry channel and session more than speaker (the centred cosine of two
   utterances is then mostly those directions).
1. **Tiny clusters.** Members of clusters smaller than ``min_cluster_size`` are moved to
   the nearest surviving centroid (one pass; survivors only grow, so none falls below
   the minimum). Clusters of single outlier utterances would otherwise become classes
   with one example.
2. **Merging** (optional, ``merge_to``). The surviving centroids are merged by
   agglomerative clustering (average linkage on cosine distance, each centroid one
   observation) down to exactly ``merge_to`` clusters.
3. Labels are renumbered ``0..K'-1`` by decreasing cluster size (ties keep the earlier
   cluster first), centroids are recomputed as their members' (normalised) means and
   each point's cosine to its centroid is reported.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from cdino.atomic import write_lines
from cdino.console import progress_bar
from cdino.testing.faults import fault_point
from cdino.errors import ConfigError, DataError

__all__ = [
    "KMeansConfig",
    "Clustering",
    "kmeans",
    "cluster",
    "cluster_size_stats",
    "ledoit_wolf_shrinkage",
    "pca_whiten",
    "write_utt2cluster",
    "read_utt2cluster",
]


@dataclass
class KMeansConfig:
    """Pseudo-label clustering settings."""

    n_clusters: int = 6000  # k-means cluster count K (6000 is the public VoxCeleb2 choice)
    n_iter: int = 20  # Lloyd iterations
    seed: int = 0  # seed of the initial centroids
    backend: Literal["auto", "faiss", "torch"] = "auto"  # auto: torch on CUDA, faiss on CPU
    min_cluster_size: int = 2  # members of smaller clusters join the nearest surviving centroid
    merge_to: int | None = None  # if set: agglomerative merging of the K centroids to this many
    spherical: bool = True  # L2-normalise embeddings and centroids (cosine k-means)
    max_points_per_centroid: int = 256  # faiss: train on at most K * this many sampled points
    init: Literal["auto", "random", "kmeans++", "ward"] = "auto"  # initial centroids, see kmeans()
    ward_max_points: int = 10_000  # init "ward": Ward's tree on at most this many sampled points
    whiten: bool = False  # PCA-whiten the embeddings (fitted on them) before clustering
    bf16: bool = False  # torch back-end on CUDA: distances in bfloat16 (updates stay fp32)
    verbose: bool = False  # progress per iteration

    def validate(self) -> None:
        if self.n_clusters < 1:
            raise ConfigError(f"n_clusters: must be at least 1, got {self.n_clusters}")
        if self.n_iter < 1:
            raise ConfigError(f"n_iter: must be at least 1, got {self.n_iter}")
        if self.min_cluster_size < 1:
            raise ConfigError(f"min_cluster_size: must be at least 1, got {self.min_cluster_size}")
        if self.merge_to is not None and not 1 <= self.merge_to <= self.n_clusters:
            raise ConfigError(
                f"merge_to: must lie in 1..n_clusters ({self.n_clusters}), got {self.merge_to}")
        if self.max_points_per_centroid < 1:
            raise ConfigError("max_points_per_centroid: must be at least 1")
        if self.init == "ward" and self.ward_max_points < self.n_clusters:
            raise ConfigError(f"ward_max_points: must be at least n_clusters ({self.n_clusters}), "
                              f"got {self.ward_max_points}")


@dataclass
class Clustering:
    """A clustering of N embeddings into ``n_clusters`` pseudo classes."""

    labels: np.ndarray  # (N,) int64 in 0..n_clusters-1, cluster 0 the largest
    centroids: np.ndarray  # (n_clusters, D) float32 (unit norm when spherical)
    sizes: np.ndarray  # (n_clusters,) int64 members per cluster
    n_clusters: int
    similarity: np.ndarray  # (N,) float32 cosine of each embedding to its centroid
    seconds: float  # wall time of the whole clustering
    backend: str = ""  # back-end that ran k-means

    def stats(self) -> dict:
        """Cluster-size summary, see :func:`cluster_size_stats`."""
        return cluster_size_stats(self.labels)


# ------------------------------------------------------------------------ k-means core


def _resolve_backend(backend: str, x, device) -> str:
    if backend not in ("auto", "faiss", "torch"):
        raise ValueError(f"backend must be 'auto', 'faiss' or 'torch'; got {backend!r}")
    on_cuda = (isinstance(x, torch.Tensor) and x.is_cuda) or (
        device is not None and torch.device(device).type == "cuda")
    if backend == "auto":
        if on_cuda:
            return "torch"
        try:
            import faiss  # noqa: F401
        except ImportError:
            return "torch"
        return "faiss"
    return backend


def _normalise_np(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def _chunk_rows(k: int, budget: int = 1 << 24) -> int:
    """Rows per chunk so a (rows, k) similarity block holds about ``budget`` values."""
    return max(256, budget // max(k, 1))


def _assign(x: torch.Tensor, x_mm: torch.Tensor, c: torch.Tensor, spherical: bool,
            labels: torch.Tensor, best: torch.Tensor, chunk: int) -> None:
    """Nearest centroid of every row into ``labels``; its cosine/-distance into ``best``."""
    c_mm = c.to(x_mm.dtype)
    c_sq = None if spherical else (c * c).sum(1)
    for i in range(0, x.shape[0], chunk):
        sim = x_mm[i:i + chunk] @ c_mm.T
        if spherical:
            val, idx = sim.max(1)
        else:  # argmin ||x - c||^2 = argmax (2 x.c - ||c||^2)
            score = 2.0 * sim.float() - c_sq
            val, idx = score.max(1)
        labels[i:i + chunk] = idx
        best[i:i + chunk] = val.float()


def _kmeanspp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ seeding: D^2 sampling of ``2 + ln k`` candidates per centroid,
    keeping the one that lowers the total squared distance most (one host sync each)."""
    n = x.shape[0]
    n_cand = 2 + int(np.log(k))
    sq = (x * x).sum(1)

    def dist2(rows: torch.Tensor) -> torch.Tensor:  # (N, len(rows)) squared distances
        return (sq[:, None] + sq[rows][None, :] - 2.0 * (x @ x[rows].T)).clamp(min=0)

    first = torch.randint(n, (1,), generator=gen).to(x.device)
    idx = [first]
    d2 = dist2(first)[:, 0]
    for _ in range(1, k):
        u = torch.rand(n_cand, generator=gen, dtype=torch.float64).to(x.device)
        cum = torch.cumsum(d2.double(), 0)
        cand = torch.searchsorted(cum, cum[-1] * u).clamp(max=n - 1)
        new_d2 = torch.minimum(d2[:, None], dist2(cand))
        best = new_d2.sum(0).argmin()
        idx.append(cand[best].reshape(1))
        d2 = new_d2[:, best]
    return x[torch.cat(idx)].clone()


# k-means++ seeding costs about k passes over the data: used by init="auto" up to this
# many multiply-adds (k * N * D), random distinct points above it.
KMEANSPP_AUTO_BUDGET = 10**10


def _resolve_init(init: str, n: int, d: int, k: int) -> str:
    if init not in ("auto", "random", "kmeans++", "ward"):
        raise ValueError(f"init must be 'auto', 'random', 'kmeans++' or 'ward'; got {init!r}")
    if init == "auto":
        return "kmeans++" if k * n * d <= KMEANSPP_AUTO_BUDGET else "random"
    return init


def _ward_seeds(x: np.ndarray, k: int, max_points: int, seed: int, spherical: bool) -> np.ndarray:
    """(k, D) initial centroids: the means of the ``k`` groups of Ward's agglomerative tree
    over the rows of ``x`` (a seeded sample of ``max_points`` rows when there are more).

    Ward merges the two groups whose union adds least to the within-group sum of squares,
    bottom-up, so it finds the many small, similar-sized groups of a speaker corpus where
    Lloyd's iterations from sampled seeds settle in poorer optima. The tree costs
    O(M^2) time and M^2 / 2 doubles of memory for M sampled rows (10,000 rows: 400 MB).
    """
    from scipy.cluster.hierarchy import fcluster, linkage

    n = x.shape[0]
    rows = np.arange(n)
    max_points = max(max_points, k)
    if n > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
    sample = np.asarray(x[rows], dtype=np.float64)
    groups = fcluster(linkage(sample, method="ward"), k, criterion="maxclust") - 1
    n_groups = int(groups.max()) + 1
    sums = np.zeros((n_groups, x.shape[1]))
    np.add.at(sums, groups, sample)
    c = sums / np.bincount(groups, minlength=n_groups)[:, None]
    if n_groups < k:  # ties in the tree's heights: fill with the rows farthest from their group
        far = np.argsort(-((sample - c[groups]) ** 2).sum(1))[:k - n_groups]
        c = np.concatenate([c, sample[far]])
    if spherical:
        c = _normalise_np(c)
    return c.astype(np.float32)


def _kmeans_torch(x: torch.Tensor, k: int, n_iter: int, seed: int, spherical: bool,
                  init: str, bf16: bool, verbose: bool, ward_max_points: int = 10_000):
    n = x.shape[0]
    gen = torch.Generator().manual_seed(seed)  # CPU generator: same draws on any device
    chunk = _chunk_rows(k, 1 << 28 if x.is_cuda else 1 << 24)
    if init == "ward":
        c = torch.from_numpy(_ward_seeds(x.cpu().numpy(), k, ward_max_points, seed, spherical)).to(x.device)
    elif init == "kmeans++":
        c = _kmeanspp(x, k, gen)
    else:
        c = x[torch.randperm(n, generator=gen)[:k].to(x.device)].clone()
    use_bf16 = bf16 and x.is_cuda
    x_mm = x.to(torch.bfloat16) if use_bf16 else x
    labels = torch.empty(n, dtype=torch.long, device=x.device)
    best = torch.empty(n, dtype=torch.float32, device=x.device)
    n_worst = min(k, n)
    for _ in progress_bar(range(n_iter), show=verbose, desc=f"k-means {n}x{x.shape[1]} -> {k}", leave=False):
        _assign(x, x_mm, c, spherical, labels, best, chunk)
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k)
        new_c = sums / counts.clamp(min=1).unsqueeze(1).to(sums.dtype)
        # empty clusters: re-seed at the worst-fitting points, i-th empty <- i-th worst
        empty = counts == 0
        worst = torch.topk(best, n_worst, largest=False).indices
        rank = (torch.cumsum(empty.long(), 0) - 1).clamp(min=0, max=n_worst - 1)
        new_c = torch.where(empty.unsqueeze(1), x[worst[rank]], new_c)
        if spherical:
            new_c = torch.nn.functional.normalize(new_c, dim=1)
        c = new_c
    _assign(x, x_mm, c, spherical, labels, best, chunk)
    return labels, c


def _kmeans_faiss(x: np.ndarray, k: int, n_iter: int, seed: int, spherical: bool, init: str,
                  max_points_per_centroid: int, verbose: bool, ward_max_points: int = 10_000):
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], k, niter=n_iter, seed=seed, spherical=spherical,
                      max_points_per_centroid=max_points_per_centroid,
                      min_points_per_centroid=1, verbose=verbose)
    start = None
    if init == "ward":
        start = _ward_seeds(x, k, ward_max_points, seed, spherical)
    elif init == "kmeans++":
        gen = torch.Generator().manual_seed(seed)
        start = _kmeanspp(torch.from_numpy(x), k, gen).numpy()
    km.train(x, init_centroids=start)
    centroids = km.centroids.astype(np.float32, copy=True)
    if spherical:
        index = faiss.IndexFlatIP(x.shape[1])
    else:
        index = faiss.IndexFlatL2(x.shape[1])
    index.add(centroids)
    _, idx = index.search(x, 1)
    return idx[:, 0].astype(np.int64), centroids


def kmeans(x: np.ndarray | torch.Tensor, k: int, n_iter: int = 20, seed: int = 0,
           device: str | torch.device | None = None, backend: str = "auto", *,
           spherical: bool = True, init: str = "auto", bf16: bool = False,
           max_points_per_centroid: int = 256, ward_max_points: int = 10_000,
           verbose: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd k-means of the rows of ``x`` (N, D) into ``k`` clusters.

    Returns ``(labels, centroids)``: int64 (N,) and float32 (k, D). With ``spherical``
    the rows are L2-normalised first and centroids are unit vectors. ``device`` (torch
    back-end) defaults to the tensor's device, else CPU. Initial centroids (drawn with
    ``seed``): ``"random"`` picks ``k`` distinct rows, ``"kmeans++"`` uses D^2 seeding
    (about ``k`` passes over the data; far better on small, well separated data),
    ``"auto"`` uses k-means++ while ``k * N * D <= KMEANSPP_AUTO_BUDGET`` (1e10),
    ``"ward"`` the group means of Ward's agglomerative clustering of at most
    ``ward_max_points`` sampled rows (see :func:`_ward_seeds`; the seed picks the sample).
    """
    n = int(x.shape[0])
    if x.ndim != 2:
        raise ValueError(f"x must be (N, D); got shape {tuple(x.shape)}")
    if not 1 <= k <= n:
        raise ValueError(f"k={k} clusters is not possible for {n} points")
    chosen = _resolve_backend(backend, x, device)
    init = _resolve_init(init, n, int(x.shape[1]), k)
    if chosen == "faiss":
        xn = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        xn = xn.astype(np.float32)
        if spherical:
            xn = _normalise_np(xn)
        return _kmeans_faiss(xn, k, n_iter, seed, spherical, init, max_points_per_centroid,
                             verbose, ward_max_points)
    if device is None:
        device = x.device if isinstance(x, torch.Tensor) else "cpu"
    xt = torch.as_tensor(x).to(device=device, dtype=torch.float32)
    if spherical:
        xt = torch.nn.functional.normalize(xt, dim=1)
    with torch.no_grad():
        labels, c = _kmeans_torch(xt, k, n_iter, seed, spherical, init, bf16, verbose, ward_max_points)
    return labels.cpu().numpy().astype(np.int64), c.float().cpu().numpy()


# ----------------------------------------------------------------- pseudo-label rules


def _nearest(x: np.ndarray, c: np.ndarray, spherical: bool) -> np.ndarray:
    """Index of the nearest row of ``c`` for each row of ``x`` (cosine or L2)."""
    out = np.empty(x.shape[0], dtype=np.int64)
    step = _chunk_rows(c.shape[0], 1 << 22)
    c_sq = (c * c).sum(1)
    for i in range(0, x.shape[0], step):
        sim = x[i:i + step] @ c.T
        out[i:i + step] = sim.argmax(1) if spherical else (2 * sim - c_sq).argmax(1)
    return out


def _drop_tiny(x: np.ndarray, labels: np.ndarray, centroids: np.ndarray, min_size: int,
               spherical: bool) -> np.ndarray:
    """Labels with members of clusters below ``min_size`` moved to the nearest survivor."""
    sizes = np.bincount(labels, minlength=centroids.shape[0])
    keep = np.flatnonzero(sizes >= min_size)
    if keep.size == 0:
        raise ConfigError(
            f"min_cluster_size={min_size}: no cluster has that many members "
            f"(largest {int(sizes.max())})")
    moved = sizes[labels] < min_size
    if moved.any():
        labels = labels.copy()
        labels[moved] = keep[_nearest(x[moved], centroids[keep], spherical)]
    return labels


def _merge_centroids(centroids: np.ndarray, n_out: int) -> np.ndarray:
    """Group (0..n_out-1) of each centroid after average-linkage cosine agglomeration.

    The first ``n - n_out`` merges of the dendrogram are applied, so exactly ``n_out``
    groups remain even when merge heights tie.
    """
    from scipy.cluster.hierarchy import linkage

    n = centroids.shape[0]
    if n <= n_out:
        return np.arange(n)
    tree = linkage(centroids.astype(np.float64), method="average", metric="cosine")
    parent = np.arange(2 * n - 1)
    for i in range(n - n_out):
        a, b = int(tree[i, 0]), int(tree[i, 1])
        parent[a] = parent[b] = n + i
    root = parent[:n].copy()
    while True:  # pointer jumping to each leaf's top-most merged node
        nxt = parent[root]
        if np.array_equal(nxt, root):
            break
        root = nxt
    return np.unique(root, return_inverse=True)[1].reshape(-1).astype(np.int64)


def ledoit_wolf_shrinkage(x: np.ndarray) -> float:
    """Ledoit & Wolf's (2004) estimate of the weight ``a`` in ``(1 - a) S + a (tr S / D) I``
    that brings the sample covariance ``S`` of the centred rows ``x`` (N, D) closest to the
    true one (in expected squared Frobenius error). Near 0 for N >> D, larger for few rows.
    (Hand-written: a dozen lines, and scikit-learn is no dependency of cdino.)"""
    n, d = x.shape
    cov = x.T @ x / n
    mu = float(np.trace(cov)) / d
    spread = float(((cov - mu * np.eye(d)) ** 2).sum())  # ||S - mu I||^2
    if spread <= 0.0:
        return 0.0
    sq = (x * x).sum(1)
    # sum over rows of ||x x^T - S||^2, without forming the (D, D) outer products
    noise = float((sq ** 2).sum() - 2.0 * np.einsum("ij,jk,ik->", x, cov, x) + n * (cov ** 2).sum())
    return min(noise / n ** 2, spread) / spread


def pca_whiten(emb: np.ndarray, shrinkage: float | None = None, eps: float = 1e-6) -> np.ndarray:
    """``emb`` (N, D) centred and rotated onto the principal axes of its covariance, each
    axis scaled to unit variance (float32).

    The covariance is shrunk toward a scaled identity by ``shrinkage`` (``None``: the
    Ledoit-Wolf estimate, :func:`ledoit_wolf_shrinkage`): with few rows per dimension
    the smallest sample variances are underestimates, and whitening would blow their
    noise up to the size of the real directions (with N <= D every row ends equidistant
    from every other). ``eps`` times the largest variance is a floor for exact zeros.
    """
    x = np.asarray(emb, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"whitening needs at least 2 embeddings (N, D); got shape {x.shape}")
    x = x - x.mean(0)
    a = ledoit_wolf_shrinkage(x) if shrinkage is None else float(shrinkage)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"shrinkage must lie in [0, 1]; got {shrinkage}")
    cov = x.T @ x / x.shape[0]
    cov = (1.0 - a) * cov + a * float(np.trace(cov)) / x.shape[1] * np.eye(x.shape[1])
    var, axes = np.linalg.eigh(cov)
    var = np.maximum(var, 0.0)
    scale = 1.0 / np.sqrt(var + eps * max(float(var.max()), 1e-30))
    return ((x @ axes) * scale).astype(np.float32)


def _finalise(x: np.ndarray, labels: np.ndarray, spherical: bool,
              device: str | torch.device | None = None):
    """Renumber by decreasing size; recompute centroids; cosine of each point to its own."""
    labels = np.unique(labels, return_inverse=True)[1].reshape(-1)
    sizes = np.bincount(labels)
    order = np.argsort(-sizes, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    labels = rank[labels].astype(np.int64)
    sizes = sizes[order].astype(np.int64)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    xt = torch.from_numpy(x).to(dev)
    lt = torch.from_numpy(labels).to(dev)
    sums = torch.zeros(sizes.size, x.shape[1], dtype=torch.float64, device=dev)
    sums.index_add_(0, lt, xt.double())
    means = (sums / torch.from_numpy(sizes).to(dev).unsqueeze(1)).float()
    unit = torch.nn.functional.normalize(means, dim=1)
    similarity = (torch.nn.functional.normalize(xt, dim=1) * unit[lt]).sum(1)
    centroids = unit if spherical else means
    return labels, centroids.cpu().numpy(), sizes, similarity.cpu().numpy()


def cluster(emb: np.ndarray, cfg: KMeansConfig,
            device: str | torch.device | None = None) -> Clustering:
    """Pseudo labels of embeddings ``emb`` (N, D): optional whitening, k-means, tiny-cluster
    rule, optional merge. With ``whiten`` the reported similarities and centroids are in the
    whitened space.

    ``device="cuda"`` runs k-means with the torch back-end on the GPU (``backend="auto"``);
    the rules after it run on the host. With ``merge_to`` larger than the clusters left
    by the tiny-cluster rule, no merging happens.
    """
    t0 = time.perf_counter()
    x = np.asarray(emb, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"embeddings must be a non-empty (N, D) array; got shape {x.shape}")
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x).all(1))[0])
        raise ValueError(f"embeddings hold non-finite values (first at row {bad})")
    if cfg.n_clusters > x.shape[0]:
        raise ConfigError(
            f"n_clusters={cfg.n_clusters} is more than the {x.shape[0]} embeddings to cluster")
    backend = _resolve_backend(cfg.backend, x, device)
    if cfg.whiten:
        x = pca_whiten(x)
    if cfg.spherical:
        x = _normalise_np(x)
    labels, centroids = kmeans(
        x, cfg.n_clusters, cfg.n_iter, cfg.seed, device=device, backend=backend,
        spherical=cfg.spherical, init=cfg.init, bf16=cfg.bf16,
        max_points_per_centroid=cfg.max_points_per_centroid, ward_max_points=cfg.ward_max_points,
        verbose=cfg.verbose)
    labels = _drop_tiny(x, labels, centroids, cfg.min_cluster_size, cfg.spherical)
    if cfg.merge_to is not None:
        used, labels = np.unique(labels, return_inverse=True)
        groups = _merge_centroids(centroids[used], cfg.merge_to)
        labels = groups[labels.reshape(-1)]
    labels, centroids, sizes, similarity = _finalise(x, labels.reshape(-1), cfg.spherical,
                                                     device)
    fault_point("clustering")
    return Clustering(labels=labels, centroids=centroids, sizes=sizes, n_clusters=int(sizes.size),
                      similarity=similarity, seconds=time.perf_counter() - t0, backend=backend)


def cluster_size_stats(labels: np.ndarray) -> dict:
    """``n_clusters``, ``min_size``, ``median_size``, ``max_size``, ``singletons`` of a labeling."""
    labels = np.asarray(labels).reshape(-1)
    if labels.size == 0:
        raise ValueError("no labels")
    _, sizes = np.unique(labels, return_counts=True)
    return {
        "n_clusters": int(sizes.size),
        "min_size": int(sizes.min()),
        "median_size": float(np.median(sizes)),
        "max_size": int(sizes.max()),
        "singletons": int((sizes == 1).sum()),
    }


# ---------------------------------------------------------------------- utt2cluster


def write_utt2cluster(path: str | os.PathLike, utts: list[str], labels: np.ndarray) -> None:
    """Write ``utt cluster`` lines (atomically)."""
    labels = np.asarray(labels).reshape(-1)
    if len(utts) != labels.size:
        raise ValueError(f"{len(utts)} utterances but {labels.size} labels")
    write_lines(path, (f"{utt} {int(lab)}" for utt, lab in zip(utts, labels.tolist())))


def read_utt2cluster(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Read ``utt cluster`` lines: ``(utts, labels int64)`` in file order."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read utt2cluster ({exc.strerror or exc})") from None
    utts, labels, seen = [], [], set()
    for i, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise DataError(f"{path}:{i}: expected 'utt cluster', got {line.strip()!r}")
        try:
            lab = int(parts[1])
        except ValueError:
            raise DataError(f"{path}:{i}: cluster {parts[1]!r} is not an integer") from None
        if lab < 0:
            raise DataError(f"{path}:{i}: negative cluster {lab}")
        if parts[0] in seen:
            raise DataError(f"{path}:{i}: duplicate utterance {parts[0]!r}")
        seen.add(parts[0])
        utts.append(parts[0])
        labels.append(lab)
    if not utts:
        raise DataError(f"{path}: no entries")
    return utts, np.asarray(labels, dtype=np.int64)
