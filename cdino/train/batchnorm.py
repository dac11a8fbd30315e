"""BatchNorm statistics of a domain: a trained encoder's running means and variances
re-estimated on recordings of the domain it will embed (AdaBN, Li et al. 2016), with no
labels and no gradient. Used by the label-free alignment to a new domain
(:mod:`cdino.train.domain`) and after a joint pseudo-label round, whose batches mixed a
labelled folder's recordings with the unlabelled domain's (:mod:`cdino.train.stages`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cdino.data.audio import SAMPLE_RATE
from cdino.data.loader import random_crop


@torch.no_grad()
def target_batchnorm(encoder: nn.Module, fbank: nn.Module, store, device, seconds: float = 3.0,
                     batch: int = 32, batches: int = 60, seed: int = 0) -> int:
    """Re-estimate every BatchNorm layer's running statistics of ``encoder`` on random
    ``seconds``-long crops of the store's recordings (``batches`` batches of ``batch``
    crops, no augmentation): the cumulative average over those batches. Returns the number
    of layers updated; the encoder is left in eval mode."""
    layers = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
              and m.track_running_stats]
    saved = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    encoder.train()
    try:
        for _ in range(batches):
            rows = rng.integers(0, len(store), batch)
            wave = torch.from_numpy(np.stack([random_crop(store, int(i), n, rng) for i in rows])).to(device)
            encoder(fbank(wave))
    finally:
        for m, momentum in zip(layers, saved):
            m.momentum = momentum
        encoder.eval()
    return len(layers)
