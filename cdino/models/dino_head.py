"""DINO projection head (Caron et al., 2021), as used for speaker DINO.

MLP (Linear → BN → GELU, ``n_layers - 1`` times, then Linear to the bottleneck),
L2-normalisation, and a weight-normalised linear layer without bias from the bottleneck
to ``out_dim`` prototypes. The weight normalisation has its gain fixed at 1: every
prototype (weight row) is rescaled to unit length in each forward pass, so each logit is
a cosine similarity in [-1, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NormalizedLinear(nn.Module):
    """Linear layer without bias whose weight rows are L2-normalised on every forward
    (weight normalisation with the gain fixed at 1)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 also under autocast: the losses divide these cosines by temperatures of
        # 0.04-0.1, which would magnify bf16 rounding (~4e-3) 10-25x; the product is small.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.linear(x.float(), F.normalize(self.weight.float(), dim=1))


class DinoHead(nn.Module):
    """DINO head: embedding ``(B, in_dim)`` → prototype logits ``(B, out_dim)``.

    ``last_layer`` is the weight-normalised prototype layer; its parameters are the ones
    frozen during the first epoch.
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, n_layers: int = 3, use_bn: bool = True) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(n_layers - 1):
            layers.append(nn.Linear(dim, hidden_dim))
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            dim = hidden_dim
        layers.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        self.last_layer = NormalizedLinear(bottleneck_dim, out_dim)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_dim) -> (B, out_dim)`` logits (cosines to the prototypes)."""
        z = F.normalize(self.mlp(x).float(), dim=-1, eps=1e-6)
        return self.last_layer(z)
