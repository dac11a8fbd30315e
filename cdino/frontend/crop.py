"""Random fixed-length crops of a padded batch of utterances, on the batch's device.

DINO's multi-crop views (e.g. 2 global × 3 s and 4 local × 2 s per utterance) are cut
here with index arithmetic: one gather for all crops of all utterances, no Python loop
over items and no host synchronisation.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """U[0, 1) draws from ``generator`` (on its own device), delivered on ``device``."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where).to(device, non_blocking=True)


def random_crops(wave: Tensor, lengths: Tensor, crop_samples: int, n_crops: int,
                 generator: torch.Generator | None = None) -> Tensor:
    """``n_crops`` random contiguous crops of ``crop_samples`` from each utterance.

    ``wave`` is ``(B, T)`` (zero-padded), ``lengths`` ``(B,)`` the valid samples of each
    row. A crop lies inside the valid region; an utterance shorter than the crop is
    repeated (tiled, from a random offset) to fill it. Returns ``(B, n_crops, crop_samples)``.
    """
    if wave.dim() != 2:
        raise ValueError(f"random_crops expects a (batch, samples) waveform, got shape {tuple(wave.shape)}")
    batch, total = wave.shape
    device = wave.device
    length = lengths.to(device=device, dtype=torch.long).clamp(1, total)[:, None]  # (B, 1)
    # Start positions: uniform over the valid region; over one period when tiling.
    span = torch.where(length >= crop_samples, length - crop_samples + 1, length)
    start = (_uniform((batch, n_crops), generator, device) * span).long().clamp_max(span - 1)
    if device.type != "cpu" or total < crop_samples:
        return _tiled_crops(wave, length, start, crop_samples)
    # CPU: copy whole rows of a sliding-window view (no per-sample index), then redo the
    # few utterances shorter than the crop (finding them costs no device sync here).
    rows = torch.arange(batch)[:, None]
    out = wave.unfold(-1, crop_samples, 1)[rows, start.clamp_max(total - crop_samples)]
    short = (length[:, 0] < crop_samples).nonzero().squeeze(1)
    if short.numel():
        out[short] = _tiled_crops(wave[short], length[short], start[short], crop_samples)
    return out


def _tiled_crops(wave: Tensor, length: Tensor, start: Tensor, crop_samples: int) -> Tensor:
    """Crops ``(B, K, crop)`` of samples ``(start + j) mod length``: one gather."""
    batch, total = wave.shape
    offset = torch.arange(crop_samples, device=wave.device)
    index = (start[..., None] + offset) % length[..., None]  # no-op unless shorter than the crop
    index = index + total * torch.arange(batch, device=wave.device)[:, None, None]
    return wave.reshape(-1)[index]
