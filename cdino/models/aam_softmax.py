"""Additive angular margin softmax (AAM-softmax, ArcFace; Deng et al., 2019).

Logits are ``scale · cos θ_j`` for every class j, except the target class, which gets
``scale · cos(θ_y + m)``: the embedding must be closer to its own class by the angle m.

cos(θ + m) is not monotonic in θ once θ + m > π (it rises again); there the usual
ArcFace substitute, the additive cosine margin ``cos θ − m · sin m``, is used, so the
target logit keeps decreasing as θ grows. With ``easy_margin`` the margin is only
applied where cos θ > 0. Everything is computed in fp32, also under autocast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: cos θ is clamped to [-1 + EPS, 1 - EPS] before sin θ = sqrt(1 - cos² θ).
EPS = 1e-6


class AAMSoftmax(nn.Module):
    """AAM-softmax classifier: embedding ``(B, in_dim)`` → scaled logits ``(B, n_classes)``
    to feed to cross-entropy."""

    def __init__(self, in_dim: int, n_classes: int, margin: float = 0.2, scale: float = 32.0,
                 easy_margin: bool = False) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.n_classes = n_classes
        self.margin = margin
        self.scale = scale
        self.easy_margin = easy_margin
        self.weight = nn.Parameter(torch.empty(n_classes, in_dim))
        nn.init.xavier_normal_(self.weight, gain=1.0)

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each embedding to each class centre, ``(B, n_classes)`` fp32."""
        with torch.autocast(device_type=emb.device.type, enabled=False):
            return F.linear(F.normalize(emb.float(), dim=1), F.normalize(self.weight.float(), dim=1))

    def forward(self, emb: torch.Tensor, labels: torch.Tensor,
                margin: float | torch.Tensor | None = None) -> torch.Tensor:
        """Scaled logits with the angular margin on the target class.

        ``labels``: ``(B,)`` int64 in [0, n_classes). ``margin`` overrides ``self.margin``
        (e.g. during a margin warm-up; pass a 0-d tensor to avoid recompiling under
        ``torch.compile`` when it changes every step).
        """
        return aam_logits(self.cosine(emb), labels, self.margin if margin is None else margin,
                          self.scale, self.easy_margin)

    def extra_repr(self) -> str:
        return (f"in_dim={self.in_dim}, n_classes={self.n_classes}, margin={self.margin}, "
                f"scale={self.scale}, easy_margin={self.easy_margin}")


def aam_logits(cos: torch.Tensor, labels: torch.Tensor, margin: float | torch.Tensor,
               scale: float, easy_margin: bool = False) -> torch.Tensor:
    """AAM-softmax logits from cosines ``(B, C)``: ``scale · cos θ`` with ``cos(θ + m)`` on
    each row's target class ``labels`` ``(B,)``; computed in fp32.

    Kept apart from the module so a caller can apply the margin for several label sets
    (e.g. pseudo labels and corrected labels) to one set of cosines.
    """
    with torch.autocast(device_type=cos.device.type, enabled=False):
        cos = cos.float()
        m = torch.as_tensor(margin, dtype=torch.float32, device=cos.device)
        index = labels.long().unsqueeze(1)
        target = cos.gather(1, index).clamp(-1.0 + EPS, 1.0 - EPS)
        sin = torch.sqrt(1.0 - target * target)
        shifted = target * torch.cos(m) - sin * torch.sin(m)  # cos(θ + m)
        if easy_margin:
            shifted = torch.where(target > 0, shifted, target)
        else:
            # past θ = π - m, fall back to cos θ - m·sin m (keeps the logit monotonic)
            shifted = torch.where(target > torch.cos(math.pi - m), shifted,
                                  target - m * torch.sin(m))
        return scale * cos.scatter(1, index, shifted)
