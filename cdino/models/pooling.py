"""Pooling of frame-level features into one utterance-level vector.

Both poolings take ``(B, C, T)`` frame features and return ``(B, 2C)`` = [mean; std]
over time. Statistics are computed in fp32 (and returned in fp32 under bf16/fp16
autocast) and the variance is clamped before the square root, so silent or constant
inputs give finite outputs and gradients.
"""

from __future__ import annotations

import torch
from torch import nn

#: Smallest variance allowed before the square root (keeps std and its gradient finite).
VARIANCE_FLOOR = 1e-5


def _as_output(stats: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """fp32 statistics, or, for a model run wholly in low precision (no autocast), the
    input's dtype so the next layer's parameters match."""
    if x.dtype != stats.dtype and not torch.is_autocast_enabled(x.device.type):
        return stats.to(x.dtype)
    return stats


def _mean_std(x: torch.Tensor, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation over the last axis (optionally weighted), in fp32."""
    x = x.float()
    if weights is None:
        mean = x.mean(dim=-1)
        second = (x * x).mean(dim=-1)
    else:
        mean = (x * weights).sum(dim=-1)
        second = (x * x * weights).sum(dim=-1)
    var = (second - mean * mean).clamp(min=VARIANCE_FLOOR)
    return mean, var.sqrt()


class TemporalStatsPool(nn.Module):
    """Temporal statistics pooling: mean and standard deviation of each channel over time."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = 2 * in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T) -> (B, 2C)``."""
        mean, std = _mean_std(x)
        return _as_output(torch.cat([mean, std], dim=1), x)


class AttentiveStatsPool(nn.Module):
    """Channel-wise attentive statistics pooling (ECAPA-TDNN).

    Each channel gets its own softmax attention over frames, scored by a small
    two-layer network. With ``global_context`` the scorer also sees the utterance's
    unweighted mean and std of every channel, i.e. it scores ``[x_t; mean; std]``.
    The concatenation is never built: the first layer's weight is split into a part for
    ``x_t`` (a 1x1 conv) and a part for ``[mean; std]`` (a per-utterance bias), which is
    the same function with a third of the multiply-adds and memory.
    """

    def __init__(self, in_dim: int, attention_dim: int = 128, global_context: bool = True) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = 2 * in_dim
        self.global_context = global_context
        self.frame_proj = nn.Conv1d(in_dim, attention_dim, kernel_size=1)
        self.context_proj = nn.Linear(2 * in_dim, attention_dim, bias=False) if global_context else None
        self.score = nn.Conv1d(attention_dim, in_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T) -> (B, 2C)``."""
        hidden = self.frame_proj(x)
        if self.context_proj is not None:
            mean, std = _mean_std(x)
            context = self.context_proj(torch.cat([mean, std], dim=1).to(hidden.dtype))
            hidden = hidden + context.unsqueeze(-1)
        scores = self.score(torch.tanh(hidden))
        weights = torch.softmax(scores.float(), dim=-1)
        mean, std = _mean_std(x, weights)
        return _as_output(torch.cat([mean, std], dim=1), x)
