"""Label correction (LC): give unreliable samples the class the model predicts.

The loss-gate drops samples whose pseudo label looks wrong. Label correction recovers
part of them: the classifier's prediction on the sample's *clean* (un-augmented)
segment is turned into class probabilities with a sharpened softmax,

    p = softmax(logits / temperature),   logits = scale * cos(embedding, class weights)

(the AAM-softmax logits *without* the margin; a lower ``temperature`` sharpens).

The sharpness decides whether correction does anything. Measured on the simulated
corpus at the demo's budget (rounds of 3 epochs, correction from the second;
``bench/results/ablations/select_temperature.json``, BENCHMARKS.md): the classifier's own
softmax (``temperature = 1``, AAM scale 32) and 1.5 call almost every unreliable sample
certain after one epoch; the corrections, nearly all to wrong classes, are trained on,
make the classifier surer of them, and within the round 85–95 % of the samples are
"corrected" and the round collapses — a runaway visible without labels (the corrected
fraction climbs while the reliable fraction falls towards zero). ``temperature = 2``
(lowest validation EER in that selection) ran away the same way on the demo's full
training set. ``temperature = 3`` (the default) is stable but corrects under 1 % of the
samples there, so DLG-LC is then close to DLG. With longer rounds the classifier's
predictions become trustworthy before correction starts, which is the regime the method
was designed for; ``start_epoch`` and ``threshold`` are the settings to revisit there.
When the
top probability reaches ``threshold`` the sample is trained on the arg-max class instead
of being dropped; the other unreliable samples stay excluded by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cdino.errors import ConfigError

__all__ = ["LabelCorrectionConfig", "correct_labels"]


@dataclass
class LabelCorrectionConfig:
    """Label-correction settings."""

    enabled: bool = True  # correct unreliable samples (False: they are only dropped)
    threshold: float = 0.5  # minimum top probability of the sharpened softmax
    temperature: float = 3.0  # softmax(scale*cos / temperature); 1: the classifier's own softmax, which runs away at short rounds (module docstring)
    start_epoch: int = 1  # first epoch of a round (0-based) that corrects labels

    def validate(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"threshold: must lie in (0, 1], got {self.threshold}")
        if not self.temperature > 0.0:
            raise ConfigError(f"temperature: must be > 0, got {self.temperature}")
        if self.start_epoch < 0:
            raise ConfigError(f"start_epoch: must be >= 0, got {self.start_epoch}")


@torch.no_grad()
def correct_labels(cos_logits: torch.Tensor, labels: torch.Tensor, unreliable: torch.Tensor,
                   threshold: float = 0.5,
                   temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrected pseudo labels of a batch.

    ``cos_logits`` (B, C): class logits ``scale * cos`` of the clean segments (no
    margin); ``labels`` (B,) pseudo labels; ``unreliable`` (B,) bool from the loss-gate.
    Returns ``(new_labels, corrected_mask)``: ``corrected_mask`` marks unreliable samples
    whose sharpened top probability is ``>= threshold`` (their label becomes the
    arg-max, which may equal the old one); every other label is unchanged.
    Pure tensor operations on the inputs' device, no host sync.
    """
    if cos_logits.ndim != 2 or cos_logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"cos_logits must be (B, C) with B = len(labels); got {tuple(cos_logits.shape)} "
            f"and {tuple(labels.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    probs = torch.softmax(cos_logits.float() / temperature, dim=1)
    top_p, top = probs.max(dim=1)
    corrected = unreliable.to(torch.bool) & (top_p >= threshold)
    new_labels = torch.where(corrected, top.to(labels.dtype), labels)
    return new_labels, corrected
