"""BatchNorm running statistics on ranks without SyncBatchNorm, as one process would have them.

In one process with gradient accumulation, a BatchNorm layer updates its running mean and
variance once per micro-batch, in the global batch's order. Under ``torchrun`` on CPUs (gloo
has no SyncBatchNorm) each rank updates them with its own micro-batches only, and DDP's
default then copies rank 0's buffers to every rank, so the statistics an exported model
uses in eval mode (and the clean predictions of label correction) saw half the data and
half the updates on 2 ranks. Short rounds make that visible: the audio-visual MLP's
running variance of the quick demo was 3× apart between 1 and 2 ranks after a round.

:class:`RunningStatsSync` restores the one-process result exactly (up to float rounding).
The ranks' micro-batches are the consecutive parts of the global batch, rank by rank
(:class:`cdino.data.loader.GlobalBatchSampler`), so the sequential updates compose: with
``q = 1 − momentum``, a rank that started the step from ``s`` and applied ``k_r`` updates
holds ``a_r = q^k_r s + d_r``, and one process would end at

    s' = q^(Σk) s + Σ_r q^(Σ_{r' > r} k_r') (a_r − q^k_r s),

(``momentum = None``, the cumulative average: ``s' = (n s + Σ_r ((n + k_r) a_r − n s)) / (n + Σ k_r)``).
Every rank gathers the others' buffers once per optimiser step and sets this ``s'``.
"""

from __future__ import annotations

import torch
from torch import nn

from cdino.distributed import all_gather_stack


def batch_norms(*modules: nn.Module | None) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer with running statistics in ``modules``, in a fixed order."""
    found = []
    for module in modules:
        if module is None:
            continue
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats \
                    and m.running_mean is not None:
                found.append(m)
    return found


def combine_sequential(start: torch.Tensor, per_rank: torch.Tensor, updates: torch.Tensor,
                       momentum: float | None, tracked_before: int) -> torch.Tensor:
    """The running statistic one process would hold after every rank's updates in rank order.

    ``start`` (C,): the value when the step began (the same on every rank); ``per_rank``
    (W, C): each rank's value after its own ``updates[r]`` updates; ``momentum``: the layer's
    (``None``: cumulative average over ``tracked_before`` + the new updates).
    """
    start = start.double()
    per_rank = per_rank.double()
    k = updates.to(torch.float64)
    if momentum is None:
        n = float(tracked_before)
        total = n * start + ((n + k)[:, None] * per_rank - n * start).sum(0)
        return total / max(n + float(k.sum()), 1.0)
    q = 1.0 - float(momentum)
    later = torch.flip(torch.cumsum(torch.flip(k, [0]), 0), [0]) - k  # updates of the ranks after r
    contrib = per_rank - (q ** k)[:, None] * start
    return (q ** k.sum()) * start + ((q ** later)[:, None] * contrib).sum(0)


class RunningStatsSync:
    """Snapshot the BatchNorm buffers of ``modules`` at the start of an optimiser step
    (:meth:`begin`) and, at its end (:meth:`end`, a collective call), set on every rank the
    statistics one process would have after all ranks' micro-batches in order."""

    def __init__(self, *modules: nn.Module | None) -> None:
        self.layers = batch_norms(*modules)
        self._start: list[tuple[torch.Tensor, torch.Tensor, int]] = []

    def begin(self) -> None:
        self._start = [(m.running_mean.detach().clone(), m.running_var.detach().clone(),
                        int(m.num_batches_tracked)) for m in self.layers]

    @torch.no_grad()
    def end(self) -> None:
        if not self.layers:
            return
        mine = torch.cat([torch.cat([m.running_mean.float(), m.running_var.float()]) for m in self.layers])
        counts = torch.tensor([int(m.num_batches_tracked) - s[2] for m, s in zip(self.layers, self._start)],
                              dtype=torch.float64, device=mine.device)
        every = all_gather_stack(mine)  # (W, total)
        updates = all_gather_stack(counts)  # (W, layers)
        at = 0
        for i, (m, (mean0, var0, tracked)) in enumerate(zip(self.layers, self._start)):
            c = m.running_mean.numel()
            k = updates[:, i]
            if float(k.sum()) > 0:
                m.running_mean.copy_(combine_sequential(mean0, every[:, at:at + c], k, m.momentum, tracked))
                m.running_var.copy_(combine_sequential(var0, every[:, at + c:at + 2 * c], k, m.momentum, tracked))
                m.num_batches_tracked.fill_(tracked + int(k.sum()))
            at += 2 * c
