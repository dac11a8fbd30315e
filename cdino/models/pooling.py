"""Pooling of frame-level features into one utterance-level vector.

Both poolings take ``(B, C, T)`` frame features and return ``(B, 2C)`` = [mean; std]
over time. Statistics are computed in fp32 (and returned in fp32 under bf16/fp16
autocast) and the variance is clamped before the square root, so silent or constant
inputs give finite outputs and gradients.

The moments are two small autograd functions rather than chains of tensor operations.
On a CPU these ``(B, C, T)`` passes are limited by memory bandwidth, and autograd's
chain behind ``x * x``, ``x * w`` and ``x * x * w`` (a product and an accumulation per
factor) wrote several frame-sized tensors more than the closed-form gradients need. The
frame tensor is also cast to fp32 once, not once per statistic. Under TorchScript
tracing (ONNX export) the plain operations are used: they compute the same function.
"""

from __future__ import annotations

import torch
from torch import nn

#: Smallest variance allowed before the square root (keeps std and its gradient finite).
VARIANCE_FLOOR = 1e-5


def as_pooled_output(stats: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """fp32 statistics, or, for a model run wholly in low precision (no autocast), the
    input's dtype so the next layer's parameters match."""
    if x.dtype != stats.dtype and not torch.is_autocast_enabled(x.device.type):
        return stats.to(x.dtype)
    return stats


class Moments(torch.autograd.Function):
    """``(mean_t x, mean_t x²)`` of a ``(B, C, T)`` tensor."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(x)
        t = x.shape[-1]
        return x.mean(dim=-1), (x * x).sum(dim=-1) / t

    @staticmethod
    def backward(ctx, g_mean: torch.Tensor, g_second: torch.Tensor):
        (x,) = ctx.saved_tensors
        t = x.shape[-1]
        # d/dx: g_mean / T + 2 x g_second / T, one pass over x
        return torch.addcmul((g_mean / t).unsqueeze(-1), x, (2.0 / t * g_second).unsqueeze(-1))


class WeightedMoments(torch.autograd.Function):
    """``(sum_t w x, sum_t w x²)`` of ``(B, C, T)`` tensors ``x`` and ``w``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(x, w)
        xw = x * w
        return xw.sum(dim=-1), (xw * x).sum(dim=-1)

    @staticmethod
    def backward(ctx, g_mean: torch.Tensor, g_second: torch.Tensor):
        x, w = ctx.saved_tensors
        g_mean, g_second = g_mean.unsqueeze(-1), g_second.unsqueeze(-1)
        part = torch.addcmul(g_mean, x, g_second)  # g_mean + x g_second
        grad_w = part * x if ctx.needs_input_grad[1] else None  # x g_mean + x² g_second
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.addcmul(part, x, g_second).mul_(w)  # w (g_mean + 2 x g_second)
        return grad_x, grad_w


def use_plain_ops() -> bool:
    """True while TorchScript traces the model (ONNX export): no Python autograd functions."""
    return torch.jit.is_tracing() or torch.jit.is_scripting()


def _mean_std(x: torch.Tensor, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation over the last axis (optionally weighted), in fp32.

    ``x`` is cast to fp32 here unless it already is (a caller that pools one tensor twice
    casts it once)."""
    x = x.float()
    if use_plain_ops():
        if weights is None:
            mean, second = x.mean(dim=-1), (x * x).mean(dim=-1)
        else:
            mean, second = (x * weights).sum(dim=-1), (x * x * weights).sum(dim=-1)
    elif weights is None:
        mean, second = Moments.apply(x)
    else:
        mean, second = WeightedMoments.apply(x, weights.float())
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
        return as_pooled_output(torch.cat([mean, std], dim=1), x)


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
        x32 = x.float()  # cast once for both statistics
        if self.context_proj is not None:
            mean, std = _mean_std(x32)
            context = self.context_proj(torch.cat([mean, std], dim=1).to(hidden.dtype))
            hidden = hidden + context.unsqueeze(-1)
        scores = self.score(torch.tanh(hidden))
        weights = torch.softmax(scores.float(), dim=-1)
        mean, std = _mean_std(x32, weights)
        return as_pooled_output(torch.cat([mean, std], dim=1), x)
