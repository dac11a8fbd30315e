"""Embeddings of the training store, for clustering during and between training runs.

Each utterance is embedded from its central ``max_seconds`` (the whole utterance when it is
shorter); utterances are grouped by equal length so batches stack exactly. Under
``torchrun`` each rank embeds every ``world``-th batch and the results are gathered, so
re-clustering a million utterances is split over the GPUs.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from cdino.data.audio import SAMPLE_RATE
from cdino.testing.faults import fault_point


@torch.no_grad()
def embed_store(encoder: nn.Module, frontend: nn.Module, store, device: torch.device,
                max_seconds: float = 6.0, batch_seconds: float = 240.0,
                progress: bool = False, desc: str = "embedding") -> np.ndarray:
    """(N, D) float32 embeddings of every utterance in ``store`` (in store order)."""
    from tqdm import tqdm

    was_training = encoder.training
    encoder.eval()
    max_n = int(max_seconds * SAMPLE_RATE)
    n_utts = len(store)
    lengths = np.array([min(store.num_samples(i), max_n) for i in range(n_utts)])
    # Bucket lengths to 0.1 s so equal-length groups are large; the crop is the centre.
    quantum = SAMPLE_RATE // 10
    lengths = np.maximum(quantum, (lengths // quantum) * quantum)
    order = np.argsort(lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < n_utts:
        n = lengths[order[start]]
        per = max(1, int(batch_seconds * SAMPLE_RATE // n))
        stop = start
        while stop < n_utts and stop - start < per and lengths[order[stop]] == n:
            stop += 1
        batches.append(order[start:stop])
        start = stop
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    out = None
    mine = batches[rank::world]
    for idx in tqdm(mine, desc=desc, disable=not progress, leave=False, unit="batch"):
        n = int(lengths[idx[0]])
        waves = np.stack([
            store.read(int(i), max(0, (store.num_samples(int(i)) - n) // 2), n)[:n] for i in idx])
        wave = torch.from_numpy(waves).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            emb = encoder(frontend(wave, augment=False)).float()
        if out is None:
            out = torch.zeros(n_utts, emb.shape[1], device=device)
        out[torch.as_tensor(idx, device=device)] = emb
        fault_point("extraction")
    if out is None:  # this rank had no batch
        dim = getattr(encoder, "embed_dim", 1)
        out = torch.zeros(n_utts, dim, device=device)
    if world > 1:
        dist.all_reduce(out)  # every row was written by exactly one rank
    if was_training:
        encoder.train()
    return out.cpu().numpy().astype(np.float32)
