"""WeSpeaker's ResNet and ECAPA-TDNN as cdino encoders, so its released models run in cdino.

The functions are WeSpeaker's (``wespeaker/models/resnet.py``, ``ecapa_tdnn.py``,
``pooling_layers.py``), written here so that a mapped checkpoint gives its embeddings
(eval mode) to float rounding. Where they compute the same function as cdino's own
encoders, cdino's blocks are reused; they differ in three places:

- Statistics pooling (ResNet's TSTP; the global context of ECAPA's attentive pooling)
  takes the *unbiased* variance plus a small constant under the square root, and the
  attentive pooling floors its weighted variance at that constant.
- ECAPA's TDNN layers run conv → ReLU → BatchNorm (cdino's: conv → BN → ReLU), its Res2
  layer convolves the first seven groups and passes the last one through (cdino's passes
  the first), and the aggregation conv (3·C → 1536) has ReLU and no BatchNorm.
- The ResNet here is cdino's with the time and frequency axes swapped, so a WeSpeaker
  checkpoint's 2-D kernels are transposed on import (see :mod:`cdino.models.wespeaker_import`).

Both are trainable like the other encoders (fp32 statistics under autocast, the fused
moment functions of :mod:`cdino.models.pooling`, plain operations while tracing).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cdino.models.ecapa_tdnn import EcapaTdnn, SqueezeExcitation
from cdino.models import pooling
from cdino.models.pooling import AttentiveStatsPool, Moments, TemporalStatsPool, WeightedMoments, as_pooled_output
from cdino.models.resnet import ResNet

#: WeSpeaker's constant under the square root of every standard deviation it pools.
STD_EPSILON = 1e-7


def _unbiased_mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over the last axis and ``sqrt(unbiased variance + STD_EPSILON)``, in fp32."""
    x = x.float()
    t = x.shape[-1]
    if pooling.use_plain_ops():
        mean, second = x.mean(dim=-1), (x * x).mean(dim=-1)
    else:
        mean, second = Moments.apply(x)
    var = (second - mean * mean).clamp(min=0.0) * (t / max(t - 1, 1))
    return mean, (var + STD_EPSILON).sqrt()


class UnbiasedStatsPool(TemporalStatsPool):
    """WeSpeaker's TSTP: ``(B, C, T) -> (B, 2C)`` = [mean; sqrt(unbiased var + 1e-7)]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = _unbiased_mean_std(x)
        return as_pooled_output(torch.cat([mean, std], dim=1), x)


class WeSpeakerAttentivePool(AttentiveStatsPool):
    """WeSpeaker's ASTP: cdino's channel-wise attentive pooling (same parameters, the
    first layer split into frame and context parts) with WeSpeaker's statistics: context
    std from the unbiased variance, weighted variance floored at ``STD_EPSILON``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T) -> (B, 2C)``."""
        hidden = self.frame_proj(x)
        x32 = x.float()
        if self.context_proj is not None:
            mean, std = _unbiased_mean_std(x32)
            context = self.context_proj(torch.cat([mean, std], dim=1).to(hidden.dtype))
            hidden = hidden + context.unsqueeze(-1)
        weights = torch.softmax(self.score(torch.tanh(hidden)).float(), dim=-1)
        if pooling.use_plain_ops():
            mean, second = (x32 * weights).sum(dim=-1), (x32 * x32 * weights).sum(dim=-1)
        else:
            mean, second = WeightedMoments.apply(x32, weights)
        std = (second - mean * mean).clamp(min=STD_EPSILON).sqrt()
        return as_pooled_output(torch.cat([mean, std], dim=1), x)


class WeSpeakerResNet(ResNet):
    """WeSpeaker's ResNet (basic blocks, TSTP pooling, one embedding layer): cdino's
    :class:`~cdino.models.resnet.ResNet` with :class:`UnbiasedStatsPool`."""

    def __init__(self, n_mels: int = 80, base_channels: int = 32,
                 blocks: Sequence[int] = (3, 4, 6, 3), embed_dim: int = 256) -> None:
        super().__init__(n_mels=n_mels, base_channels=base_channels, blocks=blocks,
                         embed_dim=embed_dim, embed_bn=False)
        self.pool = UnbiasedStatsPool(self.pool.in_dim)


def conv_relu_bn(in_ch: int, out_ch: int, kernel_size: int = 1, dilation: int = 1) -> nn.Sequential:
    """WeSpeaker's TDNN layer: 1-D conv → ReLU → BatchNorm (the BN cannot fold into the conv)."""
    return nn.Sequential(
        nn.Conv1d(in_ch, out_ch, kernel_size, dilation=dilation,
                  padding=dilation * (kernel_size - 1) // 2),
        nn.ReLU(inplace=True),
        nn.BatchNorm1d(out_ch),
    )


class Res2ConvReluBN(nn.Module):
    """WeSpeaker's Res2 layer: channels split into ``scale`` groups; group 0 is convolved,
    group i (1 ≤ i < scale-1) is convolved after adding the previous group's output, and
    the last group passes unchanged at the end."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int) -> None:
        super().__init__()
        if channels % scale:
            raise ValueError(f"Res2 channels {channels} not divisible by scale {scale}")
        self.width = channels // scale
        self.layers = nn.ModuleList(
            conv_relu_bn(self.width, self.width, kernel_size, dilation) for _ in range(scale - 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = torch.split(x, self.width, dim=1)
        outputs = []
        y = groups[0]
        for i, layer in enumerate(self.layers):
            if i > 0:
                y = y + groups[i]
            y = layer(y)
            outputs.append(y)
        outputs.append(groups[-1])
        return torch.cat(outputs, dim=1)


class WeSpeakerSERes2Block(nn.Module):
    """1x1 TDNN → Res2 dilated conv → 1x1 TDNN → squeeze-excitation, plus the residual."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int, se_dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_relu_bn(channels, channels),
            Res2ConvReluBN(channels, kernel_size, dilation, scale),
            conv_relu_bn(channels, channels),
            SqueezeExcitation(channels, se_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class WeSpeakerEcapaTdnn(EcapaTdnn):
    """WeSpeaker's ECAPA-TDNN: fbank ``(B, T, n_mels)`` → embedding ``(B, embed_dim)``.

    cdino's :class:`~cdino.models.ecapa_tdnn.EcapaTdnn` (its forward, pooled-stats
    BatchNorm, embedding layer and their BatchNorm folding for inference) with WeSpeaker's
    frame layers, aggregation conv and pooling in place of cdino's. ``channels`` is C (512
    or 1024 in the releases); ``aggregation_channels`` the aggregation conv's output (1536
    in WeSpeaker whatever C); ``global_context`` the ``_GLOB`` variants' pooling;
    ``embed_bn`` WeSpeaker's ``emb_bn``.
    """

    def __init__(self, n_mels: int = 80, channels: int = 512, aggregation_channels: int = 1536,
                 embed_dim: int = 192, embed_bn: bool = False, res2_scale: int = 8,
                 se_dim: int = 128, attention_dim: int = 128, global_context: bool = True) -> None:
        super().__init__(n_mels=n_mels, channels=channels, aggregation_channels=aggregation_channels,
                         embed_dim=embed_dim, embed_bn=embed_bn, res2_scale=res2_scale,
                         se_dim=se_dim, attention_dim=attention_dim, global_context=global_context)
        self.input_layer = conv_relu_bn(n_mels, channels, kernel_size=5)
        self.blocks = nn.ModuleList(
            WeSpeakerSERes2Block(channels, 3, dilation, res2_scale, se_dim) for dilation in (2, 3, 4)
        )
        self.aggregation = nn.Sequential(nn.Conv1d(3 * channels, aggregation_channels, 1),
                                         nn.ReLU(inplace=True))
        self.pool = WeSpeakerAttentivePool(aggregation_channels, attention_dim, global_context)
