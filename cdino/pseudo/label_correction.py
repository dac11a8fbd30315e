"""Label correction (LC): give unreliable samples the class the model predicts.

The loss-gate drops samples whose pseudo label looks wrong. Label correction recovers
part of them: the classifier's prediction on the sample's *clean* (un-augmented)
segment is turned into class probabilities with a sharpened softmax,

    p = softmax(logits / temperature),   logits = scale * cos(embedding, class weights)

(the AAM-softmax logits *without* the margin; a lower ``temperature`` sharpens).

Left alone, correction at short rounds runs away. Measured on the simulated corpus at
the demo's budget (rounds of 3 epochs, correction from the second; BENCHMARKS.md): at
``temperature`` 1 or 1.5 the corrections piled into a few "hub" classes (an effective
63, then 26, of 300 classes received them), were trained on, made the hubs surer, and
within the round 66–95 % of the unreliable samples were "corrected", 2–10 % of them
rightly, and the round collapsed; at 3, correction was stable but took back under 1 %
of them, so DLG-LC was DLG. Two label-free guards keep it in check. Distribution alignment
(:class:`DistributionAlignment`, ``align``, on by default) rescales the predictions so
that no class is predicted more often than its pseudo labels hold it; a per-class cap on
the samples moved into a class per epoch (:func:`cap_moves`, ``max_moves_per_class``,
default half the class's size, the most confident moves first) stops the corrections
that alignment lets through from piling up. With them no round ran away. Settings were
chosen one after another on the label-free validation split of the training data
(``bench/results/ablations/select_*_aligned.json``, ``select_move_cap.json``):
temperatures 1, 1.5, 2, 3 gave validation EERs of 11.3, 10.4, 10.8, 10.9 % (300
clusters); caps none, 0.25, 0.5, 1 gave 9.9, 10.2, 9.8, 9.8 % (200 clusters); the
differences are within the noise of 273 held-out utterances. At temperature 1.5 and cap
0.5, correction takes back about a third of the unreliable samples per epoch. The
per-epoch log shows the share corrected, the share moved to another class and,
label-free, ``corrected_classes_effective`` (exp of the entropy of the classes
corrected into), which falls in a runaway. When the
top probability reaches ``threshold`` the sample is trained on the arg-max class instead
of being dropped; the other unreliable samples stay excluded by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cdino.errors import ConfigError

__all__ = ["DistributionAlignment", "LabelCorrectionConfig", "cap_moves", "cap_moves_in_order", "correct_from_probs",
           "correct_labels"]


@dataclass
class LabelCorrectionConfig:
    """Label-correction settings."""

    enabled: bool = True  # correct unreliable samples (False: they are only dropped)
    threshold: float = 0.5  # minimum top probability of the sharpened softmax
    temperature: float = 1.5  # softmax(scale*cos / temperature); chosen on the label-free validation split with alignment on (module docstring)
    start_epoch: int = 1  # first epoch of a round (0-based) that corrects labels
    align: bool = True  # distribution alignment: rescale predictions so classes are predicted as often as the pseudo labels hold them (DistributionAlignment)
    align_momentum: float = 0.99  # per-step EMA of the mean prediction that alignment divides by
    max_moves_per_class: float = 0.5  # per epoch, corrections may move at most this many samples into a class, as a multiple of its pseudo-label count (the most confident first; 0: no cap); chosen on the validation split

    def validate(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"threshold: must lie in (0, 1], got {self.threshold}")
        if not self.temperature > 0.0:
            raise ConfigError(f"temperature: must be > 0, got {self.temperature}")
        if self.start_epoch < 0:
            raise ConfigError(f"start_epoch: must be >= 0, got {self.start_epoch}")
        if not 0.0 <= self.align_momentum < 1.0:
            raise ConfigError(f"align_momentum: must lie in [0, 1), got {self.align_momentum}")
        if self.max_moves_per_class < 0.0:
            raise ConfigError(f"max_moves_per_class: must be >= 0 (0: no cap), got {self.max_moves_per_class}")


class DistributionAlignment:
    """Keep corrections from piling into a few classes.

    A classifier trained on its own corrections drifts towards "hub" classes: a few class
    weights that lie near many embeddings become everyone's confident prediction, the
    corrections into them are trained on, and the hubs grow (on the simulated corpus at
    ``temperature = 1.5`` the corrections went to an effective 63, then 26, of 300
    classes, and 10 % of them were right). Distribution alignment (as in ReMixMatch,
    Berthelot et al. 2020) divides every prediction by the running mean prediction and
    multiplies it by the class prior, here the share of samples each pseudo label holds,

        p~ = normalise(p * prior / mean_p),

    so a class predicted more often than its clusters' size is damped before the
    threshold is applied. No labels are involved.
    """

    def __init__(self, prior: torch.Tensor, momentum: float = 0.99) -> None:
        prior = prior.float()
        self.prior = prior / prior.sum()
        self.mean = self.prior.clone()  # the running mean prediction starts at the prior
        self.momentum = momentum

    @torch.no_grad()
    def __call__(self, probs: torch.Tensor, part_means: torch.Tensor | None = None, part: int = 0) -> torch.Tensor:
        """Update the running mean with this batch's ``probs`` (B, C) and return them aligned.

        Under several ranks the global batch is split into parts, one per rank:
        ``part_means`` (W, C) holds every part's mean prediction (gathered) and ``part`` is
        this rank's. The running mean then moves through the parts in order, as one process
        would through its micro-batches; this part is aligned with the mean after its own
        update, and every rank ends with the same mean.
        """
        if part_means is None:
            part_means = probs.float().mean(0, keepdim=True)
        mine = self.mean
        for j, m in enumerate(part_means.float()):
            self.mean = self.mean * self.momentum + m * (1.0 - self.momentum)
            if j == part:
                mine = self.mean
        aligned = probs.float() * (self.prior / mine.clamp_min(1e-12))
        return aligned / aligned.sum(1, keepdim=True)

    def state_dict(self) -> dict:
        return {"mean": self.mean.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.mean = state["mean"].to(self.prior.device, torch.float32)


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
    return correct_from_probs(torch.softmax(cos_logits.float() / temperature, dim=1), labels, unreliable,
                              threshold)


@torch.no_grad()
def correct_from_probs(probs: torch.Tensor, labels: torch.Tensor, unreliable: torch.Tensor,
                       threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`correct_labels` on class probabilities already sharpened (and, in the
    trainer, fused with the visual view and aligned): the unreliable samples whose top
    probability is ``>= threshold`` take the arg-max. No host sync."""
    top_p, top = probs.max(dim=1)
    corrected = unreliable.to(torch.bool) & (top_p >= threshold)
    new_labels = torch.where(corrected, top.to(labels.dtype), labels)
    return new_labels, corrected


@torch.no_grad()
def cap_moves(labels: torch.Tensor, new_labels: torch.Tensor, corrected: torch.Tensor,
              confidence: torch.Tensor, room: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep at most ``room[c]`` of a batch's corrections that *move* a sample into class
    ``c`` (new label != old), the most ``confidence``-ent first; the others revert to
    their old label and stay uncorrected (excluded). Corrections that keep a sample's own
    label are never capped. Returns ``(new_labels, corrected)``; no host sync.
    """
    n_cls = room.numel()
    moved = corrected & (new_labels != labels)
    target = torch.where(moved, new_labels, torch.full_like(new_labels, n_cls))  # n_cls: not a move
    by_conf = torch.argsort(-confidence.float(), stable=True)
    order = by_conf[torch.argsort(target[by_conf], stable=True)]  # by class, then by confidence
    sorted_target = target[order]
    rank = torch.arange(len(order), device=labels.device) - torch.searchsorted(sorted_target, sorted_target)
    room_ext = torch.cat([room.float(), torch.full((1,), float("inf"), device=room.device)])
    keep_sorted = rank.float() + 1.0 <= room_ext[sorted_target]  # whole samples within the room
    keep = torch.empty_like(keep_sorted)
    keep[order] = keep_sorted
    dropped = moved & ~keep
    return torch.where(dropped, labels, new_labels), corrected & ~dropped


@torch.no_grad()
def cap_moves_in_order(parts: torch.Tensor, part: int, room: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`cap_moves` over the parts of a global batch in order, as one process would
    apply it to its micro-batches one after another.

    ``parts`` (W, B, 4): every part's ``(label, new label, corrected, confidence)`` per
    sample (gathered from the ranks); ``part``: this rank's; ``room`` (C,): what the cap
    allowed when the step began. Returns this part's ``(new_labels, corrected)`` and the
    moves into each class that all parts kept (the same on every rank).
    """
    spent = torch.zeros_like(room, dtype=torch.float32)
    mine = None
    for j, p in enumerate(parts):
        labels, new, corrected, conf = p[:, 0].long(), p[:, 1].long(), p[:, 2].bool(), p[:, 3]
        new, corrected = cap_moves(labels, new, corrected, conf, room - spent)
        spent.index_add_(0, new, (corrected & (new != labels)).float())
        if j == part:
            mine = (new, corrected)
    return mine[0], mine[1], spent
