"""The LCA engine against exact oracles (REFERENCE §1)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import lca
from lca import integrate
from lca.allocate import integrate_segment, sum_units, unit_layout
from lca.measure import Measurer

F64 = torch.float64


# --- a separable loss L(θ) = Σ_i f_i(θ_i), whose exact LCA is f_i(end) − f_i(start) ---------------
class Separable(nn.Module):
    def __init__(self, coeffs: torch.Tensor, n: int = 5) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.linspace(-0.5, 0.7, n, dtype=F64))
        self.register_buffer("coeffs", coeffs)  # (degree+1, n): Σ_k c_k θ^k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        powers = torch.stack([self.theta**k for k in range(self.coeffs.shape[0])])
        value = (self.coeffs * powers).sum()
        return value + 0 * x[:, 0]  # one "loss" per example, all equal


class Smooth(nn.Module):
    """Separable but not polynomial: f_i(θ) = sin(3θ) + exp(θ), for convergence orders."""

    def __init__(self, n: int = 5) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.linspace(-0.5, 0.7, n, dtype=F64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.sin(3 * self.theta) + torch.exp(self.theta)).sum() + 0 * x[:, 0]


def mean_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return out.mean()


def poly(coeffs: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    return sum(coeffs[k] * theta**k for k in range(coeffs.shape[0]))


def separable_case(degree: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    coeffs = torch.randn(degree + 1, 5, generator=g, dtype=F64)
    model = Separable(coeffs)
    start = {"theta": model.theta.detach().clone()}
    end = {"theta": start["theta"] + 0.3 * torch.randn(5, generator=g, dtype=F64)}
    data = (torch.zeros(4, 1, dtype=F64), torch.zeros(4))
    exact = poly(coeffs, end["theta"]) - poly(coeffs, start["theta"])
    return model, start, end, data, exact


@pytest.mark.parametrize(
    "method,exact_degree", [("euler", 1), ("trapezoid", 2), ("rk4", 4), ("gauss2", 4)]
)
def test_each_rule_is_exact_up_to_its_degree_and_not_beyond(method, exact_degree):
    for degree in range(1, 5):
        model, start, end, data, exact = separable_case(degree)
        a = lca.allocate(model, mean_loss, data, start, end, method=method, dtype=F64)
        err = (a.per_param["theta"] - exact).abs().max().item()
        if degree <= exact_degree:
            assert err < 1e-12, (method, degree, err)
        else:
            assert err > 1e-6, (method, degree, err)  # the oracle can tell rules apart


def test_loss_conserved_and_totals_agree():
    model, start, end, data, exact = separable_case(4)
    a = lca.allocate(model, mean_loss, data, start, end, method="rk4", dtype=F64)
    assert math.isclose(a.total, float(exact.sum()), abs_tol=1e-12)
    assert abs(a.error) < 1e-12
    assert math.isclose(a.loss_end - a.loss_start, float(exact.sum()), abs_tol=1e-12)


@pytest.mark.parametrize("method,ratio", [("euler", 4), ("trapezoid", 8), ("rk4", 32)])
def test_order_of_convergence(method, ratio):
    model = Smooth()
    data = (torch.zeros(2, 1, dtype=F64), torch.zeros(2))
    start = {"theta": model.theta.detach().clone()}
    direction = torch.tensor([0.3, -0.2, 0.25, 0.1, -0.35], dtype=F64)
    errors = []
    for h in (0.1, 0.05, 0.025):
        end = {"theta": start["theta"] + h * direction}
        a = lca.allocate(model, mean_loss, data, start, end, method=method, dtype=F64)
        errors.append(abs(a.error))
    for coarse, fine in zip(errors, errors[1:], strict=False):
        assert 0.7 * ratio < coarse / fine < 1.35 * ratio, (method, errors)


# --- a real network ----------------------------------------------------------------------------
def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 3))


def bn_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )


def blobs(n: int = 120, shape=(6,), seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, 3, (n,), generator=g)


def moved(model: nn.Module, scale: float = 0.05, seed: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        n: p.detach() + scale * torch.randn(p.shape, generator=g)
        for n, p in model.named_parameters()
    }


def test_unmoved_parameters_get_exactly_zero():
    model = mlp()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    end = {n: t.clone() for n, t in start.items()}
    end["0.weight"][2, :] += 0.1  # only one row of one tensor moves
    a = lca.allocate(model, nn.CrossEntropyLoss(), blobs(), start, end)
    for name, values in a.per_param.items():
        if name != "0.weight":
            assert torch.count_nonzero(values) == 0
    rows = a.per_param["0.weight"]
    assert torch.count_nonzero(rows[2]) > 0
    assert torch.count_nonzero(torch.cat([rows[:2], rows[3:]])) == 0


def test_chunk_size_does_not_change_lca_without_batchnorm():
    model = mlp()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    end = moved(model)
    whole = lca.allocate(
        model, nn.CrossEntropyLoss(), blobs(), start, end, dtype=F64, chunk_size=1000
    )
    chunked = lca.allocate(
        model, nn.CrossEntropyLoss(), blobs(), start, end, dtype=F64, chunk_size=7
    )  # uneven last chunk: per-example averaging matters
    for n in whole.per_param:
        torch.testing.assert_close(whole.per_param[n], chunked.per_param[n], rtol=1e-10, atol=1e-14)
    assert math.isclose(whole.loss_start, chunked.loss_start, rel_tol=1e-12)


def test_gradient_only_evaluation_equals_the_full_one():
    """Interior quadrature nodes skip the loss read-back; the gradient must not change."""
    model = mlp()
    m = Measurer(model, nn.CrossEntropyLoss(), blobs(), chunk_size=7)
    flat = m.flatten(dict(model.named_parameters())) + 0.01
    _, full = m.flat_loss_and_grad(flat)
    assert torch.equal(m.flat_grad(flat), full)
    assert m.evaluations == 2 and m.loss_evaluations == 0


def test_units_tensors_and_total_agree_for_linear_conv_and_batchnorm():
    model = bn_cnn()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    a = lca.allocate(
        model, nn.CrossEntropyLoss(), blobs(60, (1, 6, 6)), start, moved(model), dtype=F64
    )
    groups = unit_layout(model)
    assert [g.name for g in groups] == ["0", "1", "4"]
    assert [g.size for g in groups] == [4, 4, 3]
    units = sum_units(a.per_param, groups)
    # each conv channel = its 1·3·3 weights + its bias; each BN channel = γ + β
    conv = a.per_param["0.weight"].sum(dim=(1, 2, 3)) + a.per_param["0.bias"]
    torch.testing.assert_close(torch.from_numpy(units["0"]), conv, rtol=1e-12, atol=1e-15)
    bn = a.per_param["1.weight"] + a.per_param["1.bias"]
    torch.testing.assert_close(torch.from_numpy(units["1"]), bn, rtol=1e-12, atol=1e-15)
    assert math.isclose(sum(u.sum() for u in units.values()), a.total, rel_tol=1e-12)
    assert math.isclose(sum(a.per_tensor.values()), a.total, rel_tol=1e-12)


def train_tracked(model, data, method="rk4", steps=6, opt_cls=torch.optim.SGD, **opt_kw):
    opt = opt_cls(model.parameters(), **(opt_kw or {"lr": 0.2, "momentum": 0.9}))
    tracker = lca.Tracker(model, nn.CrossEntropyLoss(), data, method=method, dtype=F64)
    records, thetas = [], [{n: p.detach().clone() for n, p in model.named_parameters()}]
    x, y = data
    for t in range(steps):
        idx = torch.arange(t * 16, t * 16 + 16) % len(x)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        with tracker.step():
            opt.step()
        records.append(tracker.last)
        thetas.append({n: p.detach().clone() for n, p in model.named_parameters()})
    return tracker, records, thetas


@pytest.mark.parametrize(
    "method,per_step", [("rk4", 2), ("trapezoid", 1), ("euler", 1), ("gauss2", 2)]
)
def test_tracker_cost_is_the_rules_floor(method, per_step):
    tracker, records, _ = train_tracked(mlp(), blobs(), method=method, steps=5)
    initial = 1 if integrate.rule(method).uses_start else 0
    assert tracker.measurer.evaluations == initial + per_step * 5
    assert all(r.evaluations == per_step for r in records)
    assert integrate.new_evaluations_per_step(method) == per_step


def test_endpoint_reuse_equals_recomputation_and_loss_telescopes():
    model = mlp()
    tracker, records, thetas = train_tracked(model, blobs(), steps=5)
    for t, r in enumerate(records):
        fresh = lca.allocate(
            model, nn.CrossEntropyLoss(), blobs(), thetas[t], thetas[t + 1], dtype=F64
        )
        for n in fresh.per_param:
            torch.testing.assert_close(r.per_param[n], fresh.per_param[n], rtol=1e-10, atol=1e-15)
        assert math.isclose(r.loss_start, fresh.loss_start, rel_tol=1e-12)
    total = math.fsum(r.total for r in records)
    errors = math.fsum(r.error for r in records)
    assert math.isclose(
        records[-1].loss_end - records[0].loss_start, total + errors, rel_tol=1e-12, abs_tol=1e-14
    )


def test_tracker_works_with_adam_and_reports_helped_fraction():
    model = mlp()
    _, records, _ = train_tracked(model, blobs(), opt_cls=torch.optim.Adam, lr=0.01)
    for r in records:
        assert 0 <= r.helped <= 1 and 0 <= r.hurt <= 1
        count = sum(a.numel() for a in r.per_param.values())
        neg = sum(int((a < 0).sum()) for a in r.per_param.values())
        assert r.helped == neg / count


def test_batchnorm_cnn_conserves_loss_with_adaptive_rule():
    model = bn_cnn()
    tracker, records, _ = train_tracked(model, blobs(96, (1, 6, 6)), method="rk4-adaptive", steps=5)
    for r in records:
        assert abs(r.error) <= 1e-3 or r.splits == 32


def test_adaptive_refines_and_evaluates_only_new_points():
    model = mlp()
    data = blobs()
    start = {n: p.detach().clone().double() for n, p in model.named_parameters()}
    end = {n: t + 0.5 for n, t in start.items()}  # a big step: Simpson alone is not enough
    m = Measurer(model, nn.CrossEntropyLoss(), data, dtype=F64)
    loss0, g0 = m.loss_and_grad(start)
    m.evaluations = 0
    seg = integrate_segment(
        m, start, end, "rk4-adaptive", loss_start=loss0, grad_start=g0, tolerance=1e-14
    )
    assert seg.splits == 32
    assert seg.evaluations == 64  # 65 nodes of 32 Simpson panels, the start reused
    coarse = integrate_segment(m, start, end, "rk4", loss_start=loss0, grad_start=g0)
    fine_err = abs((seg.loss_end - loss0) - seg.per_tensor.sum())
    coarse_err = abs((coarse.loss_end - loss0) - coarse.per_tensor.sum())
    assert fine_err < coarse_err


def test_model_optimizer_and_modes_untouched():
    model = bn_cnn()
    model.train()
    model[1].eval()  # a mixed-mode model must come back mixed
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    data = blobs(40, (1, 6, 6))
    nn.functional.cross_entropy(model(data[0]), data[1]).backward()
    opt.step()
    before = copy.deepcopy(model.state_dict())
    opt_before = copy.deepcopy(opt.state_dict())
    modes = [m.training for m in model.modules()]
    grads = [p.grad.clone() for p in model.parameters()]
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    lca.allocate(model, nn.CrossEntropyLoss(), data, start, moved(model))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
    assert str(opt.state_dict()) == str(opt_before)


def test_intervention_between_steps_is_its_own_segment():
    model = mlp()
    data = blobs()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = lca.Tracker(model, nn.CrossEntropyLoss(), data, dtype=F64)
    for t in range(4):
        opt.zero_grad()
        nn.functional.cross_entropy(model(data[0]), data[1]).backward()
        if t == 2:
            with torch.no_grad():
                model[0].weight[0].zero_()  # a "prune" outside the optimizer
        with tracker.step():
            opt.step()
    kinds = [h["kind"] for h in tracker.history]
    assert kinds == [0, 0, 1, 0, 0]
    assert tracker.train_steps == 4
    total = math.fsum(h["lca"] + h["error"] for h in tracker.history)
    assert math.isclose(tracker.last.loss_end - tracker.loss0, total, abs_tol=1e-12)


def test_nan_loss_raises_and_keeps_earlier_steps():
    model = mlp()
    data = blobs()
    tracker = lca.Tracker(model, nn.CrossEntropyLoss(), data)
    with tracker.step():
        pass
    with pytest.raises(lca.NonFiniteLossError, match="kept"):
        with tracker.step():
            with torch.no_grad():
                model[0].weight.fill_(float("nan"))
    assert len(tracker.history) == 1


def test_unknown_method_and_dtype_are_one_sentence_errors():
    with pytest.raises(ValueError, match="choose one of") as e:
        integrate.rule("rk5")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="float32 or float64"):
        Measurer(mlp(), nn.CrossEntropyLoss(), blobs(), dtype=torch.float16)


def test_rule_tables_are_normalised():
    for name in lca.METHODS:
        integrate.check_weights(integrate.rule(name))
    for panels in integrate.ADAPTIVE_PANELS:
        integrate.check_weights(integrate.composite_simpson(panels))


# --- the paper's adaptive rule against an exact oracle ------------------------------------------
def quintic_case():
    """L(θ) = Σ_i c_i θ_i⁵ + lower terms: along the step the integrand's 4th derivative is the
    constant 120·c_i·Δ_i⁵, so Simpson over n panels errs by exactly c_i·Δ_i⁵ / (24·n⁴)
    (∫f − S_n f = −f''''/(2880·n⁴) on [0, 1])."""
    model, start, _, data, _ = separable_case(5, seed=3)
    delta = torch.tensor([1.5, -1.2, 0.9, -1.6, 1.1], dtype=F64)  # big: Simpson alone errs
    end = {"theta": start["theta"] + delta}
    c5 = model.coeffs[5]
    exact = poly(model.coeffs, end["theta"]) - poly(model.coeffs, start["theta"])

    def simpson_value(panels: int) -> torch.Tensor:
        return exact + c5 * delta**5 / (24 * panels**4)

    return model, start, end, data, exact, simpson_value


@pytest.mark.parametrize(
    ("method", "panels_path"),
    [("rk4-paper", (1, 2, 4, 8, 16)), ("rk4-adaptive", (1, 4, 8, 16, 32))],
)
def test_adaptive_rules_stop_at_the_first_panel_count_within_tolerance(method, panels_path):
    """Each adaptive rule refines through its own panel counts, stops at the first whose
    |ΔL − ΣA| on the measurement set is within the tolerance, and pays only for new nodes."""
    model, start, end, data, exact, simpson_value = quintic_case()
    m = Measurer(model, mean_loss, data, dtype=F64)
    loss0, g0 = m.loss_and_grad(start)
    errors = {n: abs(float((simpson_value(n) - exact).sum())) for n in panels_path}
    assert errors[1] > 1e-4  # the step is big enough for Simpson alone to miss the tolerance
    for stop_at in panels_path[1:]:
        # A tolerance between the error of the panel count before and this one.
        before = panels_path[panels_path.index(stop_at) - 1]
        tol = math.sqrt(errors[stop_at] * errors[before])
        m.evaluations = 0
        seg = integrate_segment(
            m, start, end, method, loss_start=loss0, grad_start=g0, tolerance=tol
        )
        assert seg.splits == stop_at
        assert seg.evaluations == 2 * stop_at  # 2n + 1 nodes, the start reused
        assert torch.allclose(seg.per_param["theta"], simpson_value(stop_at), rtol=0, atol=1e-12)
    m.evaluations = 0
    seg = integrate_segment(m, start, end, method, loss_start=loss0, grad_start=g0, tolerance=1e-15)
    assert seg.splits == panels_path[-1] and seg.evaluations == 2 * panels_path[-1]


def test_paper_rule_is_a_method_everywhere():
    assert "rk4-paper" in lca.METHODS and integrate.is_adaptive("rk4-paper")
    assert integrate.refinements("rk4-paper") == (2, 4, 8, 16)
    assert integrate.new_evaluations_per_step("rk4-paper") == 2
    model, start, end, data, _, simpson_value = quintic_case()
    a = lca.allocate(
        model, mean_loss, data, start, end, method="rk4-paper", dtype=F64, tolerance=1e-15
    )
    assert a.splits == 16
    assert torch.allclose(a.per_param["theta"], simpson_value(16), rtol=0, atol=1e-12)


# --- helped fractions leave out parameters at rounding level -------------------------------------
def test_rounding_level_is_judged_per_tensor_against_the_steps_largest_a():
    from lca.allocate import rounding_level

    tensor_max = torch.tensor([1e-3, 5e-7, 3e-9, 0.0], dtype=F64).numpy()
    # float32: √eps = 3.45e-4, so the floor is 3.45e-7: 3e-9 and 0 are noise, 5e-7 is not.
    assert rounding_level(tensor_max, torch.float32).tolist() == [False, False, True, True]
    # float64: √eps = 1.49e-8, floor 1.49e-11: only the tensor that did not move at all.
    assert rounding_level(tensor_max, F64).tolist() == [False, False, False, True]


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_conv_bias_before_batchnorm_is_left_out_of_helped_fractions(dtype):
    """The conv's bias is subtracted again by BatchNorm: its gradient is rounding noise, so its
    A (non-zero under Adam, which moves every parameter by about lr) must count neither as
    helped nor as hurt; every other parameter counts exactly by its sign."""
    model = bn_cnn()
    data = blobs(96, (1, 6, 6))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    tracker = lca.Tracker(model, nn.CrossEntropyLoss(), data, dtype=dtype)
    for t in range(4):
        idx = torch.arange(t * 16, t * 16 + 16)
        opt.zero_grad()
        nn.functional.cross_entropy(model(data[0][idx]), data[1][idx]).backward()
        with tracker.step():
            opt.step()
        r = tracker.last
        bias = r.per_param["0.bias"]
        assert (bias != 0).any()  # noise is there to be miscounted
        count = sum(a.numel() for a in r.per_param.values())
        others = [a for n, a in r.per_param.items() if n != "0.bias"]
        assert r.helped == sum(int((a < 0).sum()) for a in others) / count
        assert r.hurt == sum(int((a > 0).sum()) for a in others) / count
        assert math.isclose(
            r.still,
            bias.numel() / count + sum(int((a == 0).sum()) for a in others) / count,
            abs_tol=1e-12,
        )


# --- the per-parameter error estimate: 1- vs 2-panel Simpson on sampled steps --------------------
def test_error_estimate_on_sampled_steps_matches_the_exact_panel_errors():
    from lca.allocate import ERROR_REL, ERROR_SIGNS

    model, start, end, data, exact, simpson_value = quintic_case()
    delta = end["theta"] - start["theta"]
    tracker = lca.Tracker(model, mean_loss, data, dtype=F64, error_every=2)
    assert set(tracker.layout.series) >= {ERROR_REL, ERROR_SIGNS}
    evaluations = []
    for step in range(3):
        before = tracker.measurer.evaluations
        with tracker.step():
            with torch.no_grad():
                model.theta += delta * (1 if step % 2 == 0 else -1)
        evaluations.append(tracker.measurer.evaluations - before)
        r = tracker.last
        if step == 1:  # not sampled: plain rk4, no estimate
            assert ERROR_REL not in r.series and ERROR_SIGNS not in r.series
            continue
        # Both sampled steps go start → end (step 2 comes back and goes out again).
        one, two = simpson_value(1), simpson_value(2)
        assert torch.allclose(r.per_param["theta"], one, rtol=0, atol=1e-12)
        assert math.isclose(
            r.series[ERROR_REL], float((one - two).norm() / two.norm()), rel_tol=1e-9
        )
        same = float((torch.sign(one) == torch.sign(two)).double().mean())
        assert r.series[ERROR_SIGNS] == same
    assert evaluations[1:] == [2, 4]  # the estimate costs the 2 quarter points


def test_panel_error_counts_signs_only_where_something_moved():
    from lca.allocate import panel_error

    one = torch.tensor([1.0, -2.0, 0.0, 3.0])
    two = torch.tensor([1.0, 2.0, 0.0, 3.0])
    rel, same = panel_error(one, two)
    assert math.isclose(rel, 4.0 / math.sqrt(14.0)) and same == 2 / 3
    rel, same = panel_error(one, two, keep=torch.tensor([True, False, True, True]))
    assert rel == 0.0 and same == 1.0
