"""LCA of the held-out loss, the paper's two-set stopping rule and the per-parameter adaptive
criterion, against exact oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import lca
from lca.allocate import (
    VAL_ERROR,
    VAL_HELPED,
    VAL_HURT,
    VAL_LAYERS,
    VAL_LCA,
    VAL_LOSS,
    _integrate_flat,
    panel_error,
)
from lca.measure import Measurer

F64 = torch.float64


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out.squeeze(-1) - y) ** 2).mean()


def linear_case(seed: int = 0):
    """A linear model under squared error: the loss is quadratic in θ, so its gradient is
    linear along a step and A_i = Δ_i · ∂_i L(θ + Δ/2) exactly, on any data set."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(4, 1).double()
    train = (torch.randn(40, 4, generator=g, dtype=F64), torch.randn(40, generator=g, dtype=F64))
    val = (torch.randn(30, 4, generator=g, dtype=F64), torch.randn(30, generator=g, dtype=F64))
    return model, train, val


def exact_lca(model: nn.Module, data, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Δ ⊙ ∇L(midpoint), flat in model order: the exact LCA of a quadratic loss."""
    m = Measurer(model, mse, data, dtype=F64)
    return (end - start) * m.flat_grad((start + end) / 2)


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def test_val_lca_equals_the_exact_integral_and_conserves_the_held_out_loss():
    model, train, val = linear_case()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    tracker = lca.Tracker(model, mse, train, dtype=F64, val_data=val)
    vm = Measurer(model, mse, val, dtype=F64)
    total = torch.zeros(5, dtype=F64)
    val_loss0 = vm.flat_loss_and_grad(flat(model), need_grad=False)[0]
    for t in range(4):
        start = flat(model)
        opt.zero_grad()
        mse(model(train[0][t * 10 : t * 10 + 10]), train[1][t * 10 : t * 10 + 10]).backward()
        with tracker.step():
            opt.step()
        end = flat(model)
        r = tracker.last
        exact = exact_lca(model, val, start, end)
        total += exact
        before = vm.flat_loss_and_grad(start, need_grad=False)[0]
        after = vm.flat_loss_and_grad(end, need_grad=False)[0]
        assert math.isclose(r.series[VAL_LOSS], after, rel_tol=1e-12)
        # ΣA_val = ΔL_val (Simpson is exact on a quadratic) and each A_val is the exact one.
        assert math.isclose(r.series[VAL_LCA], after - before, rel_tol=1e-9, abs_tol=1e-14)
        assert abs(r.series[VAL_ERROR]) < 1e-12
        assert np.allclose(r.series[VAL_LAYERS], [exact[:4].sum(), exact[4:].sum()], atol=1e-13)
        assert r.series[VAL_HELPED] == float((exact < 0).sum()) / 5
        assert r.series[VAL_HURT] == float((exact > 0).sum()) / 5
        # The training LCA is unchanged by measuring a second set.
        assert torch.allclose(
            torch.cat([a.reshape(-1) for a in r.per_param.values()]),
            exact_lca(model, train, start, end),
            atol=1e-13,
        )
    assert torch.allclose(tracker._val_cumulative, total, atol=1e-13)
    assert math.isclose(
        float(total.sum()),
        vm.flat_loss_and_grad(flat(model), need_grad=False)[0] - val_loss0,
        rel_tol=1e-9,
    )


def test_val_lca_costs_the_same_evaluations_on_the_second_set():
    model, train, val = linear_case(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = lca.Tracker(model, mse, train, dtype=F64, val_data=val)
    for _ in range(3):
        opt.zero_grad()
        mse(model(train[0]), train[1]).backward()
        with tracker.step():
            opt.step()
    # Simpson with the end gradient reused: 1 start + 2 per step, on each set.
    assert tracker.measurer.evaluations == tracker.val_measurer.evaluations == 1 + 2 * 3


# --- the paper's stopping rule: training AND validation within tolerance ------------------------
class ScaledQuintic(nn.Module):
    """L(θ) = mean(x) · Σ_i p_i(θ_i), p_i quintic: a set whose inputs are c times larger has c
    times the loss, so Simpson's error on it is exactly c times the training set's."""

    def __init__(self, coeffs: torch.Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.linspace(-0.5, 0.7, coeffs.shape[1], dtype=F64))
        self.register_buffer("coeffs", coeffs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        powers = torch.stack([self.theta**k for k in range(self.coeffs.shape[0])])
        return (self.coeffs * powers).sum() * x[:, 0]


def mean_out(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return out.mean()


def quintic(scale_val: float = 10.0):
    g = torch.Generator().manual_seed(3)
    coeffs = torch.randn(6, 5, generator=g, dtype=F64)
    model = ScaledQuintic(coeffs)
    delta = torch.tensor([1.5, -1.2, 0.9, -1.6, 1.1], dtype=F64)
    start = model.theta.detach().clone()
    end = start + delta
    train = (torch.ones(4, 1, dtype=F64), torch.zeros(4))
    val = (torch.full((4, 1), scale_val, dtype=F64), torch.zeros(4))
    # Simpson over n panels errs by exactly c5·Δ⁵ / (24·n⁴) per parameter (∫f − S_n f).
    c5 = coeffs[5]

    def panel_value(n: int, scale: float = 1.0) -> torch.Tensor:
        def p(th):
            return sum(coeffs[k] * th**k for k in range(6))

        return scale * (p(end) - p(start) + c5 * delta**5 / (24 * n**4))

    return model, start, end, train, val, panel_value


def _segment(model, train, val, start, end, tol, **kw):
    m = Measurer(model, mean_out, train, dtype=F64)
    vm = None if val is None else Measurer(model, mean_out, val, dtype=F64)
    loss0, g0 = m.flat_loss_and_grad(start)
    vloss0, vg0 = (None, None) if vm is None else vm.flat_loss_and_grad(start)
    from lca.allocate import FlatSpace

    space = FlatSpace.of(model, torch.device("cpu"))
    return _integrate_flat(
        m,
        space,
        start,
        end,
        "rk4-paper",
        loss_start=loss0,
        grad_start=g0,
        tolerance=tol,
        val=vm,
        val_loss_start=vloss0,
        val_grad_start=vg0,
        **kw,
    )


def test_a_step_whose_validation_error_exceeds_the_tolerance_is_refined():
    model, start, end, train, val, panel_value = quintic(scale_val=10.0)
    err = {n: abs(float((panel_value(n) - panel_value(1e6)).sum())) for n in (1, 2, 4)}
    assert err[2] < err[1]
    # Between the training error at 2 panels and the validation error (10×) there.
    tol = math.sqrt(err[2] * 10 * err[2])
    assert err[2] < tol < 10 * err[2] and tol < err[1]
    alone = _segment(model, train, None, start, end, tol)
    assert alone.splits == 2  # the training set alone is satisfied at 2 panels
    both = _segment(model, train, val, start, end, tol)
    assert both.splits == 4  # the validation error (10× the training one) needs 4
    assert torch.allclose(both.lca, panel_value(4), rtol=0, atol=1e-10)
    assert torch.allclose(both.val_lca, panel_value(4, 10.0), rtol=0, atol=1e-9)
    assert both.evaluations == both.val_evaluations == 8  # 2·4 new nodes on each set


# --- the per-parameter criterion -----------------------------------------------------------------
def test_adapt_on_parameters_refines_until_the_panel_difference_is_within_tolerance():
    model, start, end, train, _, panel_value = quintic()
    rel = {
        (a, b): panel_error(panel_value(a), panel_value(b))[0] for a, b in ((1, 2), (2, 4), (4, 8))
    }
    loose = 10.0  # the sum criterion alone never refines
    assert _segment(model, train, None, start, end, loose).splits == 1
    ptol = math.sqrt(rel[(1, 2)] * rel[(2, 4)])  # 1 vs 2 too far apart, 2 vs 4 close enough
    on = {"adapt_on": "parameters"}
    seg = _segment(model, train, None, start, end, loose, **on, param_tolerance=ptol)
    assert seg.splits == 4
    assert torch.allclose(seg.lca, panel_value(4), rtol=0, atol=1e-10)
    # A looser tolerance stops at the first comparison and keeps the finer (2-panel) result.
    seg = _segment(model, train, None, start, end, loose, **on, param_tolerance=2 * rel[(1, 2)])
    assert seg.splits == 2
    assert torch.allclose(seg.lca, panel_value(2), rtol=0, atol=1e-10)


def test_adapt_on_is_checked_and_means_nothing_to_a_fixed_rule():
    """Like the tolerance, the criterion only steers the adaptive methods; rk4 stays plain."""
    model, start, end, train, _, panel_value = quintic()
    tracker = lca.Tracker(
        model,
        mean_out,
        train,
        method="rk4",
        adapt_on="parameters",
        param_tolerance=1e-12,
        dtype=F64,
    )
    with tracker.step(), torch.no_grad():
        model.theta.copy_(end)
    assert tracker.last.splits == 1
    assert torch.allclose(tracker.last.per_param["theta"], panel_value(1), atol=1e-10)
    with pytest.raises(ValueError, match="adapt_on must be one of"):
        lca.Tracker(model, mean_out, train, method="rk4-paper", adapt_on="signs")
