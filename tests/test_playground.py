"""The classroom playground: the Python reference engine (determinism, LCA bookkeeping), its
figures, and the page that hands the browser component its settings and keeps them in the URL.

The component's own numbers (training and LCA in JS) are tested in test_playground_js.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from streamlit.testing.v1 import AppTest

from lca.figures import (
    HELPED,
    HURT,
    STILL,
    decision_boundary_figure,
    layer_lca_bars_figure,
    network_figure,
    neuron_outputs_figure,
    playground_loss_figure,
)
from lca.playground import Playground, PlaygroundError, Settings, parse_hidden

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "playground.py")


@pytest.fixture(scope="module")
def trained() -> Playground:
    eng = Playground(Settings(hidden=(4, 3), seed=3), window=10)
    eng.step(40)
    return eng


# -- engine -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_same_seed_same_session_different_seed_differs():
    a = Playground(Settings(dataset="xor", seed=5))
    b = Playground(Settings(dataset="xor", seed=5))
    a.step(15)
    b.step(15)
    assert a.history.train_loss == b.history.train_loss
    assert a.history.test_acc == b.history.test_acc
    for (na, va), (nb, vb) in zip(a.param_lca().items(), b.param_lca().items(), strict=True):
        assert na == nb
        np.testing.assert_array_equal(va, vb)
    c = Playground(Settings(dataset="xor", seed=6))
    c.step(15)
    assert c.history.train_loss != a.history.train_loss


def test_step_counts_and_bounds():
    eng = Playground(Settings(hidden=(3,)))
    assert eng.steps == 0 and len(eng.history.step) == 1
    assert eng.step(7) == 7
    assert eng.step(0) == 7
    assert eng.step() == 8
    assert eng.history.step == list(range(9))
    assert len(eng.history.train_loss) == len(eng.history.lca) == 9
    with pytest.raises(PlaygroundError):
        eng.step(-1)


def test_neuron_lca_equals_edges_plus_bias(trained):
    for window in ("cumulative", "recent"):
        neurons = trained.neuron_lca(window)
        edges = trained.edge_lca(window)
        biases = trained.bias_lca(window)
        assert [len(n) for n in neurons] == [4, 3, 2]
        for n, e, b in zip(neurons, edges, biases, strict=True):
            np.testing.assert_allclose(n, e.sum(axis=1) + b, rtol=1e-9, atol=1e-12)
    # Every parameter is an edge or a bias: the totals match the per-parameter sum.
    total = sum(float(v.sum()) for v in trained.param_lca().values())
    assert total == pytest.approx(sum(float(n.sum()) for n in trained.neuron_lca()), rel=1e-9)


def test_conservation_sum_of_steps_is_loss_change(trained):
    h = trained.history
    change = h.train_loss[-1] - h.train_loss[0]
    assert sum(h.lca) == pytest.approx(change, abs=2e-3)
    # Per step, what was not allocated is exactly the recorded error.
    for i in range(1, len(h.step)):
        assert h.lca[i] + h.error[i] == pytest.approx(
            h.train_loss[i] - h.train_loss[i - 1], abs=1e-9
        )
    cum = sum(float(v.sum()) for v in trained.param_lca().values())
    assert cum == pytest.approx(sum(h.lca), rel=1e-6, abs=1e-9)


def test_recent_window_is_last_k_steps():
    eng = Playground(Settings(hidden=(3,), seed=1), window=5)
    eng.step(8)
    before = {n: v.copy() for n, v in eng.param_lca().items()}
    eng.step(5)
    assert eng.recent_steps() == 5
    recent = eng.param_lca("recent")
    for n, v in eng.param_lca().items():
        np.testing.assert_allclose(recent[n], v - before[n], atol=1e-12)
    with pytest.raises(PlaygroundError):
        eng.param_lca("sometimes")


def test_reset_restores_step_zero():
    eng = Playground(Settings(seed=2))
    w0 = [w.copy() for w in eng.weights()]
    loss0 = eng.history.train_loss[0]
    eng.step(12)
    eng.reset()
    assert eng.steps == 0 and len(eng.history.step) == 1
    assert eng.history.train_loss[0] == loss0
    for a, b in zip(w0, eng.weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(not np.any(v) for v in eng.param_lca().values())
    # The replay is identical to the first time.
    fresh = Playground(Settings(seed=2))
    eng.step(6)
    fresh.step(6)
    assert eng.history.train_loss == fresh.history.train_loss


def test_configure_applies_lr_live_and_rebuilds_on_structure():
    eng = Playground(Settings())
    eng.step(3)
    assert eng.configure(eng.with_settings(lr=0.3)) is False
    assert eng.steps == 3 and eng.optimizer.param_groups[0]["lr"] == 0.3
    assert eng.configure(eng.with_settings(dataset="spiral")) is True
    assert eng.steps == 0 and eng.data.name == "spiral"


def test_settings_validation_is_one_sentence():
    assert parse_hidden("4, 2") == (4, 2)
    assert parse_hidden("") == ()
    for bad in ("4,x", "0", "9", "1,1,1,1,1,1,1"):
        with pytest.raises(PlaygroundError):
            parse_hidden(bad)
    for kwargs in (
        {"dataset": "digits"},
        {"activation": "swish"},
        {"noise": -1},
        {"lr": 0.0},
        {"batch_size": 0},
        {"train_fraction": 1.0},
    ):
        with pytest.raises(PlaygroundError) as e:
            Settings(**kwargs)
        assert "\n" not in str(e.value)


def test_plane_views(trained):
    xs, ys, prob = trained.boundary(40)
    assert prob.shape == (40, 40) and len(xs) == len(ys) == 40
    assert np.all((prob >= 0) & (prob <= 1))
    gx, gy, outs = trained.neuron_outputs(16)
    assert [o.shape for o in outs] == [(4, 16, 16), (3, 16, 16)]
    # The boundary agrees with the model at a grid point.
    with torch.no_grad():
        p = torch.softmax(trained.model(torch.tensor([[xs[3], ys[7]]], dtype=torch.float32)), 1)
    assert prob[7, 3] == pytest.approx(float(p[0, 1]), abs=1e-6)


def test_network_without_hidden_layer():
    eng = Playground(Settings(hidden=()))
    eng.step(3)
    assert eng.layer_sizes == [2, 2]
    assert eng.neuron_outputs(8)[2] == []
    fig = neuron_outputs_figure(*eng.neuron_outputs(8))
    assert fig.layout.annotations and "no hidden layer" in fig.layout.annotations[0].text


# -- figures ----------------------------------------------------------------------------------


def _edge_traces(fig: go.Figure) -> list:
    return [t for t in fig.data if isinstance(t.meta, dict) and t.meta.get("kind") == "edge"]


def test_network_edges_and_neurons_coloured_by_sign():
    edges = [
        np.array([[-1.0, 2.0], [0.0, -0.5], [3.0, -4.0]]),
        np.array([[1.0, -1.0, 0.5], [-2.0, 0.0, 0.1]]),
    ]
    neurons = [np.array([-1.0, 0.5, 0.0]), np.array([2.0, -3.0])]
    fig = network_figure([2, 3, 2], edges, neurons)
    traces = _edge_traces(fig)
    count = {HELPED: 0, HURT: 0, STILL: 0}
    for t in traces:
        segments = sum(1 for x in t.x if x is None)
        count[t.line.color] += segments
    flat = np.concatenate([e.ravel() for e in edges])
    assert count[HELPED] == int((flat < 0).sum())
    assert count[HURT] == int((flat > 0).sum())
    assert count[STILL] == int((flat == 0).sum())
    # Thicker line = larger |LCA|: the largest |edge| has the widest line.
    widest = max(traces, key=lambda t: t.line.width)
    assert widest.line.color == HELPED  # -4.0 is the largest magnitude
    nodes = [t for t in fig.data if isinstance(t.meta, dict) and t.meta.get("kind") == "neuron"]
    assert list(nodes[0].marker.color) == [HELPED, HURT, STILL]
    assert list(nodes[1].marker.color) == [HURT, HELPED]
    assert nodes[1].marker.size[1] > nodes[1].marker.size[0]  # |−3| > |2|
    hover = [
        t for t in fig.data if isinstance(t.meta, dict) and t.meta.get("kind") == "edge-hover"
    ][0]
    assert len(hover.hovertext) == flat.size and "helped" in hover.hovertext[0]
    names = {t.name for t in fig.data if t.name}
    assert {"helped (lowered the loss)", "hurt (raised the loss)"} <= names


def test_network_figure_rejects_mismatched_layers():
    fig = network_figure([2, 3, 2], [np.zeros((3, 2))], [np.zeros(3)])
    assert not fig.data and fig.layout.annotations


def test_decision_boundary_grid_and_points(trained):
    xs, ys, prob = trained.boundary(30)
    pts = trained.points()
    fig = decision_boundary_figure(
        xs, ys, prob, pts["x_train"], pts["y_train"], pts["x_test"], pts["y_test"]
    )
    heat = fig.data[0]
    assert isinstance(heat, go.Heatmap) and np.asarray(heat.z).shape == (30, 30)
    assert heat.zmin == 0 and heat.zmax == 1
    scatters = [t for t in fig.data if isinstance(t, go.Scatter)]
    assert sum(len(t.x) for t in scatters) == len(pts["y_train"]) + len(pts["y_test"])
    colors = {t.marker.color for t in scatters}
    assert HELPED not in colors and HURT not in colors  # classes are blue/orange, not LCA colours
    no_test = decision_boundary_figure(
        xs, ys, prob, pts["x_train"], pts["y_train"], pts["x_test"], pts["y_test"], show_test=False
    )
    assert len(no_test.data) == 3


def test_neuron_outputs_small_multiples_titles_by_sign(trained):
    xs, ys, outs = trained.neuron_outputs(12)
    lca = [np.array([-1.0, 1.0, 0.0, -2.0]), np.array([1.0, -1.0, 2.0])]
    fig = neuron_outputs_figure(xs, ys, outs, lca)
    assert sum(isinstance(t, go.Heatmap) for t in fig.data) == 7
    titles = [a for a in fig.layout.annotations if a.text]
    assert len(titles) == 7
    colors = {a.text.split(":")[0]: a.font.color for a in titles}
    assert colors["fc1 #1"] == HELPED and colors["fc1 #2"] == HURT
    assert colors["fc1 #3"] == STILL and colors["fc2 #2"] == HELPED


def test_curves_and_bars():
    assert playground_loss_figure([0], [1.0], [1.0]).layout.annotations  # says why it's empty
    fig = playground_loss_figure([0, 1, 2], [1.0, 0.8, 0.7], [1.1, 0.9, 0.85])
    assert len(fig.data) == 2 and fig.layout.yaxis.title.text
    bars = layer_lca_bars_figure(["fc1", "out"], [-0.2, 0.1])
    assert list(bars.data[0].marker.color) == [HELPED, HURT]
    assert layer_lca_bars_figure(["fc1"], [0.0]).layout.annotations


# -- the page ---------------------------------------------------------------------------------


def _app(params: dict[str, str] | None = None) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    for k, v in (params or {}).items():
        at.query_params[k] = v
    return at.run()


def _args(at: AppTest) -> dict:
    """What the page handed the browser component on its last run."""
    comps = at.get("component_instance")
    assert len(comps) == 1
    return json.loads(comps[0].proto.json_args)


def _report(at: AppTest, **settings: str) -> AppTest:
    """The component reports changed settings (what streamlit:setComponentValue does)."""
    at.session_state["pg"] = settings
    return at.run()


def test_page_hands_url_settings_to_the_component():
    at = _app(
        {
            "dataset": "spiral",
            "hidden": "8, 8",
            "lr": "0.10",
            "activation": "relu",
            "seed": "7",
            "speed": "max",
            "features": "x2,x1sq,x1",
            "reg": "L2",
            "test": "true",
        }
    )
    assert not at.exception and not at.warning
    args = _args(at)
    s = args["settings"]
    assert (s["dataset"], s["hidden"], s["lr"], s["activation"], s["seed"]) == (
        "spiral",
        "8,8",
        "0.1",
        "relu",
        "7",
    )
    assert (s["speed"], s["features"], s["reg"], s["test"]) == ("max", "x1,x2,x1sq", "L2", "1")
    assert s["noise"] == "0.05" and s["view"] == "whole session"  # absent: the defaults
    assert args["hide"] == []
    assert "0.1" in args["options"]["lr"] and "max" in args["options"]["speed"]
    # The server trains nothing: no engine, no figures, no timer in this session.
    assert "pg_engine" not in at.session_state
    assert not at.get("plotly_chart")


def test_settings_the_component_reports_go_to_the_url():
    at = _app({"run": "mine.h5", "seed": "3", "batch": "lots"})
    assert len(at.warning) == 1
    _report(
        at,
        dataset="moons",
        lr="0.1",
        noise="7",
        seed="0",
        view="recent steps",
        features="x1,x2,sin1",
        evil="<script>",
    )
    qp = dict(at.query_params)
    assert qp["dataset"] == "moons" and qp["lr"] == "0.1" and qp["view"] == "recent steps"
    assert qp["features"] == "x1,x2,sin1"
    assert "seed" not in qp  # back to the default: the address drops it
    assert "noise" not in qp and "evil" not in qp  # not allowed: ignored, never trusted
    assert qp["run"] == "mine.h5"  # other pages' parameters are left alone
    assert "batch" not in qp and not at.warning  # the address is clean again, in this run
    assert not at.exception
    assert _args(at)["settings"]["dataset"] == "moons"
    # The teacher link follows what the student set.
    assert "dataset=moons" in at.code[0].value and "seed=" not in at.code[0].value


def test_hidden_controls_are_passed_and_lock_hides_everything():
    at = _app({"hide": "dataset,lr,bogus", "dataset": "xor", "lr": "0.3"})
    assert not at.exception
    args = _args(at)
    assert args["hide"] == ["dataset", "lr"]
    assert args["settings"]["dataset"] == "xor" and args["settings"]["lr"] == "0.3"
    assert at.expander  # the teacher link helper is still there

    locked = _app({"lock": "1", "dataset": "gauss"})
    assert not locked.exception
    args = _args(locked)
    assert set(args["hide"]) == set(_args(at)["settings"])  # every setting is hidden
    assert args["settings"]["dataset"] == "gauss"
    assert not locked.expander and not locked.multiselect  # no teacher helper for students
    assert _args(_app({"hide": "all"}))["hide"] == args["hide"]


def test_bad_url_values_give_one_sentence_each():
    at = _app({"hidden": "4,x", "lr": "5", "train": "95"})
    assert not at.exception
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 3
    assert any("4,x" in w for w in warnings)
    assert any("'5'" in w and "0.03" in w for w in warnings)
    assert all(w.endswith(".") and "\n" not in w and w.count(". ") <= 1 for w in warnings)
    s = _args(at)["settings"]
    assert (s["hidden"], s["lr"], s["train"]) == ("4,4", "0.03", "50")


def test_share_link_lists_non_default_settings():
    at = _app({"dataset": "moons", "noise": "0.1"})
    codes = [c.value for c in at.code]
    assert codes and "dataset=moons" in codes[0] and "noise=0.1" in codes[0]
    assert "lr=" not in codes[0]  # defaults stay out of the link
    at.checkbox(key="pg_lock_choice").check().run()
    assert "lock=1" in at.code[0].value
