"""Training without backprop (dfa, bdfa), weight symmetry, and techniques that compose or refuse.

Gradients and symmetric weights are checked against hand-written oracles on tiny models; the
training tests run the real loop (``lca.train.run``) with the in-memory writer of
``test_techniques_train`` and check what a user relies on: DFA learns, its alignment with the
true gradient grows, LCA conserves, mirrored weights carry exactly zero LCA.
"""

# ruff: noqa: F811 - the ``trained`` fixture is imported, and pytest passes it by name

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from test_techniques_train import conservation_gap, one_sentence
from test_techniques_train import train as trained  # noqa: F401 - a fixture, used by name
from torch import nn

import techniques
from lca.config import ConfigError, RunConfig
from lca.models import MLP
from lca.train import TrainingError
from techniques import Context
from techniques.feedback import cosine
from techniques.symmetry import dead_mask, symmetrize

BASE = dict(dataset="digits", model="mlp", measure_size=200, eval_every=20, batch_size=64, lr=0.05)


def config(techs: list[dict], steps: int = 40, **kw) -> RunConfig:
    return RunConfig(**{**BASE, "steps": steps, **kw, "techniques": techs})


def mlp_ctx(seed: int = 0) -> tuple[Context, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = MLP(6, (5, 4), 3)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    ctx = Context(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss_fn=nn.CrossEntropyLoss(),
        device=torch.device("cpu"),
        total_steps=3,
        train_x=x,
        train_y=y,
        test_x=x,
        test_y=y,
    )
    return ctx, x, y


def dfa_grads(name: str, **opts) -> tuple[dict, dict, object, Context, torch.Tensor]:
    """(DFA gradients, true gradients, technique, ctx, x) for one step on a 6-5-4-3 ReLU MLP."""
    ctx, x, y = mlp_ctx()
    t = techniques.create({"name": name, **opts})
    t.setup(ctx)
    model = ctx.model
    true = dict(
        zip(
            [n for n, _ in model.named_parameters()],
            torch.autograd.grad(ctx.loss_fn(model(x), y), list(model.parameters())),
            strict=True,
        )
    )
    t.before_forward(ctx)
    assert t.backward(ctx, ctx.loss_fn(model(x), y)) is True
    return {n: p.grad.clone() for n, p in model.named_parameters()}, true, t, ctx, x


# ---------------------------------------------------------------------------------------------
# DFA and BDFA: the update rule against an oracle.


@pytest.mark.parametrize("name", ["dfa", "bdfa"])
def test_dfa_gradient_is_the_projected_error_through_f_prime(name):
    got, true, t, ctx, x = dfa_grads(name)
    m = ctx.model
    with torch.no_grad():  # the oracle: δ_l = (B_l e) ⊙ f'(a_l), ∂W_l = δ_lᵀ h_{l−1}
        a1 = m.fc1(x)
        h1 = a1.relu()
        a2 = m.fc2(h1)
        h2 = a2.relu()
        p = m.out(h2).softmax(1)
        e = (p - nn.functional.one_hot(ctx.train_y, 3)) / len(x)
        d1 = (e @ t._feedback["fc1"]) * (a1 > 0)
        d2 = (e @ t._feedback["fc2"]) * (a2 > 0)
    torch.testing.assert_close(got["fc1.weight"], d1.T @ x)
    torch.testing.assert_close(got["fc1.bias"], d1.sum(0))
    torch.testing.assert_close(got["fc2.weight"], d2.T @ h1)
    torch.testing.assert_close(got["fc2.bias"], d2.sum(0))
    torch.testing.assert_close(got["out.weight"], true["out.weight"])  # the output layer: BP
    torch.testing.assert_close(got["out.bias"], true["out.bias"])
    b = t._feedback["fc1"]
    assert b.shape == (3, 5)
    if name == "bdfa":  # binary: ±1, scaled by 1/√features
        assert set(torch.unique(b * math.sqrt(5)).round().tolist()) == {-1.0, 1.0}
    assert len(t._align) == 1
    assert t._align[0][0] == pytest.approx(cosine(got["fc1.weight"], true["fc1.weight"]))


def test_bp_layers_keep_the_true_gradient():
    got, true, t, _, _ = dfa_grads("dfa", bp_layers=["fc1"])
    assert t._layers == ["fc2"]
    torch.testing.assert_close(got["fc1.weight"], true["fc1.weight"])
    assert not torch.allclose(got["fc2.weight"], true["fc2.weight"])


@pytest.mark.parametrize(
    ("opts", "model"),
    [
        ({"bp_layers": ["fc9"]}, "mlp"),
        ({"bp_layers": ["fc1", "fc2"]}, "mlp"),
        ({}, "resnet20"),
    ],
)
def test_dfa_bad_setups_give_one_sentence(opts, model):
    with pytest.raises(TrainingError) as e:
        from lca.train import build

        build(config([{"name": "dfa", **opts}], steps=1, model=model))
    assert one_sentence(str(e.value)), str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dfa", "bdfa"])
def test_dfa_learns_aligns_and_conserves(trained, name):
    result, w, _ = trained(config([{"name": name}], steps=60, seed=1))
    assert result.test_acc > 0.3  # 10 classes: chance is 0.1
    align = w.series(f"techniques/{name}/alignment")
    assert align.shape == (60, 2)
    k = 10
    first, last = np.nanmean(align[:k]), np.nanmean(align[-k:])
    assert last > first and last > 0
    gap, delta, _ = conservation_gap(w)
    assert delta < 0
    assert abs(gap) <= sum(abs(r.error) for r in w.records) + 1e-6
    assert abs(gap) <= 0.02 * abs(delta)
    summary = result.summaries[name]
    assert summary["dfa_layers"] == "fc1+fc2" and summary["bp_layers"] == "out"
    assert 0 <= summary["helped_fc1"] <= 1


# ---------------------------------------------------------------------------------------------
# Symmetry.


@pytest.mark.parametrize(
    ("variant", "shape", "saved"),
    [
        ("tri", (7, 7), 7 * 6 // 2),
        ("wwt", (7, 7), 0),
        ("tri", (4, 4, 3, 3), 9 * 4 * 3 // 2),
        ("spa", (5, 2, 3, 3), 5 * 2 * 3),
        ("wwt", (4, 4, 3, 3), 0),
    ],
)
def test_symmetric_weight_and_dead_entries(variant, shape, saved):
    torch.manual_seed(0)
    u = torch.randn(shape, requires_grad=True)
    w = symmetrize(u, variant)
    if variant == "spa":
        torch.testing.assert_close(w, w.transpose(-1, -2))
    elif len(shape) == 2:
        torch.testing.assert_close(w, w.T)
    else:
        torch.testing.assert_close(w, w.transpose(0, 1))  # symmetric in (out, in) per tap
    dead = dead_mask(shape, variant)
    assert int(dead.sum()) == saved
    (g,) = torch.autograd.grad((w * torch.randn(shape)).sum(), u)
    assert torch.all(g[dead] == 0)  # mirrored entries are never used: exactly zero gradient
    if variant == "tri" and len(shape) == 2:
        expect = u.detach().triu() + u.detach().triu(1).T
        torch.testing.assert_close(w.detach(), expect)


def test_symmetry_counts_the_params_it_promises():
    ctx, _, _ = mlp_ctx()
    ctx.model = MLP(6, (5, 5, 5), 3)
    t = techniques.create({"name": "symmetry"})
    t.setup(ctx)
    assert t.summary()["layers"] == "fc2+fc3"
    assert t.summary()["params_saved"] == 2 * 5 * 4 // 2
    names = [n for n, _ in ctx.model.named_parameters()]
    assert "fc2.weight" in names  # names stay readable: no parametrizations.* renaming
    w = ctx.model.fc2.weight
    assert torch.all(w.detach().tril(-1) == 0)


def test_symmetry_without_square_layers_gives_one_sentence():
    with pytest.raises(TrainingError) as e:
        from lca.train import build

        build(config([{"name": "symmetry"}], steps=1, model_options={"hidden": [16, 8]}))
    assert one_sentence(str(e.value)) and "square" in str(e.value), str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec",
    [
        {"name": "symmetry", "variant": "tri"},
        {"name": "symmetry", "variant": "spa"},
    ],
)
def test_mirrored_weights_never_move_and_carry_zero_lca(trained, spec):
    kw = (
        {"model": "cnn-small", "model_options": {"channels": [8, 8]}}
        if spec["variant"] == "spa"
        else {}
    )
    result, w, probe = trained(
        config([spec, {"name": "probe"}], steps=20, weight_decay=1e-3, optimizer="momentum", **kw)
    )
    cum = result.tracker.cumulative
    total_dead = 0
    for name, dead in _dead(result).items():
        total_dead += int(dead.sum())
        assert torch.all(cum[name][dead] == 0)  # exactly zero LCA
        for params in probe.params:
            assert torch.all(params[name][dead] == 0)  # never moved
    assert total_dead == result.summaries["symmetry"]["params_saved"] > 0
    gap, delta, _ = conservation_gap(w)
    assert delta < 0 and abs(gap) <= 0.02 * abs(delta)


def _dead(result) -> dict[str, torch.Tensor]:
    model = result.tracker.model
    return {
        f"{n}.weight": dead_mask(tuple(m.weight.shape), m.symmetry)
        for n, m in model.named_modules()
        if hasattr(m, "symmetry")
    }


# ---------------------------------------------------------------------------------------------
# Compose or refuse.

FAST = {
    "prune-magnitude": {"start": 1},
    "prune-lca": {"start": 1},
    "prune-lobs": {"start": 1, "samples": 32},
}
REFUSED = [
    ("wus", "wus-lr"),
    ("quantize", "binary"),
    ("binary", "ternary"),
    ("dfa", "bdfa"),
    ("amp", "dfa"),
    ("freeze", "freeze"),
]


@pytest.mark.parametrize(("a", "b"), REFUSED)
def test_conflicting_pairs_are_refused_naming_both(a, b):
    with pytest.raises(ConfigError) as e:
        config([{"name": a}, {"name": b}])
    message = str(e.value)
    assert one_sentence(message) and repr(a) in message and repr(b) in message, message


def _spec(name: str) -> dict:
    return {"name": name, **FAST.get(name, {})}


@pytest.mark.slow  # each pair trains 3 steps: a few seconds on a loaded machine
@pytest.mark.parametrize(("a", "b"), list(itertools.combinations(techniques.names(), 2)))
def test_every_pair_composes_or_is_refused(trained, a, b):
    techs = [_spec(a), _spec(b)]
    try:
        cfg = config(
            techs, steps=3, measure_size=64, record="layers", model_options={"hidden": [8, 8]}
        )
    except ConfigError as e:
        assert one_sentence(str(e)) and repr(a) in str(e) and repr(b) in str(e), str(e)
        return
    result, w, _ = trained(cfg)
    assert result.steps == 3
    assert all(math.isfinite(r.total) for r in w.records)


@pytest.mark.slow
@pytest.mark.parametrize(
    "pair",
    [
        ("prune-magnitude", "fp8"),
        ("symmetry", "prune-magnitude"),
        ("dfa", "freeze"),
        ("prune-magnitude", "quantize"),
        ("freeze", "amp"),
    ],
)
def test_pairs_a_user_would_try_train_and_conserve(trained, pair):
    missing = [n for n in pair if n not in techniques.names()]
    if missing:
        pytest.skip(f"technique {missing[0]!r} is not registered on this branch")
    opts = {"prune-magnitude": {"start": 10, "sparsity": 0.5}, "freeze": {"layers": ["fc1"]}}
    techs = [{"name": n, **opts.get(n, {})} for n in pair]
    result, w, _ = trained(config(techs, steps=20))
    assert set(result.summaries) == set(pair)
    gap, delta, _ = conservation_gap(w)
    assert delta < 0 and abs(gap) <= 0.02 * abs(delta)


def test_two_techniques_running_the_backward_are_refused_without_roles():
    class A(techniques.Technique):
        name = "a"

        def backward(self, ctx, loss):
            return True

    class B(A):
        name = "b"

    class C(techniques.Technique):
        name = "c"

    message = techniques.conflict(A, B)
    assert message and one_sentence(message) and "'a'" in message and "'b'" in message
    assert "backward" in message
    assert techniques.conflict(A, C) is None


def test_roles_are_documented():
    for name in techniques.names():
        cls = techniques.get(name)
        for role in cls.roles:
            assert role in techniques.ROLES, (name, role)
        for other in cls.conflicts:
            assert other in techniques.names(), (name, other)


# ---------------------------------------------------------------------------------------------
# What the app shows.


def test_alignment_and_helped_figures():
    from lca.figures import HELPED, alignment_figure, helped_by_method_figure

    fig = alignment_figure(
        np.array([[0.0, 0.1], [0.2, np.nan], [0.5, 0.4]]), ["fc1", "fc2"], kind=np.array([0, 1, 0])
    )
    assert [t.name for t in fig.data] == ["fc1", "fc2"]
    assert list(fig.data[0].y) == [0.0, 0.5]  # the intervention row is left out
    fig = helped_by_method_figure({"fc1": 0.4, "out": 0.9}, {"fc1": "dfa", "out": "backprop"})
    assert list(fig.data[0].x) == ["fc1 (dfa)", "out (backprop)"]
    assert np.allclose(fig.data[0].y, [40, 90]) and fig.data[0].marker.color == HELPED


@pytest.mark.slow
def test_page_shows_alignment_helped_and_params_saved(runs_folder, make_run):
    from test_pages_techniques import _page

    techs = [{"name": "dfa"}, {"name": "symmetry"}]
    make_run(
        name="methods.h5", folder=runs_folder, techniques=techs, model_options={"hidden": [16, 16]}
    )
    at = _page(runs_folder, "methods.h5")
    assert not at.exception and not at.error
    heads = [h.value for h in at.subheader]
    assert "Feedback alignment (dfa)" in heads and "Weight symmetry (symmetry)" in heads
    assert any("**120** parameters saved" in m.value for m in at.markdown)  # 16·15/2
    titles = [str(c.proto.spec) for c in at.get("plotly_chart")]
    assert any("Alignment of each layer" in t for t in titles)
    assert any("Weights that helped, per layer" in t for t in titles)
