"""BatchNorm statistics of ranks without SyncBatchNorm, combined as one process has them."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from cdino.train.running_stats import batch_norms, combine_sequential


def _net(momentum) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8, momentum=momentum), nn.ReLU(),
                         nn.Linear(8, 4), nn.BatchNorm1d(4, momentum=momentum))


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
@pytest.mark.parametrize("per_rank", [[1, 1], [2, 2], [1, 3, 2]])
def test_ranks_parts_combine_to_the_one_process_statistics(momentum, per_rank):
    gen = torch.Generator().manual_seed(1)
    parts = [[torch.randn(16, 6, generator=gen) * (1 + r) + r for _ in range(k)] for r, k in enumerate(per_rank)]
    one = _net(momentum).train()
    for _ in range(3):  # some history before the step
        one(torch.randn(16, 6, generator=gen))
    ranks = [copy.deepcopy(one) for _ in per_rank]
    start = [(m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked)) for m in batch_norms(one)]
    with torch.no_grad():
        for r, batches in enumerate(parts):
            for x in batches:
                one(x)  # one process: every part in order
                ranks[r](x)  # rank r: its own parts only
    for i, (ref, (mean0, var0, n0)) in enumerate(zip(batch_norms(one), start)):
        rank_layers = [batch_norms(net)[i] for net in ranks]
        k = torch.tensor([float(m.num_batches_tracked) - n0 for m in rank_layers])
        mean = combine_sequential(mean0, torch.stack([m.running_mean for m in rank_layers]), k, ref.momentum, n0)
        var = combine_sequential(var0, torch.stack([m.running_var for m in rank_layers]), k, ref.momentum, n0)
        torch.testing.assert_close(mean.float(), ref.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(var.float(), ref.running_var, rtol=1e-5, atol=1e-6)
        # rank 0's statistics alone (what DDP's buffer broadcast kept) are not the same
        assert not torch.allclose(rank_layers[0].running_var, ref.running_var, rtol=1e-3)


def test_batch_norms_skips_layers_without_running_statistics():
    net = nn.Sequential(nn.BatchNorm1d(3), nn.BatchNorm1d(3, track_running_stats=False), nn.LayerNorm(3))
    assert batch_norms(net, None) == [net[0]]
