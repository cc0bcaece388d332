"""The classroom playground: engine (determinism, LCA bookkeeping), figures, and the page."""

from __future__ import annotations

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
        assert h.lca[i] + h.error[i] == pytest.approx(h.train_loss[i] - h.train_loss[i - 1],
                                                      abs=1e-9)
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
    for kwargs in ({"dataset": "digits"}, {"activation": "swish"}, {"noise": -1},
                   {"lr": 0.0}, {"batch_size": 0}, {"train_fraction": 1.0}):
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
    edges = [np.array([[-1.0, 2.0], [0.0, -0.5], [3.0, -4.0]]), np.array([[1.0, -1.0, 0.5],
                                                                         [-2.0, 0.0, 0.1]])]
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
    hover = [t for t in fig.data if isinstance(t.meta, dict) and t.meta.get("kind") ==
             "edge-hover"][0]
    assert len(hover.hovertext) == flat.size and "helped" in hover.hovertext[0]
    names = {t.name for t in fig.data if t.name}
    assert {"helped (lowered the loss)", "hurt (raised the loss)"} <= names


def test_network_figure_rejects_mismatched_layers():
    fig = network_figure([2, 3, 2], [np.zeros((3, 2))], [np.zeros(3)])
    assert not fig.data and fig.layout.annotations


def test_decision_boundary_grid_and_points(trained):
    xs, ys, prob = trained.boundary(30)
    pts = trained.points()
    fig = decision_boundary_figure(xs, ys, prob, pts["x_train"], pts["y_train"],
                                   pts["x_test"], pts["y_test"])
    heat = fig.data[0]
    assert isinstance(heat, go.Heatmap) and np.asarray(heat.z).shape == (30, 30)
    assert heat.zmin == 0 and heat.zmax == 1
    scatters = [t for t in fig.data if isinstance(t, go.Scatter)]
    assert sum(len(t.x) for t in scatters) == len(pts["y_train"]) + len(pts["y_test"])
    colors = {t.marker.color for t in scatters}
    assert HELPED not in colors and HURT not in colors  # classes are blue/orange, not LCA colours
    no_test = decision_boundary_figure(xs, ys, prob, pts["x_train"], pts["y_train"],
                                       pts["x_test"], pts["y_test"], show_test=False)
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


def _engine(at: AppTest) -> Playground:
    return at.session_state["pg_engine"]


def test_page_renders_steps_plays_and_resets():
    at = _app()
    assert not at.exception
    assert [b.label for b in at.button] == ["Play", "Step", "Reset"]
    charts = at.get("plotly_chart")
    assert len(charts) == 5
    assert "data" in charts[0].proto.spec  # figure JSON readable
    assert _engine(at).steps == 0

    at.button(key="pg_step").click().run()
    assert _engine(at).steps == 1

    at.button(key="pg_play").click().run()
    assert at.session_state["pg_playing"] is True
    assert at.button(key="pg_play").label == "Pause"
    assert _engine(at).steps == 1 + 5  # the playing fragment ran one tick of `speed` steps
    at.button(key="pg_play").click().run()
    assert at.session_state["pg_playing"] is False
    steps = _engine(at).steps
    at.run()
    assert _engine(at).steps == steps  # paused: a rerun does not train

    at.button(key="pg_reset").click().run()
    assert _engine(at).steps == 0 and not at.exception


def test_new_data_set_while_playing_stops_and_says_play():
    """The button must tell the truth: after a rebuild nothing plays, so it reads Play."""
    at = _app()
    at.button(key="pg_play").click().run()
    assert at.button(key="pg_play").label == "Pause"
    at.selectbox(key="dataset").select("xor").run()
    assert at.session_state["pg_playing"] is False and _engine(at).steps == 0
    assert at.button(key="pg_play").label == "Play"
    assert any("starts again" in t.value for t in at.toast)
    at.button(key="pg_play").click().run()  # one press plays again
    assert at.session_state["pg_playing"] is True and _engine(at).steps == 5


def test_page_reads_settings_from_the_url():
    at = _app({"dataset": "spiral", "hidden": "8,8", "lr": "0.1", "activation": "relu",
               "seed": "7", "speed": "20"})
    assert not at.exception
    s = _engine(at).settings
    assert (s.dataset, s.hidden, s.lr, s.activation, s.seed) == ("spiral", (8, 8), 0.1, "relu",
                                                                  7)
    assert at.selectbox(key="dataset").value == "spiral"
    at.button(key="pg_play").click().run()
    assert _engine(at).steps == 20


def test_hidden_controls_are_not_rendered_but_keep_url_values():
    at = _app({"hide": "dataset,lr", "dataset": "xor", "lr": "0.3"})
    assert not at.exception
    labels = [w.label for w in [*at.selectbox, *at.select_slider, *at.slider]]
    assert "Data set" not in labels and "Learning rate" not in labels
    assert "Activation" in labels and "Noise" in labels
    s = _engine(at).settings
    assert s.dataset == "xor" and s.lr == 0.3

    locked = _app({"lock": "1", "dataset": "gauss"})
    assert not locked.exception
    assert not locked.selectbox and not locked.slider and not locked.text_input
    assert [b.label for b in locked.button] == ["Play", "Step", "Reset"]
    assert not locked.expander  # no teacher-link helper for students
    assert _engine(locked).settings.dataset == "gauss"


def test_bad_hidden_layers_text_gives_one_sentence():
    at = _app({"hidden": "4,x"})
    assert not at.exception
    assert at.warning and "4,x" in at.warning[0].value
    assert _engine(at).settings.hidden == (4, 4)


def test_share_link_lists_non_default_settings():
    at = _app({"dataset": "moons", "noise": "0.1"})
    codes = [c.value for c in at.code]
    assert codes and "dataset=moons" in codes[0] and "noise=0.1" in codes[0]
    assert "lr=" not in codes[0]  # defaults stay out of the link
