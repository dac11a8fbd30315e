"""Stage 2: AAM-softmax training on k-means pseudo labels with DLG-LC.

Each step, for a batch of 2–3 s segments with pseudo labels ``y``:

1. the student embeds the augmented segments; cosines to the class centres give
   per-sample AAM losses w.r.t. ``y`` — these are remembered for the next epoch's gate;
2. **dynamic loss-gate** (:mod:`cdino.pseudo.loss_gate`): a sample is *reliable* when its
   loss is under the threshold fitted (2-component GMM on last epoch's log losses) at the
   start of this epoch;
3. **label correction** (:mod:`cdino.pseudo.label_correction`): an unreliable sample whose
   sharpened prediction on its *clean* (un-augmented) segment is confident enough is
   trained on the predicted label instead of being dropped;
4. the loss is averaged over reliable and corrected samples.

With a second modality (``pseudo.modality = audio_visual``), a light classifier on the
visual embeddings trains on the same labels; gating uses the rule of
:mod:`cdino.pseudo.fusion` (both / either / fused) and corrections use the joint
prediction. Only the audio encoder is exported. The supervised reference is the same
method fed true labels with the gate and the correction off.

True labels, when the data has them, feed diagnostics only (how often the gate flags a
wrong label, how often a correction is right); nothing reads them to decide anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cdino.data.audio import SAMPLE_RATE
from cdino.data.loader import SegmentDataset
from cdino.errors import TrainingError
from cdino.methods.base import Method, MethodContext
from cdino.models.aam_softmax import AAMSoftmax, aam_logits
from cdino.models.registry import build_encoder
from cdino.pseudo.fusion import FusionConfig, joint_loss, joint_prediction, multimodal_reliable
from cdino.pseudo.kmeans import KMeansConfig
from cdino.pseudo.label_correction import (DistributionAlignment, LabelCorrectionConfig, cap_moves_in_order,
                                          correct_from_probs)
from cdino.pseudo.loss_gate import LossGate, LossGateConfig, plot_loss_gate
from cdino.distributed import all_gather_stack, all_reduce_sum
from cdino.methods.schedules import linear_warmup


@dataclass
class PseudoLabelConfig:
    """Pseudo-label rounds, AAM-softmax, DLG-LC and the optional second modality."""

    rounds: int = 5  # extract → cluster → train rounds (with stop: criterion, the most)
    stop: Literal["never", "criterion"] = "never"  # criterion: after each round from the 2nd, stop when the label-free criterion (cdino.eval.selection) finds it no better than the best earlier round, which is then the one kept
    restart_from_init: bool = False  # each round restarts from the stage-1 model (else continues from the last round)
    kmeans: KMeansConfig = field(default_factory=KMeansConfig)  # clustering into pseudo labels
    embed_seconds: float = 20.0  # longest central part embedded for clustering
    margin: float = 0.2  # AAM margin
    scale: float = 32.0  # AAM scale
    margin_warmup_epochs: float = 1.0  # margin rises linearly from 0 over these epochs of each round
    min_seconds: float = 2.0  # training segment length range (drawn per step)
    max_seconds: float = 3.0
    augment: bool = True  # augment training segments on the device
    gate: LossGateConfig = field(default_factory=LossGateConfig)  # loss gate: off | fixed | dynamic
    correction: LabelCorrectionConfig = field(default_factory=LabelCorrectionConfig)  # label correction
    modality: Literal["audio", "audio_visual"] = "audio"  # audio_visual: second view in clustering, gating, correction
    visual: str | None = None  # data folder holding visual.npy + visual_utts.txt (None: the training data folder)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    visual_hidden: int = 256  # width of the visual classifier's MLP
    labelled: str | None = None  # a labelled data folder (utt2spk) joining every round with its true labels: its speakers are classes beside the clusters, never gated or corrected (joint training, e.g. with the labelled source domain in adaptation); audio only
    target_batchnorm: bool = True  # with labelled: before each round's export, the BatchNorm statistics are re-estimated on the unlabelled recordings alone (the domain the rounds learn; the training batches mixed both domains). Telephone dev EER of the adaptation's joint round 7.20 / 5.93 / 5.48 % without, 6.15 / 4.95 / 4.53 % with (bench/results/adapt/dev_batchnorm/)
    refine_visual: bool = True  # the visual view learns across rounds: round r+1 clusters on round r's visual-MLP embeddings and continues that MLP (False: every round starts from the precomputed rows)
    plots: bool = True  # loss-gate histogram PNG per epoch
    large_margin_epochs: int = 0  # optional large-margin fine-tuning epochs after the last round
    large_margin: float = 0.5  # margin of that fine-tuning
    large_margin_seconds: float = 4.0  # segment length of that fine-tuning


class VisualClassifier(nn.Module):
    """A light MLP + AAM classifier on precomputed visual embeddings."""

    def __init__(self, in_dim: int, hidden: int, n_classes: int, scale: float) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden))
        self.aam = AAMSoftmax(hidden, n_classes, scale=scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aam.cosine(self.mlp(x))


class AAMModel(nn.Module):
    """Speaker encoder + AAM class centres (+ the visual classifier): returns cosines."""

    def __init__(self, encoder: nn.Module, n_classes: int, scale: float,
                 visual: VisualClassifier | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.aam = AAMSoftmax(encoder.embed_dim, n_classes, scale=scale)
        self.visual = visual

    def forward(self, feats: torch.Tensor, visual: torch.Tensor | None = None):
        cos_a = self.aam.cosine(self.encoder(feats))
        cos_v = self.visual(visual) if self.visual is not None and visual is not None else None
        return cos_a, cos_v


class PseudoLabelMethod(Method):
    """AAM-softmax on (pseudo) labels with the loss gate and label correction."""

    name = "pseudo"

    def __init__(self, labels: np.ndarray, init_encoder: dict | None = None,
                 visual: np.ndarray | None = None, has_visual: np.ndarray | None = None,
                 true_labels: np.ndarray | None = None, round_index: int = 1,
                 plot_dir: Path | None = None, name: str | None = None,
                 margin: float | None = None, segment_seconds: float | None = None,
                 class_centres: np.ndarray | None = None, init_visual: dict | None = None,
                 trusted: np.ndarray | None = None) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        # Samples whose labels are true labels (a labelled folder joining the rounds): never
        # gated, corrected or counted in the gate's diagnostics; an epoch has the steps of
        # the other (pseudo-labelled) samples alone.
        self.trusted_np = None if trusted is None or not np.any(trusted) else np.asarray(trusted, dtype=bool)
        self.class_centres = class_centres
        self.n_classes = int(self.labels.max()) + 1
        self.init_encoder = init_encoder
        self.init_visual = init_visual
        self.visual_np, self.has_visual_np = visual, has_visual
        self.true_np = true_labels
        self.round_index = round_index
        self.plot_dir = plot_dir
        self.margin_override, self.segment_override = margin, segment_seconds
        if name:
            self.name = name

    def setup(self, ctx: MethodContext) -> None:
        super().setup(ctx)
        self.pc: PseudoLabelConfig = ctx.cfg.pseudo
        encoder = build_encoder(ctx.cfg.encoder)
        if self.init_encoder is not None:
            encoder.load_state_dict(self.init_encoder)
        dev = ctx.device
        self.multimodal = self.visual_np is not None and self.pc.modality == "audio_visual"
        vis = None
        if self.multimodal:
            vis = VisualClassifier(self.visual_np.shape[1], self.pc.visual_hidden, self.n_classes, self.pc.scale)
            if self.init_visual is not None:  # the previous round's visual network (its MLP; new classes)
                vis.mlp.load_state_dict(self.init_visual)
            self.visual = torch.from_numpy(self.visual_np.astype(np.float32)).to(dev)
            self.has_visual = torch.from_numpy(self.has_visual_np.astype(bool)).to(dev)
        self.student = AAMModel(encoder, self.n_classes, self.pc.scale, vis)
        if self.class_centres is not None:
            # Class centres start at the clusters' mean embeddings, so the first steps refine
            # the stage-1 representation instead of fighting random class weights.
            with torch.no_grad():
                self.student.aam.weight.copy_(torch.as_tensor(self.class_centres, dtype=torch.float32))
        n = len(self.labels)
        self.label_t = torch.from_numpy(self.labels).to(dev)
        self.trusted = None if self.trusted_np is None else torch.from_numpy(self.trusted_np).to(dev)
        # Corrections move a pseudo label to another cluster, never to a labelled speaker.
        self.n_pseudo = self.n_classes if self.trusted_np is None else int(self.labels[~self.trusted_np].max()) + 1
        self.gate_a = LossGate(self.pc.gate, n, device=dev)
        self.gate_v = LossGate(self.pc.gate, n, device=dev) if self.multimodal else None
        fused_rule = self.multimodal and self.pc.fusion.reliability == "fused"
        self.gate_f = LossGate(self.pc.gate, n, device=dev) if fused_rule else None
        cc = self.pc.correction
        sizes = torch.bincount(self.label_t, minlength=self.n_classes).float()  # samples per pseudo class
        self.align = DistributionAlignment(sizes[: self.n_pseudo], cc.align_momentum) if cc.enabled and cc.align else None
        # The cap is global: every rank applies it to the parts of each global batch in order
        # (cap_moves_in_order), so the moves do not depend on the number of ranks.
        self.move_cap = cc.max_moves_per_class * sizes if cc.enabled and cc.max_moves_per_class > 0 else None
        self.fit_a = self.fit_v = None
        self.fit_epoch = -1
        self.epoch_log: list[dict] = []
        # Diagnostics only: is a sample's pseudo label "wrong" (its cluster's majority
        # speaker is not the sample's speaker)? Never used for training decisions.
        self.diag = None
        if self.true_np is not None:
            true = np.asarray(self.true_np)
            majority = np.zeros(self.n_classes, dtype=np.int64) - 1
            for c in range(self.n_classes):
                members = true[self.labels == c]
                if len(members):
                    majority[c] = np.bincount(members).argmax()
            self.diag = {"true": torch.from_numpy(true).to(dev), "majority": torch.from_numpy(majority).to(dev)}
        self._reset_counters()

    def _reset_counters(self) -> None:
        z = lambda: torch.zeros((), device=self.ctx.device)
        self.count = {k: z() for k in ("seen", "unreliable", "corrected", "moved", "wrong",
                                       "unreliable_wrong", "corrected_right")}
        # Label-free: how many corrections each class received this epoch (this rank's).
        self.count["corrected_into"] = torch.zeros(self.n_classes, device=self.ctx.device)
        # Samples moved into each class this epoch by all ranks (the same on every rank).
        self.moved_into = torch.zeros(self.n_classes, device=self.ctx.device)

    def dataset(self):
        lo, hi = self._seconds()
        self._segment_dataset = SegmentDataset(self.ctx.store, self.labels, int(lo * SAMPLE_RATE),
                                               int(hi * SAMPLE_RATE), seed=self.ctx.cfg.trainer.seed)
        return self._segment_dataset

    def steps_per_epoch(self) -> int | None:
        if self.trusted_np is None or self.ctx.cfg.trainer.steps_per_epoch:
            return None
        return max(1, int((~self.trusted_np).sum()) // self.ctx.cfg.trainer.global_batch)

    def _seconds(self) -> tuple[float, float]:
        if self.segment_override:
            return self.segment_override, self.segment_override
        return self.pc.min_seconds, self.pc.max_seconds

    def segment_fn(self):
        return self._segment_dataset.segment_samples

    # ------------------------------------------------------------------ epochs
    def _gate_active(self, epoch: int) -> bool:
        return self.pc.gate.mode != "off" and epoch >= self.pc.gate.warmup_epochs

    def _correction_active(self, epoch: int) -> bool:
        c = self.pc.correction
        return c.enabled and self._gate_active(epoch) and epoch >= c.start_epoch

    def on_epoch_start(self, epoch: int) -> None:
        if self.fit_epoch == epoch:
            return  # resumed inside an epoch whose gate is already fitted
        self.fit_a = self.gate_a.fit(epoch)
        self.fit_v = self.gate_v.fit(epoch) if self.gate_v is not None else None
        if self.gate_f is not None:
            self.gate_f.fit(epoch)
        self.fit_epoch = epoch
        self._reset_counters()
        if (self.fit_a is not None and self.pc.plots and self.plot_dir is not None
                and self.ctx.rank == 0 and self.pc.gate.mode == "dynamic"):
            self.plot_dir.mkdir(parents=True, exist_ok=True)
            plot_loss_gate(self.gate_a.losses.cpu().numpy(), self.fit_a,
                           self.plot_dir / f"{self.name}_epoch{epoch + 1:03d}.png",
                           title=f"{self.name} epoch {epoch + 1}: audio losses")

    @staticmethod
    def _threshold(gate) -> float | None:
        return None if gate is None or gate.threshold is None else float(gate.threshold)

    def training_step(self, student, batch, step, epoch, generator):
        fe = self.ctx.frontend
        wave, y, idx = batch["wave"], batch["label"], batch["index"]
        feats = fe(wave, augment=self.pc.augment, generator=generator)
        vis = has_v = None
        if self.multimodal:
            vis, has_v = self.visual[idx], self.has_visual[idx]
        margin = self.current_margin(step, epoch)
        clean_cos = None
        if self._correction_active(epoch):
            clean_cos = self._clean_prediction(wave)
        cos_a, cos_v = student(feats, vis)
        scale = self.pc.scale
        with torch.no_grad():
            # The gate judges a label by the margin-free cross-entropy (scale * cos), so its
            # threshold stays comparable while the margin warms up and between epochs.
            gate_a = F.cross_entropy(cos_a.detach().float() * scale, y, reduction="none")
            trusted = None if self.trusted is None else self.trusted[idx]
            # A true label's loss stays out of the gate's GMM (NaN: never seen).
            self.gate_a.update(idx, gate_a if trusted is None else torch.where(trusted, torch.nan, gate_a))
            gate_v = None
            if cos_v is not None:
                gate_v = F.cross_entropy(cos_v.detach().float() * scale, y, reduction="none")
                # Rows without a visual view keep their loss (NaN: they never have one); no
                # boolean-mask index, which would wait for the device to count the rows.
                self.gate_v.update(idx, torch.where(has_v, gate_v, self.gate_v.losses[idx]))
            fused_rel = None
            if self.gate_f is not None:
                loss_f = joint_loss(F.softmax(cos_a.detach().float() * self.pc.scale, -1),
                                    F.softmax(cos_v.detach().float() * self.pc.scale, -1), y, has_v)
                self.gate_f.update(idx, loss_f)
                fused_rel = self.gate_f.reliable(loss_f)
            if self._gate_active(epoch):
                rel_a = self.gate_a.reliable(gate_a)
                if gate_v is not None:
                    rel_v = self.gate_v.reliable(gate_v)
                    reliable = multimodal_reliable(rel_a, rel_v, has_v, self.pc.fusion.reliability,
                                                   fused_reliable=fused_rel)
                else:
                    reliable = rel_a
            else:
                reliable = torch.ones_like(y, dtype=torch.bool)
            if trusted is not None:
                reliable = reliable | trusted
            y_final, corrected = y, torch.zeros_like(reliable)
            if clean_cos is not None:
                c = self.pc.correction
                probs = F.softmax(clean_cos[:, : self.n_pseudo] * self.pc.scale / c.temperature, -1)
                if cos_v is not None:
                    probs = joint_prediction(probs, F.softmax(cos_v.detach().float() * self.pc.scale / c.temperature, -1),
                                             has_v)
                if self.align is not None:
                    probs = self.align(probs, all_gather_stack(probs.float().mean(0)), self.ctx.rank)
                y_final, corrected = correct_from_probs(probs, y, ~reliable, c.threshold)
                if self.move_cap is not None:
                    mine = torch.stack([y.double(), y_final.double(), corrected.double(),
                                        probs.max(1).values.double()], 1)
                    y_final, corrected, moved = cap_moves_in_order(all_gather_stack(mine), self.ctx.rank,
                                                                   self.move_cap - self.moved_into)
                    self.moved_into += moved
            use = (reliable | corrected).float()
        loss_a = F.cross_entropy(aam_logits(cos_a.float(), y_final, margin, scale), y_final, reduction="none")
        loss = (loss_a * use).sum() / use.sum().clamp_min(1.0)
        if cos_v is not None:
            loss_v = F.cross_entropy(aam_logits(cos_v.float(), y_final, margin, scale), y_final, reduction="none")
            vuse = use * has_v.float()
            loss = loss + (loss_v * vuse).sum() / vuse.sum().clamp_min(1.0)
        self._count(idx, y, y_final, reliable, corrected, trusted)
        stats = {"loss": loss.detach(), "reliable": reliable.float().mean(),
                 "corrected": corrected.float().mean(), "margin": torch.full((), margin, device=loss.device)}
        stats["acc"] = (cos_a.detach().argmax(-1) == y).float().mean()
        return loss, stats

    @torch.no_grad()
    def _clean_prediction(self, wave: torch.Tensor) -> torch.Tensor:
        """Cosines of the un-augmented segments (encoder in eval mode, no BN updates)."""
        enc = self.student.encoder
        enc.eval()
        feats = self.ctx.frontend(wave, augment=False)
        cos = self.student.aam.cosine(enc(feats)).float()
        enc.train()
        return cos

    @torch.no_grad()
    def _count(self, idx, y, y_final, reliable, corrected, trusted=None) -> None:
        c = self.count
        pseudo = torch.ones_like(reliable) if trusted is None else ~trusted  # the gate's samples
        c["seen"] += pseudo.sum()
        c["unreliable"] += (~reliable).sum()
        c["corrected"] += corrected.sum()
        c["corrected_into"].index_add_(0, y_final, corrected.float())  # no host sync
        c["moved"] += (corrected & (y_final != y)).sum()
        if self.diag is not None:  # diagnostics only
            true, majority = self.diag["true"][idx], self.diag["majority"]
            wrong = (majority[y] != true) & pseudo  # the cluster's majority speaker is not this speaker
            c["wrong"] += wrong.sum()
            c["unreliable_wrong"] += (wrong & ~reliable).sum()
            c["corrected_right"] += (corrected & (majority[y_final] == true)).sum()

    def current_margin(self, step: int, epoch: int) -> float:
        base = self.margin_override if self.margin_override is not None else self.pc.margin
        per_epoch = max(1, self.steps_per_epoch_value)
        return linear_warmup(step, int(self.pc.margin_warmup_epochs * per_epoch), 0.0, base)

    def _global_counts(self) -> dict[str, torch.Tensor]:
        """The counters summed over ranks (a collective call; the local ones are kept)."""
        if self.ctx.world_size == 1:
            return self.count
        keys = sorted(self.count)
        flat = [self.count[k].float().reshape(-1) for k in keys]
        packed = all_reduce_sum(torch.cat(flat)).split([len(f) for f in flat])
        return {k: v.reshape(self.count[k].shape) for k, v in zip(keys, packed)}

    def on_epoch_end(self, epoch: int) -> dict:
        counts = self._global_counts()
        into = counts.pop("corrected_into")
        c = {k: float(v.item()) for k, v in counts.items()}
        moved = c["moved"]
        seen = max(1.0, c["seen"])
        out = {"round": self.round_index, "threshold": self._threshold(self.gate_a),
               "reliable_fraction": 1.0 - c["unreliable"] / seen,
               "corrected_fraction": c["corrected"] / seen,
               "corrected_of_unreliable": c["corrected"] / max(1.0, c["unreliable"]),
               "moved_fraction": moved / seen}
        if c["corrected"] > 0:  # label-free: a runaway piles corrections into a few classes
            share = into[into > 0] / into.sum()
            out["corrected_classes_effective"] = float(torch.exp(-(share * share.log()).sum()))
        if self.gate_v is not None:
            out["visual_threshold"] = self._threshold(self.gate_v)
        if self.ctx.world_size > 1:  # one gate for all ranks: check it, and show it
            import torch.distributed as dist

            per_rank = [None] * self.ctx.world_size
            dist.all_gather_object(per_rank, [out["threshold"], out.get("visual_threshold")])
            if any(x != per_rank[0] for x in per_rank):
                raise TrainingError(f"{self.name} epoch {epoch + 1}: ranks gate with different "
                                    f"thresholds {per_rank}; the gate state is out of sync")
            out["rank_thresholds"] = [x[0] for x in per_rank]
        if self.fit_a is not None and self.fit_a.note:
            out["gate_note"] = self.fit_a.note
        if self.diag is not None and c["wrong"] > 0:  # diagnostics from true labels only
            out["wrong_fraction"] = c["wrong"] / seen
            if self._gate_active(epoch):
                out["gate_recall"] = c["unreliable_wrong"] / c["wrong"]
                out["gate_precision"] = c["unreliable_wrong"] / max(1.0, c["unreliable"])
            if c["corrected"] > 0:
                out["correction_accuracy"] = c["corrected_right"] / c["corrected"]
        self.epoch_log.append({"epoch": epoch, **out})
        return out

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        state = {"gate_a": self.gate_a.state_dict(), "fit_epoch": self.fit_epoch}
        if self.align is not None:
            state["align"] = self.align.state_dict()
        for name in ("gate_v", "gate_f"):
            if getattr(self, name) is not None:
                state[name] = getattr(self, name).state_dict()
        for k, v in self._global_counts().items():
            state[f"count_{k}"] = v.detach().cpu()
        state["moved_into"] = self.moved_into.detach().cpu()  # global: the same on every rank
        return state

    def load_state_dict(self, state: dict) -> None:
        self.gate_a.load_state_dict(state["gate_a"])
        for name in ("gate_v", "gate_f"):
            if getattr(self, name) is not None and name in state:
                getattr(self, name).load_state_dict(state[name])
        self.fit_epoch = int(state.get("fit_epoch", -1))
        if self.align is not None and "align" in state:
            self.align.load_state_dict(state["align"])
        for k in self.count:
            if f"count_{k}" in state:  # global counts: rank 0 holds them, the others start at 0
                value = state[f"count_{k}"].to(self.ctx.device)
                self.count[k] = value if self.ctx.rank == 0 else torch.zeros_like(value)
        if "moved_into" in state:
            self.moved_into = state["moved_into"].to(self.ctx.device, torch.float32)

    def export_encoder(self) -> nn.Module:
        return self.student.encoder

    def visual_state(self) -> dict | None:
        """The visual network (the classifier's MLP) as trained this round, on the CPU."""
        if self.student.visual is None:
            return None
        return {k: v.detach().cpu().clone() for k, v in self.student.visual.mlp.state_dict().items()}

    @torch.no_grad()
    def refined_visual(self) -> np.ndarray | None:
        """The visual view as this round learnt it: the MLP's embeddings of every row (eval
        mode; rows without a visual view stay zero), for the next round's clustering."""
        if self.student.visual is None:
            return None
        mlp = self.student.visual.mlp
        was = mlp.training
        mlp.eval()
        out = torch.cat([mlp(chunk) for chunk in self.visual.split(4096)]).float()
        mlp.train(was)
        out = out * self.has_visual[:, None].float()
        return out.cpu().numpy()
