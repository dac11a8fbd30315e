"""Dynamic loss-gate (DLG): which pseudo-labelled samples to trust.

Samples whose pseudo label is wrong are hard to fit, so their classification loss stays
high. Every sample's loss from the last epoch is kept; a two-component 1-D Gaussian
mixture is fitted to the (log) losses — a *clean* component (lower mean) and a *noisy*
one — and the threshold is the point between the two means where the weighted
component densities (equivalently, the posteriors) are equal. Samples with a loss at or
under the threshold are *reliable*; the training loss is averaged over them only.

Modes: ``dynamic`` (the GMM gate, refitted every epoch), ``fixed`` (a hand-set threshold
in loss units, the older loss-gate) and ``off`` (every sample is reliable). The first
``warmup_epochs`` epochs of a round are never gated: the losses of a fresh classifier
do not yet tell clean labels from noisy ones.

    gate = LossGate(LossGateConfig(), n_samples=len(dataset), device="cuda")
    for epoch in range(epochs):
        fit = gate.fit(epoch)            # None while ungated
        for idx, x, y in loader:
            loss = F.cross_entropy(logits, y, reduction="none")
            gate.update(idx, loss)
            keep = gate.reliable(loss)
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch

from cdino.errors import ConfigError

__all__ = [
    "LossGateConfig",
    "GateFit",
    "fit_loss_gate",
    "LossGate",
    "plot_loss_gate",
    "plot_loss_gate_grid",
]

_LOG_FLOOR = 1e-8  # losses are clamped here before the log (a loss of 0 would be -inf)
_MIN_SAMPLES = 10  # fewer finite losses than this: no fit, keep every sample


@dataclass
class LossGateConfig:
    """Loss-gate settings."""

    mode: Literal["off", "fixed", "dynamic"] = "dynamic"  # dynamic: GMM threshold every epoch
    fixed_threshold: float = 5.0  # mode "fixed": threshold in loss units (cross-entropy)
    warmup_epochs: int = 1  # ungated epochs at the start of each round
    use_log: bool = True  # fit the GMM on log losses (losses are skewed; logs near-Gaussian)

    def validate(self) -> None:
        if self.warmup_epochs < 0:
            raise ConfigError(f"warmup_epochs: must be >= 0, got {self.warmup_epochs}")
        if self.mode == "fixed" and not self.fixed_threshold > 0:
            raise ConfigError(f"fixed_threshold: must be > 0, got {self.fixed_threshold}")


@dataclass
class GateFit:
    """A fitted loss gate. Components are sorted: index 0 clean (lower mean), 1 noisy."""

    threshold: float  # loss units; +inf keeps every sample
    means: np.ndarray = field(default_factory=lambda: np.full(2, np.nan))  # (2,) in fit space
    stds: np.ndarray = field(default_factory=lambda: np.full(2, np.nan))  # (2,) in fit space
    weights: np.ndarray = field(default_factory=lambda: np.full(2, np.nan))  # (2,) mixture weights
    log_space: bool = True  # means/stds describe log losses
    converged: bool = False  # EM reached its tolerance
    n_iter: int = 0  # EM iterations run
    n_samples: int = 0  # finite losses the fit saw
    note: str = ""  # why the fit is degenerate / how it was made, empty for a normal GMM fit

    def reliable(self, losses: np.ndarray | torch.Tensor):
        """Bool mask: loss <= threshold (NaN losses are not reliable)."""
        return losses <= self.threshold

    def as_dict(self) -> dict:
        """Plain values for logs and JSON (threshold ``None`` when infinite)."""
        d = asdict(self)
        for k in ("means", "stds", "weights"):
            d[k] = [float(v) for v in np.asarray(d[k])]
        d["threshold"] = None if math.isinf(self.threshold) else float(self.threshold)
        return d


def _normal_logpdf(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2.0 * np.pi)


def _equal_density_point(m: np.ndarray, s: np.ndarray, w: np.ndarray) -> float:
    """x between m[0] < m[1] where w0 N(x; m0, s0) = w1 N(x; m1, s1); midpoint if none.

    log-ratio f(x) = a x^2 + b x + c with the coefficients below; the root taken is the
    one between the means where f falls (clean posterior dropping below 1/2).
    """
    v0, v1 = s[0] ** 2, s[1] ** 2
    a = 0.5 / v1 - 0.5 / v0
    b = m[0] / v0 - m[1] / v1
    c = (0.5 * m[1] ** 2 / v1 - 0.5 * m[0] ** 2 / v0
         + np.log(w[0] / s[0]) - np.log(w[1] / s[1]))
    lo, hi = m[0], m[1]
    if abs(a) < 1e-12 * max(abs(b), 1e-300):
        roots = [-c / b] if b != 0 else []
    else:
        disc = b * b - 4 * a * c
        if disc < 0:
            roots = []
        else:
            q = -0.5 * (b + math.copysign(math.sqrt(disc), b))  # stable quadratic formula
            roots = [q / a] + ([c / q] if q != 0 else [])
    inside = [r for r in roots if lo <= r <= hi and 2 * a * r + b <= 0]
    if inside:
        return float(min(inside, key=lambda r: abs(r - 0.5 * (lo + hi))))
    return float(0.5 * (lo + hi))


def fit_loss_gate(losses: np.ndarray | torch.Tensor, use_log: bool = True, seed: int = 0,
                  *, max_iter: int = 300, tol: float = 1e-7,
                  max_samples: int = 1_000_000) -> GateFit:
    """Fit the dynamic loss-gate: 2-component 1-D GMM by EM on (log) per-sample losses.

    Non-finite losses (never-seen samples) are ignored. EM starts from the 25 % and 75 %
    quantiles with equal weights and half the overall spread, floors the variances at
    ``(1e-3 * overall std)^2`` and stops when the mean log-likelihood gains under ``tol``.
    More than ``max_samples`` losses are subsampled (with ``seed``) for speed. Fewer
    than 10 losses or (near-)constant ones give ``threshold=+inf`` (keep everything).
    """
    if isinstance(losses, torch.Tensor):
        losses = losses.detach().float().cpu().numpy()
    x = np.asarray(losses, dtype=np.float64).reshape(-1)
    x = x[np.isfinite(x)]
    n = x.size
    if n < _MIN_SAMPLES:
        return GateFit(math.inf, log_space=use_log, n_samples=n,
                       note=f"only {n} finite losses (< {_MIN_SAMPLES}): no gate, all kept")
    if use_log:
        x = np.log(np.maximum(x, _LOG_FLOOR))
    if n > max_samples:
        x = np.random.default_rng(seed).choice(x, max_samples, replace=False)
    spread = float(x.std())
    if spread <= 1e-9 * max(1.0, float(np.abs(x).mean())):
        return GateFit(math.inf, log_space=use_log, n_samples=n,
                       note="constant losses: no gate, all kept")
    var_floor = (1e-3 * spread) ** 2
    mean = np.quantile(x, [0.25, 0.75])
    if mean[1] - mean[0] < 1e-6 * spread:  # mass concentrated on one value
        mean = np.array([x.min(), x.max()])
    var = np.full(2, (0.5 * spread) ** 2)
    weight = np.full(2, 0.5)
    # With two components, log w_k N(x; m_k, s_k) = q0_k + q1_k x + q2_k x^2: the E-step
    # needs only d = log p_1 - log p_0 (responsibility sigmoid(d), log-likelihood
    # log p_0 + softplus(d)) and the M-step the sums of r, r x, r x^2 of component 1
    # (component 0's are the totals minus those). x is centred for accuracy.
    size = x.size
    shift = float(x.mean())
    xc = x - shift
    xx = xc * xc
    s1, s2 = float(xc.sum()), float(xx.sum())
    mean = mean - shift
    d, t = np.empty_like(xc), np.empty_like(xc)
    half_log_2pi = 0.5 * math.log(2.0 * math.pi)
    prev = -np.inf
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        # E-step
        q2 = -0.5 / var
        q1 = mean / var
        q0 = np.log(weight) - 0.5 * np.log(var) - half_log_2pi - 0.5 * mean ** 2 / var
        np.multiply(xx, q2[1] - q2[0], out=d)
        np.multiply(xc, q1[1] - q1[0], out=t)
        d += t
        d += q0[1] - q0[0]
        np.logaddexp(0.0, d, out=t)  # softplus(d) = log(1 + e^d)
        ll = float(q0[0] + (q1[0] * s1 + q2[0] * s2) / size + t.mean())
        np.subtract(d, t, out=t)
        np.exp(t, out=t)  # responsibility of component 1
        # M-step
        n1, x1, xx1 = float(t.sum()), float(t @ xc), float(t @ xx)
        nk = np.array([size - n1, n1]) + 1e-12
        weight = np.clip(nk / size, 1e-6, None)
        weight /= weight.sum()
        mean = np.array([s1 - x1, x1]) / nk
        var = np.maximum(np.array([s2 - xx1, xx1]) / nk - mean ** 2, var_floor)
        if ll - prev < tol:
            converged = True
            break
        prev = ll
    mean = mean + shift
    order = np.argsort(mean)
    mean, std, weight = mean[order], np.sqrt(var[order]), weight[order]
    note = ""
    if mean[1] - mean[0] < 1e-9 * spread:
        cut = float(mean[0])
        note = "components coincide: threshold at their mean"
    else:
        cut = _equal_density_point(mean, std, weight)
    threshold = float(np.exp(cut)) if use_log else cut
    return GateFit(threshold=threshold, means=mean, stds=std, weights=weight, log_space=use_log,
                   converged=converged, n_iter=it, n_samples=n, note=note)


def _process_group() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class LossGate:
    """Per-sample losses of the last epoch and the gate fitted on them — one gate for all
    ranks.

    Losses live in a tensor of size ``n_samples`` on ``device`` (NaN = never seen), so
    :meth:`update` and :meth:`reliable` are device-side and never sync with the host.
    Under ``torchrun`` each rank sees only its share of a global batch; :meth:`fit` first
    merges every rank's losses of the epoch (two all-reduces), then fits one GMM on rank 0
    and broadcasts it, so every rank gates with the same threshold whatever the number of
    ranks. :meth:`state_dict` holds the merged (global) losses, so a run resumes with any
    world size. Both are collective calls: every rank calls them together.
    """

    def __init__(self, cfg: LossGateConfig, n_samples: int,
                 device: str | torch.device | None = None, seed: int = 0):
        self.cfg = cfg
        self.seed = seed
        self.losses = torch.full((n_samples,), float("nan"), device=device)
        self.fresh = torch.zeros((n_samples,), dtype=torch.bool, device=device)  # updated here since the last merge
        self.threshold: float | None = None  # None: ungated
        self.last_fit: GateFit | None = None

    def reset(self) -> None:
        """Forget all losses and the threshold (start of a new round)."""
        self.losses.fill_(float("nan"))
        self.fresh.zero_()
        self.threshold = None
        self.last_fit = None

    @torch.no_grad()
    def update(self, indices: torch.Tensor, losses: torch.Tensor) -> None:
        """Store the per-sample losses of a batch; ``indices`` are dataset positions."""
        indices = indices.to(self.losses.device)
        self.losses[indices] = losses.detach().to(self.losses)
        self.fresh[indices] = True

    @torch.no_grad()
    def _merged(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(losses, fresh) as if one process had seen every rank's samples. Samples not
        updated since the last merge hold the same value on every rank already."""
        if _process_group()[1] == 1:
            return self.losses, self.fresh
        import torch.distributed as dist

        values = torch.where(self.fresh, self.losses, torch.zeros_like(self.losses))
        counts = self.fresh.to(self.losses.dtype)
        dist.all_reduce(values)
        dist.all_reduce(counts)
        fresh = counts > 0
        return torch.where(fresh, values / counts.clamp_min(1.0), self.losses), fresh

    def merge(self) -> None:
        """Make every rank's losses the global ones (collective)."""
        self.losses, _ = self._merged()
        self.fresh.zero_()

    def fit(self, epoch: int) -> GateFit | None:
        """Threshold for epoch ``epoch`` (0-based in the round) from the stored losses.

        Call at the start of each epoch, on every rank. Returns ``None`` (ungated) in mode
        ``off`` and during the first ``warmup_epochs`` epochs.
        """
        self.merge()
        mode = self.cfg.mode
        if mode == "off" or epoch < self.cfg.warmup_epochs:
            self.threshold, self.last_fit = None, None
            return None
        if mode not in ("fixed", "dynamic"):
            raise ConfigError(f"mode: {mode!r} is not one of 'off', 'fixed', 'dynamic'")
        rank, world = _process_group()
        fit = None
        if rank == 0:
            if mode == "fixed":
                seen = int(torch.isfinite(self.losses).sum())
                fit = GateFit(float(self.cfg.fixed_threshold), log_space=False, n_samples=seen,
                              note="fixed threshold")
            else:
                fit = fit_loss_gate(self.losses, use_log=self.cfg.use_log, seed=self.seed + epoch)
        if world > 1:  # one fit, the same threshold on every rank
            import torch.distributed as dist

            box = [fit]
            dist.broadcast_object_list(box, src=0)
            fit = box[0]
        self.threshold, self.last_fit = fit.threshold, fit
        return fit

    def reliable(self, losses: torch.Tensor) -> torch.Tensor:
        """Bool mask of reliable samples among ``losses`` (all True while ungated)."""
        if self.threshold is None:
            return torch.ones_like(losses, dtype=torch.bool)
        return losses.detach() <= self.threshold

    def state_dict(self) -> dict:
        """Resumable state: the global losses (merged over ranks; a collective call), which of
        them this epoch updated, and the threshold."""
        losses, fresh = self._merged()
        return {"losses": losses.detach().cpu(), "fresh": fresh.cpu(), "threshold": self.threshold}

    def load_state_dict(self, state: dict) -> None:
        self.losses.copy_(state["losses"].to(self.losses))
        fresh = state.get("fresh")
        self.fresh.zero_()
        if fresh is not None and _process_group()[0] == 0:
            # Rank 0 alone holds the epoch's updates so far: the next merge counts them once.
            self.fresh.copy_(fresh.to(self.fresh.device))
        self.threshold = state["threshold"]


# -------------------------------------------------------------------------- plotting


def _draw(ax, losses, fit: GateFit | None, title: str) -> None:
    x = np.asarray(losses.detach().float().cpu() if isinstance(losses, torch.Tensor) else losses,
                   dtype=np.float64).reshape(-1)
    x = x[np.isfinite(x)]
    log_space = fit.log_space if fit is not None else True
    if log_space:
        x = np.log(np.maximum(x, _LOG_FLOOR))
    ax.hist(x, bins=60, density=True, color="0.75", label=f"losses (n={x.size})")
    if fit is not None and np.all(np.isfinite(fit.means)) and x.size:
        grid = np.linspace(x.min(), x.max(), 400)
        parts = [w * np.exp(_normal_logpdf(grid, m, s))
                 for m, s, w in zip(fit.means, fit.stds, fit.weights)]
        ax.plot(grid, parts[0], color="tab:green", label="clean component")
        ax.plot(grid, parts[1], color="tab:red", label="noisy component")
        ax.plot(grid, parts[0] + parts[1], color="k", lw=0.8, ls=":", label="mixture")
    if fit is not None and math.isfinite(fit.threshold):
        cut = math.log(max(fit.threshold, _LOG_FLOOR)) if log_space else fit.threshold
        kept = float((x <= cut).mean()) if x.size else float("nan")
        ax.axvline(cut, color="tab:blue", ls="--",
                   label=f"threshold {fit.threshold:.3g} ({100 * kept:.0f}% reliable)")
    ax.set_xlabel("log loss" if log_space else "loss")
    ax.set_ylabel("density")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7)


def plot_loss_gate(losses, fit: GateFit | None, path: str | os.PathLike, title: str = "") -> None:
    """Histogram of the (log) losses with both weighted GMM components and the threshold."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    fig = Figure(figsize=(6, 4))
    _draw(fig.add_subplot(), losses, fit, title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)


def plot_loss_gate_grid(panels: list[tuple], path: str | os.PathLike) -> None:
    """One PNG of several gates, e.g. one panel per epoch: ``[(losses, fit, title), ...]``."""
    from matplotlib.figure import Figure

    if not panels:
        raise ValueError("no panels to plot")
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig = Figure(figsize=(5 * cols, 3.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (losses, fit, title) in zip(axes.ravel(), panels):
        _draw(ax, losses, fit, title)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
