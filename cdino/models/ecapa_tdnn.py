"""ECAPA-TDNN speaker-embedding encoder (Desplanques et al., Interspeech 2020).

Frame-level: a k=5 TDNN layer, three SE-Res2 blocks (k=3, dilations 2/3/4, Res2 scale 8,
squeeze-excitation), multi-layer feature aggregation (the three block outputs
concatenated, 1x1 conv). Utterance-level: attentive statistics pooling with global
context, BatchNorm over the pooled [mean; std], a linear layer to the embedding and an
optional BatchNorm on the embedding.

Every conv is followed by BatchNorm then ReLU (conv → BN → ReLU), so all BatchNorms can
be folded into the conv before them for inference (see :mod:`cdino.models.inference`).
Input ``(B, T, n_mels)`` fbank, output ``(B, embed_dim)``.
"""

from __future__ import annotations

import torch
from torch import nn

from cdino.models.pooling import AttentiveStatsPool


class ConvBNReLU(nn.Sequential):
    """1-D convolution → BatchNorm → ReLU (a TDNN layer)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, dilation: int = 1) -> None:
        super().__init__(
            nn.Conv1d(in_ch, out_ch, kernel_size, dilation=dilation,
                      padding=dilation * (kernel_size - 1) // 2),
            nn.BatchNorm1d(out_ch),
            nn.ReLU(inplace=True),
        )


class Res2Conv(nn.Module):
    """Res2Net multi-scale convolution: channels split into ``scale`` groups; group i≥2
    is convolved after adding the previous group's output (the first group passes as is),
    giving a hierarchy of receptive fields inside one layer."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int) -> None:
        super().__init__()
        if channels % scale:
            raise ValueError(f"Res2 channels {channels} not divisible by scale {scale}")
        self.width = channels // scale
        self.convs = nn.ModuleList(
            ConvBNReLU(self.width, self.width, kernel_size, dilation) for _ in range(scale - 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = torch.split(x, self.width, dim=1)
        outputs = [groups[0]]
        y = groups[1]
        for i, conv in enumerate(self.convs):
            if i > 0:
                y = y + groups[i + 1]
            y = conv(y)
            outputs.append(y)
        return torch.cat(outputs, dim=1)


class SqueezeExcitation(nn.Module):
    """Squeeze-excitation: rescale channels by a gate computed from their time means."""

    def __init__(self, channels: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(channels, bottleneck)
        self.up = nn.Linear(bottleneck, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.up(torch.relu(self.down(x.mean(dim=-1)))))
        return x * gate.unsqueeze(-1)


class SERes2Block(nn.Module):
    """SE-Res2 block: 1x1 TDNN → Res2 dilated conv → 1x1 TDNN → SE, plus the residual."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int, se_dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvBNReLU(channels, channels, 1),
            Res2Conv(channels, kernel_size, dilation, scale),
            ConvBNReLU(channels, channels, 1),
            SqueezeExcitation(channels, se_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class EcapaTdnn(nn.Module):
    """ECAPA-TDNN encoder: fbank ``(B, T, n_mels)`` → embedding ``(B, embed_dim)``.

    ``channels`` is C of the paper (512 or 1024); ``aggregation_channels`` the width of
    the multi-layer feature aggregation (1536 in the paper).
    """

    def __init__(self, n_mels: int = 80, channels: int = 512, aggregation_channels: int = 1536,
                 embed_dim: int = 192, embed_bn: bool = False, res2_scale: int = 8,
                 se_dim: int = 128, attention_dim: int = 128, global_context: bool = True) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.embed_dim = embed_dim
        self.input_layer = ConvBNReLU(n_mels, channels, kernel_size=5)
        self.blocks = nn.ModuleList(
            SERes2Block(channels, 3, dilation, res2_scale, se_dim) for dilation in (2, 3, 4)
        )
        self.aggregation = ConvBNReLU(3 * channels, aggregation_channels, kernel_size=1)
        self.pool = AttentiveStatsPool(aggregation_channels, attention_dim, global_context)
        self.pool_bn = nn.BatchNorm1d(self.pool.out_dim)
        self.embedding = nn.Linear(self.pool.out_dim, embed_dim)
        self.embed_bn = nn.BatchNorm1d(embed_dim) if embed_bn else nn.Identity()

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, T, n_mels) -> (B, embed_dim)``."""
        x = self.input_layer(feats.transpose(1, 2))
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        x = self.aggregation(torch.cat(outputs, dim=1))
        stats = self.pool_bn(self.pool(x))
        return self.embed_bn(self.embedding(stats))
