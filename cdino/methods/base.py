"""The interface between the one trainer and each training method.

A method (DINO, cluster-aware DINO, pseudo-label AAM with DLG-LC, the supervised
reference) fills in hooks; the trainer (``cdino.train.trainer``) owns everything else:
devices, ranks, gradient accumulation, the optimiser, schedules, checkpoints and logs.

    setup(ctx)            build modules; ``self.student`` is what the optimiser trains
    dataset()             the training Dataset (crops come out raw; see ``FeatureFrontend``)
    on_epoch_start(e)     e.g. re-cluster (C-DINO), fit the loss gate (DLG-LC)
    training_step(...)    loss and a dict of scalar tensors to log (no host syncs)
    before_optimizer_step(step, epoch)  e.g. drop the DINO head's last-layer gradients in epoch 1
    after_optimizer_step(step, epoch)   e.g. EMA update of the teacher
    on_epoch_end(e)
    state_dict()/load_state_dict()      method state beyond the student (teacher, centre, gate)
    export_encoder()      the encoder that goes into the model folder
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cdino.frontend.augment import AugmentBanks, AugmentConfig, Augmenter, mask_features
from cdino.frontend.fbank import Fbank, FbankConfig


class FeatureFrontend(nn.Module):
    """Raw crops → (augmented) → log-mel fbank (→ feature masks), batched on the crops' device."""

    def __init__(self, fbank: FbankConfig, augment: AugmentConfig | None,
                 banks: AugmentBanks | None) -> None:
        super().__init__()
        self.fbank = Fbank(fbank)
        self.augmenter = Augmenter(augment, banks) if augment is not None and banks is not None else None

    @torch.no_grad()
    def forward(self, wave: torch.Tensor, augment: bool = True,
                generator: torch.Generator | None = None) -> torch.Tensor:
        shape = wave.shape
        flat = wave.reshape(-1, shape[-1]).float()
        if augment and self.augmenter is not None:
            flat = self.augmenter(flat, generator=generator)
        feats = self.fbank(flat)
        if augment and self.augmenter is not None:
            feats = mask_features(feats, self.augmenter.cfg, generator)
        return feats.reshape(*shape[:-1], *feats.shape[-2:])


@dataclass
class MethodContext:
    """What the trainer hands a method at set-up."""

    cfg: Any  # cdino.train.trainer.TrainConfig
    device: torch.device
    rank: int
    world_size: int
    store: Any  # cdino.data.stores.WaveStore
    data: Any  # cdino.data.kaldi_dir.DataDir
    out_dir: Path
    frontend: FeatureFrontend
    log: Any = None  # callable(str) writing to the run log
    extra: dict = field(default_factory=dict)


class Method:
    """Base class of training methods; see the module docstring for the hooks."""

    name = "method"
    student: nn.Module
    steps_per_epoch_value: int = 1  # set by the trainer before the first step

    def setup(self, ctx: MethodContext) -> None:
        self.ctx = ctx

    def dataset(self):
        raise NotImplementedError

    def segment_fn(self):
        """For segment datasets: step → segment length in samples (None for multi-crop)."""
        return None

    def steps_per_epoch(self) -> int | None:
        return None

    def on_epoch_start(self, epoch: int) -> None:
        pass

    def training_step(self, student: nn.Module, batch: dict, step: int, epoch: int,
                      generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def before_optimizer_step(self, step: int, epoch: int) -> None:
        pass

    def after_optimizer_step(self, step: int, epoch: int) -> None:
        pass

    def on_epoch_end(self, epoch: int) -> dict:
        return {}

    def check_health(self, stats: dict[str, float], step: int, epoch: int) -> None:
        """Called at each log window with averaged stats; raise TrainingError to stop."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def export_encoder(self) -> nn.Module:
        raise NotImplementedError
