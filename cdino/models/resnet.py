"""ResNet speaker-embedding encoder (2-D convolutions over time × frequency).

The fbank ``(B, T, n_mels)`` is one input channel, ``(B, 1, T, n_mels)``. A 3x3 stem
and four stages of basic residual blocks (widths base·1/2/4/8, strides 1/2/2/2 over
both time and frequency) give ``(B, 8·base, T/8, n_mels/8)``; channels × frequency are
flattened into one feature per frame, then temporal statistics pooling and a linear
layer to the embedding. ResNet34 = blocks [3, 4, 6, 3] with base 32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cdino.models.pooling import TemporalStatsPool


class BasicBlock(nn.Module):
    """Two 3x3 conv → BN layers with an identity (or 1x1 conv → BN) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet encoder: fbank ``(B, T, n_mels)`` → embedding ``(B, embed_dim)``."""

    def __init__(self, n_mels: int = 80, base_channels: int = 32,
                 blocks: Sequence[int] = (3, 4, 6, 3), embed_dim: int = 256,
                 embed_bn: bool = False) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.embed_dim = embed_dim
        self.stem = nn.Sequential(
            nn.Conv2d(1, base_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(base_channels),
            nn.ReLU(inplace=True),
        )
        stages = []
        in_ch = base_channels
        for i, n_blocks in enumerate(blocks):
            out_ch = base_channels * 2**i
            stride = 1 if i == 0 else 2
            layers = [BasicBlock(in_ch, out_ch, stride)]
            layers += [BasicBlock(out_ch, out_ch, 1) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*layers))
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        freq = n_mels
        for _ in range(len(blocks) - 1):
            freq = (freq + 1) // 2  # k=3, padding=1, stride=2
        self.pool = TemporalStatsPool(in_ch * freq)
        self.embedding = nn.Linear(self.pool.out_dim, embed_dim)
        self.embed_bn = nn.BatchNorm1d(embed_dim) if embed_bn else nn.Identity()

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, T, n_mels) -> (B, embed_dim)``."""
        x = self.stages(self.stem(feats.unsqueeze(1)))  # (B, C, T', F')
        x = x.transpose(2, 3).flatten(1, 2)  # (B, C·F', T'): one feature vector per frame
        return self.embed_bn(self.embedding(self.pool(x)))
