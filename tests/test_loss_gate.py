"""Dynamic loss-gate: GMM threshold against the Bayes rule, modes, storage, plots."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.stats import norm

from cdino.config import from_dict
from cdino.errors import ConfigError
from cdino.pseudo.loss_gate import (GateFit, LossGate, LossGateConfig, _equal_density_point,
                                    fit_loss_gate, plot_loss_gate, plot_loss_gate_grid)


def draw(n, m, s, w, seed):
    """Samples of a 2-component Gaussian mixture and their component (1 = noisy)."""
    rng = np.random.default_rng(seed)
    comp = (rng.random(n) < w[1]).astype(int)
    x = rng.normal(np.asarray(m)[comp], np.asarray(s)[comp])
    return x, comp


def bayes_error(m, s, w):
    grid = np.linspace(min(m) - 10 * max(s), max(m) + 10 * max(s), 200_001)
    dens = np.minimum(w[0] * norm.pdf(grid, m[0], s[0]), w[1] * norm.pdf(grid, m[1], s[1]))
    return float(np.trapezoid(dens, grid))


MIXTURES = [
    ((-1.5, 1.0), (0.6, 0.5), (0.7, 0.3)),
    ((-2.0, 0.5), (0.8, 0.4), (0.8, 0.2)),
    ((0.0, 1.2), (0.5, 0.5), (0.5, 0.5)),
]


@pytest.mark.parametrize("m,s,w", MIXTURES)
def test_dynamic_threshold_matches_bayes_rule(m, s, w):
    log_losses, noisy = draw(20_000, m, s, w, seed=1)
    fit = fit_loss_gate(np.exp(log_losses), use_log=True)
    assert fit.converged and fit.log_space and fit.note == ""
    cut = math.log(fit.threshold)
    assert m[0] < cut < m[1]
    np.testing.assert_allclose(fit.means, m, atol=0.05)
    np.testing.assert_allclose(fit.stds, s, atol=0.05)
    np.testing.assert_allclose(fit.weights, w, atol=0.03)
    flagged = ~fit.reliable(np.exp(log_losses))
    err = float((flagged != noisy.astype(bool)).mean())
    assert abs(err - bayes_error(m, s, w)) < 0.01


def test_linear_space_fit():
    x, noisy = draw(5000, (1.0, 4.0), (0.5, 0.8), (0.6, 0.4), seed=2)
    fit = fit_loss_gate(x, use_log=False)
    assert not fit.log_space and 1.0 < fit.threshold < 4.0
    assert abs(float(((x > fit.threshold) != noisy).mean())
               - bayes_error((1.0, 4.0), (0.5, 0.8), (0.6, 0.4))) < 0.015


@pytest.mark.parametrize("m,s,w", [((0.0, 3.0), (1.0, 0.3), (0.4, 0.6)),
                                   ((-1.0, 2.0), (0.2, 1.5), (0.9, 0.1)),
                                   ((0.0, 1.0), (1.0, 1.0), (0.5, 0.5))])
def test_equal_density_point_is_the_crossing(m, s, w):
    m, s, w = map(np.asarray, (m, s, w))

    def f(x):
        return w[0] * norm.pdf(x, m[0], s[0]) - w[1] * norm.pdf(x, m[1], s[1])

    got = _equal_density_point(m, s, w)
    assert got == pytest.approx(brentq(f, m[0], m[1]), abs=1e-9)


def test_equal_density_point_falls_back_to_midpoint():
    # noisy component negligible everywhere between the means: no crossing there
    got = _equal_density_point(np.array([0.0, 1.0]), np.array([1.0, 0.1]), np.array([0.999, 0.001]))
    assert got == pytest.approx(0.5)


def test_degenerate_inputs_keep_everything():
    few = fit_loss_gate(np.array([0.1, 0.2, 5.0]))
    assert math.isinf(few.threshold) and "finite losses" in few.note
    const = fit_loss_gate(np.full(100, 2.3))
    assert math.isinf(const.threshold) and "constant" in const.note
    nan = fit_loss_gate(np.full(100, np.nan))
    assert math.isinf(nan.threshold) and nan.n_samples == 0
    assert const.reliable(np.array([1e9])).all()
    assert const.as_dict()["threshold"] is None
    # zeros are clamped before the log; NaN ignored
    x, _ = draw(2000, (-2.0, 1.0), (0.5, 0.5), (0.7, 0.3), seed=3)
    losses = np.concatenate([np.exp(x), np.zeros(5), np.full(7, np.nan)])
    fit = fit_loss_gate(losses)
    assert fit.n_samples == 2005 and math.isfinite(fit.threshold)
    # torch input, two-valued data
    two = fit_loss_gate(torch.tensor([0.1] * 50 + [3.0] * 50))
    assert 0.1 < two.threshold < 3.0


def test_config_is_strict():
    with pytest.raises(ConfigError, match="mode"):
        from_dict(LossGateConfig, {"mode": "adaptive"})
    with pytest.raises(ConfigError, match="warmup_epochs"):
        from_dict(LossGateConfig, {"warmup_epochs": -1})


def test_gate_modes_and_warmup():
    n = 400
    x, noisy = draw(n, (-2.0, 1.0), (0.4, 0.4), (0.7, 0.3), seed=4)
    losses = torch.from_numpy(np.exp(x)).float()
    idx = torch.arange(n)

    off = LossGate(LossGateConfig(mode="off"), n)
    off.update(idx, losses)
    assert off.fit(5) is None and off.reliable(losses).all()

    fixed = LossGate(LossGateConfig(mode="fixed", fixed_threshold=1.0, warmup_epochs=2), n)
    fixed.update(idx, losses)
    assert fixed.fit(0) is None and fixed.fit(1) is None
    assert fixed.reliable(losses).all()
    fit = fixed.fit(2)
    assert fit.threshold == 1.0 and fit.n_samples == n
    assert torch.equal(fixed.reliable(losses), losses <= 1.0)

    dyn = LossGate(LossGateConfig(warmup_epochs=1), n)
    dyn.update(idx, losses)
    assert dyn.fit(0) is None and dyn.reliable(losses).all()
    fit = dyn.fit(1)
    assert fit is not None and dyn.threshold == fit.threshold
    keep = dyn.reliable(losses)
    assert keep.dtype == torch.bool and keep.shape == (n,)
    assert (keep.numpy() == ~noisy.astype(bool)).mean() > 0.95


def test_per_sample_storage_by_index():
    n = 50
    gate = LossGate(LossGateConfig(warmup_epochs=0), n)
    assert torch.isnan(gate.losses).all()
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    first = perm[:20]
    gate.update(first, first.float() * 0.1)
    seen = ~torch.isnan(gate.losses)
    assert torch.equal(torch.nonzero(seen).flatten(), first.sort().values)
    np.testing.assert_allclose(gate.losses[first].numpy(), first.numpy() * 0.1, rtol=1e-6)
    # a later epoch overwrites, others keep their last loss
    gate.update(first[:5], torch.zeros(5, dtype=torch.float64))
    assert torch.all(gate.losses[first[:5]] == 0) and gate.losses.dtype == torch.float32
    np.testing.assert_allclose(gate.losses[first[5:]].numpy(), first[5:].numpy() * 0.1, rtol=1e-6)
    # the fit sees only the 20 stored losses
    assert gate.fit(0).n_samples == 20
    state = gate.state_dict()
    other = LossGate(LossGateConfig(warmup_epochs=0), n)
    other.load_state_dict(state)
    assert torch.equal(torch.isnan(other.losses), torch.isnan(gate.losses))
    assert other.threshold == gate.threshold
    gate.reset()
    assert torch.isnan(gate.losses).all() and gate.threshold is None
    # never-seen at epoch 0 with no warm-up: degenerate fit keeps all
    assert math.isinf(gate.fit(0).threshold)


def test_plots(tmp_path):
    x, _ = draw(3000, (-2.0, 0.5), (0.5, 0.5), (0.7, 0.3), seed=5)
    losses = np.exp(x)
    fit = fit_loss_gate(losses)
    plot_loss_gate(losses, fit, tmp_path / "gate.png", title="round 1")
    plot_loss_gate_grid([(losses, fit, "epoch 1"), (torch.from_numpy(losses), None, "warm-up"),
                         (losses, GateFit(math.inf, note="x"), "degenerate")],
                        tmp_path / "sub" / "grid.png")
    for name in ("gate.png", "sub/grid.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ValueError):
        plot_loss_gate_grid([], tmp_path / "none.png")
