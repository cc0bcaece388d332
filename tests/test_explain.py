"""The "What is LCA?" page: its worked example is the engine's LCA, checked against closed-form
oracles, and the page draws it without errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from lca import explain
from lca.explain import GLOSSARY, SCENARIOS, glossary, two_weight_example
from lca.figures import explain_path_figure, explain_shares_figure, explain_surface_figure
from lca.figures.common import HELPED, HURT

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "explain.py")


def grad(w: np.ndarray) -> np.ndarray:
    """The logistic loss's gradient, written out independently of lca.explain."""
    x, y = explain._X, explain._Y
    p = 1.0 / (1.0 + np.exp(-(x @ w)))
    return x.T @ (p - y) / len(y)


def loss(w: np.ndarray) -> float:
    z = explain._X @ w
    return float(np.mean(np.log1p(np.exp(z)) - explain._Y * z))


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_example_is_the_exact_path_integral(scenario):
    start, lr = SCENARIOS[scenario]
    ex = two_weight_example(start, lr=lr)
    w0 = np.asarray(start, dtype=float)
    delta = -lr * grad(w0)
    np.testing.assert_allclose(ex.end, w0 + delta, rtol=1e-12)
    # One Simpson panel: (g(0) + 4 g(½) + g(1)) / 6 · Δ, per weight.
    simpson = (grad(w0) + 4 * grad(w0 + delta / 2) + grad(w0 + delta)) / 6 * delta
    np.testing.assert_allclose(ex.simpson_shares, simpson, rtol=1e-10, atol=1e-13)
    # Split until exact: equals a 4,000-panel composite Simpson integral of the same gradient.
    s = np.linspace(0.0, 1.0, 8001)
    f = np.stack([grad(w0 + si * delta) for si in s]) * delta
    h = s[1] - s[0]
    fine = h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum(axis=0) + 2 * f[2:-1:2].sum(axis=0))
    np.testing.assert_allclose(ex.shares, fine, rtol=2e-5, atol=1e-8)
    # Conservation: the shares add up to the measured loss change (the adaptive rule asks for
    # 1e-6 and stops at 32 panels, which leaves at most a few 1e-6 on the overshooting step).
    change = loss(w0 + delta) - loss(w0)
    assert ex.loss_change == pytest.approx(change, rel=1e-9)
    assert abs(ex.shares.sum() - change) <= 5e-6


def test_scenarios_show_what_they_promise():
    both = two_weight_example(*SCENARIOS["both weights help"])
    assert (both.shares < 0).all()
    over = two_weight_example(*SCENARIOS["one helps, one hurts (overshoot)"])
    assert over.shares[0] > 0 > over.shares[1] and over.loss_change < 0
    # Three points get the overshoot wrong (even the sign): the page says splitting matters.
    assert np.sign(over.simpson_shares[0]) != np.sign(over.shares[0])


def test_figures_colour_shares_by_sign():
    ex = two_weight_example(*SCENARIOS["one helps, one hurts (overshoot)"])
    bars = [t for t in explain_shares_figure(ex).data if t.name != "loss change"]
    assert [t.marker.color for t in bars] == [HURT, HELPED]
    assert sum(t.y[0] for t in bars) == pytest.approx(ex.shares.sum(), rel=1e-12)
    path = explain_path_figure(ex)
    assert len(path.data) == 4 and "rgba(215,48,39" in path.data[0].fillcolor
    surface = explain_surface_figure(ex)
    assert surface.data[0].z.shape == (len(ex.grid_w2), len(ex.grid_w1))


def test_glossary_lookup():
    assert glossary("Conservation Error") == GLOSSARY["conservation error"]
    with pytest.raises(KeyError, match="known"):
        glossary("no such term")


def test_page_draws_every_chart_and_follows_the_scenario():
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert at.title[0].value == "What is LCA?"
    assert len(at.get("plotly_chart")) == 3
    at.selectbox(key="explain_scenario").select("one helps, one hurts (overshoot)").run()
    assert not at.exception
    assert at.select_slider(key="explain_lr").value == 3.0
    assert "splitting matters" in " ".join(m.value for m in at.markdown)
