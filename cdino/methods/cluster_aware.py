"""Cluster-aware DINO (C-DINO): positive crops drawn across utterances of one cluster.

Plain DINO cuts all crops of a training example from one utterance, so its positives
share content and channel. C-DINO clusters the teacher's embeddings of the training set
with k-means and cuts some crops from *cluster mates* of the anchor utterance: the
positives then differ in channel and content while (mostly) sharing the speaker.

The only change to the input pipeline is the dataset's *positive sampler*
(:data:`cdino.data.loader.PositiveSampler`); everything else is DINO. Configurable:
which crops are drawn from mates, the cluster count (fixed or a progressive schedule),
the re-cluster interval, and a confidence filter (only members close to their centroid
lend or borrow crops). NMI / purity against true labels are logged when the data has
them — as a diagnostic only; nothing reads them to decide anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from cdino.console import progress_enabled
from cdino.methods.dino import DinoMethod
from cdino.eval.embed import embed_training_store, inference_copy
from cdino.metrics import nmi, purity
from cdino.pseudo.kmeans import KMeansConfig, cluster


@dataclass
class ClusterAwareConfig:
    """Which crops come from cluster mates, and how the clusters are made."""

    start_epoch: int = 0  # plain DINO epochs of this run before cluster-aware sampling begins
    n_clusters: int = 6000  # fixed cluster count (ignored when `progressive` is set)
    progressive: list[int] = field(default_factory=list)  # cluster count per re-clustering, e.g. [4000, 6000, 8000]; the last repeats
    recluster_every: int = 5  # epochs between re-clusterings (0: cluster once)
    cross: Literal["locals", "globals", "second_global", "all"] = "locals"  # crops cut from cluster mates
    keep_fraction: float = 0.8  # confidence filter: in each cluster, the members closest to the centroid that lend/borrow crops
    embed_seconds: float = 6.0  # longest central part of an utterance embedded for clustering
    kmeans_iter: int = 20  # k-means iterations
    kmeans_init: Literal["auto", "random", "kmeans++", "ward"] = "auto"  # k-means seeding (cdino.pseudo.kmeans)
    whiten: bool = False  # PCA-whiten the embeddings before clustering (cdino.pseudo.kmeans)


class ClusterPositiveSampler:
    """Maps (anchor, crop slot) to the utterance the crop is cut from."""

    def __init__(self, labels: np.ndarray, confident: np.ndarray, n_global: int, n_local: int,
                 cross: str) -> None:
        self.labels = np.asarray(labels)
        self.confident = np.asarray(confident, dtype=bool)
        order = np.argsort(self.labels, kind="stable")
        eligible = order[self.confident[order]]
        self.members: dict[int, np.ndarray] = {}
        if len(eligible):
            bounds = np.flatnonzero(np.diff(self.labels[eligible])) + 1
            for group in np.split(eligible, bounds):
                self.members[int(self.labels[group[0]])] = group
        slots = {"locals": range(n_global, n_global + n_local), "globals": range(n_global),
                 "second_global": range(1, n_global), "all": range(n_global + n_local)}[cross]
        self.cross_slots = frozenset(slots)

    def __call__(self, anchor: int, slot: int, rng: np.random.Generator) -> int:
        if slot not in self.cross_slots or not self.confident[anchor]:
            return anchor
        mates = self.members.get(int(self.labels[anchor]))
        if mates is None or len(mates) < 2:
            return anchor
        pick = int(mates[rng.integers(len(mates))])
        while pick == anchor:
            pick = int(mates[rng.integers(len(mates))])
        return pick


def confident_members(labels: np.ndarray, similarity: np.ndarray, keep_fraction: float) -> np.ndarray:
    """True for the ``keep_fraction`` of each cluster's members closest to its centroid."""
    keep = np.zeros(len(labels), dtype=bool)
    if keep_fraction >= 1.0:
        keep[:] = True
        return keep
    order = np.lexsort((-similarity, labels))
    sorted_labels = labels[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_labels)) + 1]
    sizes = np.diff(np.r_[starts, len(labels)])
    rank_in_cluster = np.arange(len(labels)) - np.repeat(starts, sizes)
    n_keep = np.maximum(1, np.ceil(sizes * keep_fraction)).astype(int)
    keep[order] = rank_in_cluster < np.repeat(n_keep, sizes)
    return keep


class ClusterAwareDinoMethod(DinoMethod):
    """DINO whose positives come from k-means clusters of the teacher's embeddings."""

    name = "cdino"

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.cc: ClusterAwareConfig = ctx.cfg.cluster_aware
        self.cluster_epoch = -1
        self.labels: np.ndarray | None = None
        self.confident: np.ndarray | None = None
        self.n_reclusters = 0
        self.cluster_log: list[dict] = []
        true = ctx.data.speaker_labels(ctx.store.utts)[0] if ctx.data.utt2spk else None
        self.true_labels = true

    def _n_clusters(self) -> int:
        if self.cc.progressive:
            return self.cc.progressive[min(self.n_reclusters, len(self.cc.progressive) - 1)]
        return self.cc.n_clusters

    def on_epoch_start(self, epoch: int) -> None:
        if epoch < self.cc.start_epoch:
            return
        due = self.labels is None or (
            self.cc.recluster_every > 0 and (epoch - self.cc.start_epoch) % self.cc.recluster_every == 0)
        if due and self.cluster_epoch != epoch:
            self._recluster(epoch)
        if self.labels is not None:
            self._dataset.positive = ClusterPositiveSampler(
                self.labels, self.confident, self.dc.n_global, self.dc.n_local, self.cc.cross)

    def _recluster(self, epoch: int) -> None:
        ctx = self.ctx
        emb = embed_training_store(inference_copy(self.teacher.encoder, ctx.device), ctx.frontend.fbank,
                                   ctx.store, ctx.device,
                                   self.cc.embed_seconds, progress_enabled(ctx.cfg.trainer.progress),
                                   desc=f"embedding for clustering (epoch {epoch + 1})",
                                   num_workers=ctx.cfg.data.num_workers)
        k = min(self._n_clusters(), max(2, len(emb) // 2))
        packed = torch.zeros(2, len(emb), dtype=torch.int64, device=ctx.device)
        n_clusters = torch.zeros((), dtype=torch.int64, device=ctx.device)
        if ctx.rank == 0:  # one clustering, shared by every rank
            result = cluster(emb, KMeansConfig(n_clusters=k, n_iter=self.cc.kmeans_iter,
                                               seed=ctx.cfg.trainer.seed + epoch,
                                               init=self.cc.kmeans_init, whiten=self.cc.whiten),
                             device=ctx.device)
            labels = np.asarray(result.labels)
            confident = confident_members(labels, np.asarray(result.similarity), self.cc.keep_fraction)
            packed[0] = torch.from_numpy(labels.astype(np.int64)).to(ctx.device)
            packed[1] = torch.from_numpy(confident.astype(np.int64)).to(ctx.device)
            n_clusters.fill_(int(result.n_clusters))
        if ctx.world_size > 1:
            torch.distributed.broadcast(packed, src=0)
            torch.distributed.broadcast(n_clusters, src=0)
        self.labels = packed[0].cpu().numpy()
        self.confident = packed[1].cpu().numpy().astype(bool)
        self.cluster_epoch = epoch
        self.n_reclusters += 1
        entry = {"epoch": epoch, "n_clusters": int(n_clusters.item()),
                 "confident": float(self.confident.mean())}
        if self.true_labels is not None:  # diagnostic only
            entry["nmi"] = float(nmi(self.true_labels, self.labels))
            entry["purity"] = float(purity(self.true_labels, self.labels))
        self.cluster_log.append(entry)
        if ctx.log:
            ctx.log("clustering " + " ".join(f"{k}={v}" for k, v in entry.items()))

    def on_epoch_end(self, epoch: int) -> dict:
        if self.cluster_log and self.cluster_log[-1]["epoch"] == epoch:
            return {"clustering": self.cluster_log[-1]}
        return {}

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.labels is not None:
            state["cluster_labels"] = torch.from_numpy(self.labels.astype(np.int64))
            state["cluster_confident"] = torch.from_numpy(self.confident)
            state["cluster_epoch"] = self.cluster_epoch
            state["n_reclusters"] = self.n_reclusters
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "cluster_labels" in state and hasattr(self, "cc"):
            self.labels = state["cluster_labels"].numpy()
            self.confident = state["cluster_confident"].numpy().astype(bool)
            self.cluster_epoch = int(state["cluster_epoch"])
            self.n_reclusters = int(state["n_reclusters"])
