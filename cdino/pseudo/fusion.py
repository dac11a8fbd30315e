"""Multi-modal pseudo labels: audio + visual embeddings in clustering and in DLG-LC.

An utterance may carry a second view of its speaker (a face track's embedding); any
utterance may lack it. The visual view enters at three places:

**Clustering input** (:func:`fuse_embeddings`). Each row becomes
``[a / |a|, sqrt(w) * v / |v|]``, so for two rows with both views the cosine that
spherical k-means sees is ``(cos_audio + w * cos_visual) / (1 + w)``: ``w`` is the
visual view's weight relative to audio (``w = 1``: equal say; ``w = 0``: audio only).
A row without a visual view gets, in its visual block, the *mean* normalised visual
vector of its ``n_neighbors`` nearest audio neighbours that have one (not re-normalised).
When those neighbours agree (same speaker) the block is close to that speaker's face
and the row clusters like a full row; when they disagree the mean is short and the row
falls back to its audio part. Zeros would instead make audio-only rows resemble each
other and drift into clusters of their own. The imputation costs one audio
nearest-neighbour search against at most ``max_reference`` rows with a visual view.

**Reliability** (:func:`multimodal_reliable`). Each modality has its own classifier and
loss-gate. Rule ``both``: a row with both views is reliable when both gates pass it
(the modalities agree with the label); ``either``: when one of them does; ``fused``: one
gate on the loss of the joint prediction (:func:`joint_loss`). Rows with only audio use
the audio decision.

**Label correction** (:func:`joint_prediction`) uses the average of the two
modalities' class probabilities where both exist, the audio probabilities elsewhere.

**Weight.** A fixed weight trusts the visual view blindly: random visual vectors at
``w = 1`` cost 0.3 NMI on the test data of ``tests/test_fusion.py``. The default
``visual_weight = "auto"`` therefore scales ``w`` (at most 1) by how well the views agree
without labels (:func:`estimate_visual_weight`): an informative view gets ``w`` about
0.75 there, a useless one about 0, which leaves clustering as good as audio alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from cdino.errors import ConfigError, DataError

__all__ = [
    "FusionConfig",
    "estimate_visual_weight",
    "fuse_embeddings",
    "fuse",
    "align_visual",
    "multimodal_reliable",
    "joint_prediction",
    "joint_loss",
]


@dataclass
class FusionConfig:
    """Audio-visual pseudo-labelling settings."""

    visual_weight: float | Literal["auto"] = "auto"  # weight w of the visual block, fused
    # cos = (cos_a + w cos_v) / (1 + w); "auto": w = agreement of the views in [0, 1]
    reliability: Literal["both", "either", "fused"] = "both"  # how two gates combine
    n_neighbors: int = 10  # audio neighbours whose visual vectors fill a missing visual block
    max_reference: int = 50_000  # at most this many rows with a visual view are searched

    def validate(self) -> None:
        if self.visual_weight != "auto" and self.visual_weight < 0:
            raise ConfigError(f"visual_weight: must be >= 0, got {self.visual_weight}")
        if self.n_neighbors < 1:
            raise ConfigError(f"n_neighbors: must be >= 1, got {self.n_neighbors}")
        if self.max_reference < 1:
            raise ConfigError(f"max_reference: must be >= 1, got {self.max_reference}")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _neighbour_mean(query: np.ndarray, ref: np.ndarray, values: np.ndarray, k: int,
                    device: str | torch.device | None) -> np.ndarray:
    """Mean of ``values`` over each query's ``k`` highest-cosine rows of ``ref`` (unit rows)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    q = torch.from_numpy(query).to(dev)
    r = torch.from_numpy(ref).to(dev)
    v = torch.from_numpy(values).to(dev)
    k = min(k, r.shape[0])
    out = torch.empty(q.shape[0], v.shape[1], device=dev)
    step = max(1, (1 << 24) // max(r.shape[0], 1))
    for i in range(0, q.shape[0], step):
        top = torch.topk(q[i:i + step] @ r.T, k, dim=1).indices
        out[i:i + step] = v[top].mean(1)
    return out.cpu().numpy()


def estimate_visual_weight(audio: np.ndarray, visual: np.ndarray, has_visual: np.ndarray,
                           max_weight: float = 1.0, *, k: int = 10, max_rows: int = 4000,
                           seed: int = 0) -> tuple[float, float]:
    """Automatic visual weight ``max_weight * agreement`` and the ``agreement`` itself.

    Agreement measures, without labels, whether the visual view tells the same speakers
    apart as audio: over rows with both views (a sample of at most ``max_rows``), the
    mean audio cosine of each row's ``k`` visual nearest neighbours, relative to chance
    (all pairs) and to its ``k`` audio nearest neighbours:

        agreement = clip((A_visual_nn - A_all) / (A_audio_nn - A_all), 0, 1)

    About 0 for a visual view unrelated to the speakers (random or channel-driven
    vectors), large when visual neighbours are also audio-similar. Too few rows to judge
    (``< k + 2``) or audio without structure give agreement 1.
    """
    a = _unit(np.asarray(audio, dtype=np.float32))
    v = _unit(np.asarray(visual, dtype=np.float32))
    rows = np.flatnonzero(np.asarray(has_visual, dtype=bool))
    if rows.size < k + 2:
        return float(max_weight), 1.0
    if rows.size > max_rows:
        rows = np.random.default_rng(seed).choice(rows, max_rows, replace=False)
    ta = torch.from_numpy(a[rows]).double()
    tv = torch.from_numpy(v[rows]).double()
    cos_a = ta @ ta.T
    cos_v = tv @ tv.T
    n = rows.size
    eye = torch.eye(n, dtype=torch.bool)
    base = float(cos_a.masked_fill(eye, 0.0).sum() / (n * (n - 1)))
    nn_v = cos_v.masked_fill(eye, -np.inf).topk(k, dim=1).indices
    nn_a = cos_a.masked_fill(eye, -np.inf).topk(k, dim=1).indices
    via_visual = float(cos_a.gather(1, nn_v).mean())
    via_audio = float(cos_a.gather(1, nn_a).mean())
    if via_audio - base <= 1e-9:
        return float(max_weight), 1.0
    agreement = float(np.clip((via_visual - base) / (via_audio - base), 0.0, 1.0))
    return float(max_weight) * agreement, agreement


def fuse_embeddings(audio: np.ndarray, visual: np.ndarray | None, has_visual: np.ndarray | None,
                    weight: float | str = "auto", *, n_neighbors: int = 10,
                    max_reference: int = 50_000, seed: int = 0,
                    device: str | torch.device | None = None) -> np.ndarray:
    """Clustering input ``[a/|a|, sqrt(weight) * v/|v|]`` (N, Da + Dv), float32.

    ``visual`` (N, Dv) is aligned with ``audio`` (see :func:`align_visual`); rows where
    ``has_visual`` is False get the neighbour-mean visual block described in the module
    docstring. ``weight="auto"`` uses :func:`estimate_visual_weight` (at most 1).
    Without a visual modality (``visual is None``) the normalised audio is returned.
    """
    a = _unit(np.asarray(audio, dtype=np.float32))
    if a.ndim != 2:
        raise ValueError(f"audio must be (N, Da); got shape {a.shape}")
    if visual is None:
        return a.astype(np.float32)
    v = np.asarray(visual, dtype=np.float32)
    has = np.asarray(has_visual, dtype=bool).reshape(-1) if has_visual is not None \
        else np.ones(a.shape[0], dtype=bool)
    if v.ndim != 2 or v.shape[0] != a.shape[0] or has.size != a.shape[0]:
        raise ValueError(f"visual {v.shape} and has_visual {has.shape} must have one row per "
                         f"audio row ({a.shape[0]})")
    if weight == "auto":
        weight, _ = estimate_visual_weight(a, v, has, 1.0, seed=seed)
    elif isinstance(weight, str) or weight < 0:
        raise ValueError(f"weight must be 'auto' or a number >= 0; got {weight!r}")
    block = np.zeros_like(v)
    block[has] = _unit(v[has])
    missing = np.flatnonzero(~has)
    ref = np.flatnonzero(has)
    if missing.size and ref.size:
        if ref.size > max_reference:
            ref = np.sort(np.random.default_rng(seed).choice(ref, max_reference, replace=False))
        block[missing] = _neighbour_mean(a[missing], a[ref], block[ref], n_neighbors, device)
    fused = np.concatenate([a, np.float32(np.sqrt(weight)) * block], axis=1)
    return fused.astype(np.float32)


def fuse(audio: np.ndarray, visual: np.ndarray | None, has_visual: np.ndarray | None,
         cfg: FusionConfig, *, seed: int = 0,
         device: str | torch.device | None = None) -> tuple[np.ndarray, float]:
    """:func:`fuse_embeddings` with a :class:`FusionConfig`; returns ``(fused, weight used)``."""
    weight = cfg.visual_weight
    if visual is not None and weight == "auto":
        weight, _ = estimate_visual_weight(audio, visual, has_visual, 1.0, seed=seed)
    fused = fuse_embeddings(audio, visual, has_visual, weight, n_neighbors=cfg.n_neighbors,
                            max_reference=cfg.max_reference, seed=seed, device=device)
    return fused, float(weight) if visual is not None else 0.0


def align_visual(utts: list[str], visual_utts: list[str], visual: np.ndarray, *,
                 dim: int | None = None,
                 where: str = "visual_utts.txt") -> tuple[np.ndarray, np.ndarray]:
    """Rows of a visual file placed in training-utterance order.

    Returns ``(array (N, Dv) float32, has_visual (N,) bool)``; rows of utterances without
    a visual view are zeros. ``where`` names the file in error messages. An id unknown
    to ``utts``, a duplicate id, a row count or dimension mismatch or a non-finite row
    raise :class:`~cdino.errors.DataError`.
    """
    v = np.asarray(visual)
    if v.ndim != 2:
        raise DataError(f"{where}: visual embeddings must be a 2-D array, got shape {v.shape}")
    if v.shape[0] != len(visual_utts):
        raise DataError(f"{where}: {len(visual_utts)} utterance ids but {v.shape[0]} visual rows")
    if dim is not None and v.shape[1] != dim:
        raise DataError(f"{where}: visual embeddings have dimension {v.shape[1]}, expected {dim}")
    position = {u: i for i, u in enumerate(utts)}
    out = np.zeros((len(utts), v.shape[1]), dtype=np.float32)
    has = np.zeros(len(utts), dtype=bool)
    finite = np.isfinite(v).all(1)
    for row, u in enumerate(visual_utts):
        i = position.get(u)
        if i is None:
            raise DataError(f"{where}: utterance '{u}' (row {row + 1}) is not in the data")
        if has[i]:
            raise DataError(f"{where}: utterance '{u}' appears twice (row {row + 1})")
        if not finite[row]:
            raise DataError(f"{where}: visual embedding of '{u}' (row {row + 1}) is not finite")
        out[i] = v[row]
        has[i] = True
    return out, has


def _where(cond, a, b):
    if isinstance(cond, torch.Tensor):
        return torch.where(cond, a, b)
    return np.where(cond, a, b)


def multimodal_reliable(audio_reliable, visual_reliable, has_visual, rule: str = "both",
                        fused_reliable=None):
    """Reliable mask of rows from per-modality gate decisions (tensors or arrays of bool).

    ``both``: audio and visual gates agree the label is right; ``either``: one of them
    does; ``fused``: ``fused_reliable`` (the gate on :func:`joint_loss`) decides. Rows
    without a visual view always use ``audio_reliable``.
    """
    if rule == "both":
        joint = audio_reliable & visual_reliable
    elif rule == "either":
        joint = audio_reliable | visual_reliable
    elif rule == "fused":
        if fused_reliable is None:
            raise ValueError("rule 'fused' needs fused_reliable (the gate on joint_loss)")
        joint = fused_reliable
    else:
        raise ValueError(f"rule must be 'both', 'either' or 'fused'; got {rule!r}")
    return _where(has_visual, joint, audio_reliable)


def joint_prediction(audio_probs, visual_probs, has_visual):
    """Class probabilities (B, C): mean of both modalities where a visual view exists."""
    both = 0.5 * (audio_probs + visual_probs)
    return _where(has_visual[:, None], both, audio_probs)


def joint_loss(audio_probs: torch.Tensor, visual_probs: torch.Tensor, labels: torch.Tensor,
               has_visual: torch.Tensor) -> torch.Tensor:
    """Per-sample ``-log p(label)`` of :func:`joint_prediction` (for the ``fused`` rule)."""
    p = joint_prediction(audio_probs, visual_probs, has_visual)
    return -torch.log(p.gather(1, labels[:, None]).squeeze(1).clamp(min=1e-12))
