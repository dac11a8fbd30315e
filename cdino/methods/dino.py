"""DINO for speakers: self-distillation with no labels and no negative pairs.

A student (encoder + projection head) and a teacher (an EMA of the student) see
different crops of the same utterance: ``n_global`` long crops go to both, ``n_local``
short crops to the student only. The loss is the cross-entropy between the teacher's
centred, sharpened softmax on each global crop and the student's softmax on every other
crop (same-crop pairs skipped: 2 × 6 − 2 = 10 terms by default). Centering
(``c ← m c + (1 − m) mean(teacher outputs)``, averaged over ranks) and sharpening keep
the teacher from collapsing; the collapse watch below stops a run that collapses anyway.
Optionally RDINO's two regularisers (Chen et al., ICASSP 2023) act on the student's
embeddings: ``diversity_weight`` keeps each dimension spread over the batch and
``decorrelation_weight`` keeps dimensions from repeating each other — DINO's speaker
embeddings otherwise squeeze into a few directions (dimensional collapse).
Defaults follow the design brief (`DESIGN.md`, "Stage 1").
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cdino.data.audio import SAMPLE_RATE
from cdino.data.loader import MultiCropDataset
from cdino.errors import TrainingError
from cdino.methods.base import Method, MethodContext
from cdino.models.dino_head import DinoHead
from cdino.models.registry import build_encoder
from cdino.distributed import all_reduce_mean
from cdino.methods.schedules import cosine, linear_warmup


@dataclass
class DinoConfig:
    """DINO's crops, head, temperatures, centering and teacher EMA."""

    n_global: int = 2  # long crops per utterance (seen by teacher and student)
    global_seconds: float = 3.0  # length of a global crop (300 frames)
    n_local: int = 4  # short crops per utterance (student only)
    local_seconds: float = 2.0  # length of a local crop (200 frames)
    global_placement: Literal["random", "stratified"] = "random"  # where an utterance's global crops start: anywhere, or crop k in the k-th of n_global equal parts of the possible starts (less content shared between the views)
    out_dim: int = 65536  # prototypes K of the head's last layer
    hidden_dim: int = 2048  # head MLP width
    bottleneck_dim: int = 256  # head bottleneck before the prototypes
    student_temp: float = 0.1  # τ_s
    teacher_temp: float = 0.04  # τ_t at the start
    teacher_temp_final: float = 0.07  # τ_t after the warm-up
    teacher_temp_warmup: float = 0.2  # fraction of the run over which τ_t rises linearly
    center_momentum: float = 0.9  # m of the centre update
    ema_start: float = 0.996  # teacher momentum at step 0 (cosine to ema_end)
    ema_end: float = 1.0  # teacher momentum at the last step
    freeze_last_layer_epochs: int = 1  # the prototype layer gets no updates in these first epochs
    augment: bool = True  # augment every crop (reverb / noise) on the device
    teacher_views: Literal["augmented", "clean"] = "augmented"  # what the teacher sees of the global crops: the student's augmented crops, or the same crops before augmentation (clean targets for the student's augmented views)
    diversity_weight: float = 0.0  # RDINO's diversity term: weight of mean(relu(1 - std)) of the student's embeddings over the batch (0: plain DINO)
    decorrelation_weight: float = 0.0  # RDINO's redundancy-elimination term: weight of the squared off-diagonal covariance of those embeddings, summed, / dim
    collapse_mi: float = 1e-3  # collapse when I(input; prototype) of the teacher stays below this (nats) ...
    collapse_patience: int = 5  # ... for this many log windows in a row after the first epoch
    init: str | None = None  # start from a model folder (encoder only) or a DINO experiment folder (full state)


def dino_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, center: torch.Tensor,
              student_temp: float, teacher_temp: float) -> torch.Tensor:
    """Mean over crop pairs of H(teacher_i, student_j), skipping i == j.

    ``student_out``: (S, B, K) logits of S crops (the first G are the global crops);
    ``teacher_out``: (G, B, K) logits of the G global crops.
    """
    s = F.log_softmax(student_out.float() / student_temp, dim=-1)
    t = F.softmax((teacher_out.float() - center) / teacher_temp, dim=-1)
    total, terms = student_out.new_zeros((), dtype=torch.float32), 0
    for i in range(t.shape[0]):
        for j in range(s.shape[0]):
            if i == j:
                continue
            total = total + torch.sum(-t[i] * s[j], dim=-1).mean()
            terms += 1
    return total / terms


def embedding_regularisers(emb: torch.Tensor, eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """RDINO's two terms (Chen et al., ICASSP 2023) on a batch of embeddings ``(B, D)``
    (the student's, averaged over the global crops of each utterance): diversity
    ``mean_d relu(1 - sqrt(var_d + eps))`` keeps every dimension spread over the batch,
    decorrelation ``sum_{d != e} cov_de^2 / D`` keeps dimensions from repeating each other.
    Statistics are over the micro-batch a step sees (as BatchNorm's), so one process and
    N ranks with the same micro-batch compute the same terms."""
    x = emb.float()
    x = x - x.mean(dim=0)
    n, dim = x.shape
    diversity = F.relu(1.0 - torch.sqrt(x.var(dim=0) + eps)).mean()
    cov = (x.T @ x) / max(n - 1, 1)
    off = cov - torch.diag_embed(torch.diagonal(cov))
    return diversity, off.square().sum() / dim


class MultiCropModel(nn.Module):
    """Encoder + DINO head applied to a batch of global and local crops in one call."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, global_feats: torch.Tensor, local_feats: torch.Tensor | None = None,
                with_embeddings: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, G, T, F) [+ (B, L, T', F)] → logits (G [+ L], B, K), crops in order; with
        ``with_embeddings`` also the encoder's embeddings of the global crops (G, B, D)."""
        outs, embeddings = [], []
        for feats in (global_feats, local_feats):
            if feats is None or feats.shape[1] == 0:
                continue
            b, n = feats.shape[:2]
            flat = feats.transpose(0, 1).reshape(n * b, *feats.shape[2:])
            emb = self.encoder(flat)
            embeddings.append(emb.reshape(n, b, -1))
            outs.append(self.head(emb).reshape(n, b, -1))
        logits = torch.cat(outs, dim=0)
        return (logits, embeddings[0]) if with_embeddings else logits


class DinoMethod(Method):
    """Plain DINO; :class:`cdino.methods.cluster_aware.ClusterAwareDinoMethod` extends it."""

    name = "dino"

    def __init__(self, init: dict | None = None) -> None:
        # What to start from (``cdino.train.stages.dino_init`` reads it from ``dino.init``):
        # ``{"encoder": state}`` (a model folder's encoder weights) or ``{"run": checkpoint}``
        # (a DINO run's latest checkpoint: student, teacher and centre).
        self.init = init

    def setup(self, ctx: MethodContext) -> None:
        super().setup(ctx)
        cfg = ctx.cfg
        self.dc: DinoConfig = cfg.dino
        encoder = build_encoder(cfg.encoder)
        head = DinoHead(encoder.embed_dim, self.dc.out_dim, self.dc.hidden_dim, self.dc.bottleneck_dim)
        self.student = MultiCropModel(encoder, head)
        self.teacher = copy.deepcopy(self.student)
        self.center = torch.zeros(1, self.dc.out_dim)
        self.low_mi_windows = 0
        if self.dc.init and self.init is None:
            raise TrainingError(f"dino.init {self.dc.init}: not read (DinoMethod(init=dino_init(path)) "
                                "in cdino.train.stages reads it)")
        if self.init is not None and "run" in self.init:
            self.student.load_state_dict(self.init["run"]["student"])
            self.load_state_dict(self.init["run"]["method"])
            if ctx.log:
                ctx.log(f"student, teacher and centre initialised from {self.dc.init}")
        else:
            if self.init is not None:
                self.student.encoder.load_state_dict(self.init["encoder"])
                if ctx.log:
                    ctx.log(f"encoder initialised from model folder {self.dc.init}")
            self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.to(ctx.device)
        self.center = self.center.to(ctx.device)
        self._center_sum = torch.zeros_like(self.center)
        self._center_parts = 0
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.total_steps = None

    def dataset(self):
        self._dataset = MultiCropDataset(
            self.ctx.store, self.dc.n_global, int(self.dc.global_seconds * SAMPLE_RATE),
            self.dc.n_local, int(self.dc.local_seconds * SAMPLE_RATE), seed=self.ctx.cfg.trainer.seed,
            stratified=self.dc.global_placement == "stratified")
        return self._dataset

    def _progress(self, step: int) -> float:
        return step / max(1, self.steps_per_epoch_value * self.ctx.cfg.trainer.epochs)

    def teacher_temp(self, step: int) -> float:
        p = self._progress(step)
        return linear_warmup(int(p * 1e6), int(self.dc.teacher_temp_warmup * 1e6),
                             self.dc.teacher_temp, self.dc.teacher_temp_final)

    def ema_momentum(self, step: int) -> float:
        return cosine(int(self._progress(step) * 1e6), int(1e6), self.dc.ema_start, self.dc.ema_end)

    def training_step(self, student, batch, step, epoch, generator):
        fe = self.ctx.frontend
        g = fe(batch["global"], augment=self.dc.augment, generator=generator)
        loc = fe(batch["local"], augment=self.dc.augment, generator=generator) if batch["local"].shape[1] else None
        regularise = self.dc.diversity_weight > 0 or self.dc.decorrelation_weight > 0
        if regularise:
            s_out, s_emb = student(g, loc, with_embeddings=True)
        else:
            s_out = student(g, loc)
        with torch.no_grad():
            t_in = g if self.dc.teacher_views == "augmented" else fe(batch["global"], augment=False)
            t_out = self.teacher(t_in).float()
        tt = self.teacher_temp(step)
        loss = dino_loss(s_out, t_out, self.center, self.dc.student_temp, tt)
        extra = {}
        if regularise:
            diversity, decorrelation = embedding_regularisers(s_emb.float().mean(dim=0))
            loss = loss + self.dc.diversity_weight * diversity + self.dc.decorrelation_weight * decorrelation
            extra = {"diversity": diversity.detach(), "decorrelation": decorrelation.detach()}
        with torch.no_grad():
            stats = self._stats(s_out.float(), t_out, tt)
            stats.update(extra)
            # The centre moves once per optimiser step, with the mean teacher output of the
            # whole global batch (all micro-batches, all ranks): independent of the GPU count.
            self._center_sum += t_out.mean(dim=(0, 1)).unsqueeze(0)
            self._center_parts += 1
        stats["loss"] = loss.detach()
        return loss, stats

    def _stats(self, s_out: torch.Tensor, t_out: torch.Tensor, tt: float) -> dict:
        """Teacher/student entropies, their KL, and the teacher's input–prototype information."""
        pt = F.softmax((t_out - self.center) / tt, dim=-1)
        log_ps = F.log_softmax(s_out[: t_out.shape[0]] / self.dc.student_temp, dim=-1)
        ps = log_ps.exp()
        h_t = -(pt * torch.log(pt.clamp_min(1e-12))).sum(-1).mean()
        h_s = -(ps * log_ps).sum(-1).mean()
        kl = (pt * (torch.log(pt.clamp_min(1e-12)) - log_ps)).sum(-1).mean()
        mean_pt = pt.reshape(-1, pt.shape[-1]).mean(0)
        h_mean = -(mean_pt * torch.log(mean_pt.clamp_min(1e-12))).sum()
        return {"teacher_entropy": h_t, "student_entropy": h_s, "kl": kl, "teacher_mi": h_mean - h_t}

    def check_health(self, stats, step, epoch):
        if epoch < 1 or "teacher_mi" not in stats:
            return
        if stats["teacher_mi"] < self.dc.collapse_mi:
            self.low_mi_windows += 1
        else:
            self.low_mi_windows = 0
        if self.low_mi_windows >= self.dc.collapse_patience:
            raise TrainingError(
                f"DINO collapsed at step {step}: the teacher maps all inputs alike "
                f"(I(input; prototype) = {stats['teacher_mi']:.2e} nats for {self.low_mi_windows} "
                f"log windows; entropy {stats['teacher_entropy']:.3f}). Lower the teacher "
                "temperature, raise centering momentum or the learning-rate warm-up.")

    def before_optimizer_step(self, step, epoch):
        if epoch < self.dc.freeze_last_layer_epochs:
            for p in self.student.head.last_layer.parameters() if isinstance(
                    self.student.head.last_layer, nn.Module) else [self.student.head.last_layer]:
                p.grad = None

    @torch.no_grad()
    def update_center(self) -> None:
        """c ← m·c + (1 − m)·mean(teacher outputs of the global batch)."""
        if self._center_parts == 0:
            return
        batch_center = all_reduce_mean(self._center_sum / self._center_parts)
        self.center.mul_(self.dc.center_momentum).add_(batch_center, alpha=1 - self.dc.center_momentum)
        self._center_sum.zero_()
        self._center_parts = 0

    @torch.no_grad()
    def after_optimizer_step(self, step, epoch):
        self.update_center()
        m = self.ema_momentum(step + 1)
        t_params = list(self.teacher.parameters())
        s_params = list(self.student.parameters())
        torch._foreach_mul_(t_params, m)
        torch._foreach_add_(t_params, [p.detach() for p in s_params], alpha=1 - m)

    def state_dict(self) -> dict:
        return {"teacher": self.teacher.state_dict(), "center": self.center.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.center = state["center"].to(self.ctx.device if hasattr(self, "ctx") else "cpu").clone()

    def export_encoder(self) -> nn.Module:
        return self.teacher.encoder
