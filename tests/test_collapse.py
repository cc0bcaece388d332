"""Neural collapse measures: exact answers on synthetic features, and recorded for a short run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lca.collapse import (
    COLLAPSE_COLUMNS,
    COLLAPSE_TABLE,
    classifier_layer,
    collapse_measures,
    penultimate_features,
)


def _simplex_etf(c: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """C centred class means forming a simplex ETF in d > C dimensions, and a unit vector
    orthogonal to all of them (a global mean that the classifier cannot see)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, c + 1, generator=g, dtype=torch.float64))
    etf = math.sqrt(c / (c - 1)) * (torch.eye(c, dtype=torch.float64) - 1.0 / c)
    return etf @ q[:, :c].T, q[:, c]


def test_perfect_simplex_etf_gives_zero_on_every_measure():
    c, d, per_class = 5, 8, 7
    means, off_span = _simplex_etf(c, d)
    mu_g = 3.0 * off_span
    y = torch.arange(c).repeat_interleave(per_class)
    h = mu_g + 2.5 * means[y]  # every feature exactly at its class mean
    m = collapse_measures(h, y, weight=0.7 * means, bias=torch.zeros(c))
    assert m.classes == c
    for value in (m.nc1, m.nc2_equinorm, m.nc2_equiangle, m.nc2_max_angle, m.nc3, m.nc4):
        assert abs(value) < 1e-10


def test_random_features_and_classifier_are_far_from_collapse():
    g = torch.Generator().manual_seed(1)
    c, d, n = 4, 16, 400
    y = torch.arange(c).repeat(n // c)
    h = torch.randn(n, d, generator=g)
    w = torch.randn(c, d, generator=g)
    m = collapse_measures(h, y, w, torch.zeros(c))
    assert m.nc1 > 1.0  # class means of noise are tiny next to the spread
    assert m.nc2_equinorm > 0.01 and m.nc2_equiangle > 0.01 and m.nc2_max_angle > 0.01
    assert m.nc3 > 0.5
    assert m.nc4 > 0.3


def test_hand_computed_nc1_and_missing_classes():
    # class 0 at 0 and 2 (mean 1), class 2 at 4 and 6 (mean 5); class 1 absent.
    h = torch.tensor([[0.0], [2.0], [4.0], [6.0]])
    y = torch.tensor([0, 0, 2, 2])
    w = torch.tensor([[-1.0], [9.0], [1.0]])
    m = collapse_measures(h, y, w)
    # Σ_W = 1, Σ_B = ((1-3)² + (5-3)²) / 2 = 4, NC1 = Σ_W Σ_B^† / C = 1/4/2
    assert m.classes == 2
    assert m.nc1 == pytest.approx(0.125, abs=1e-12)
    assert m.nc2_equinorm == pytest.approx(0.0, abs=1e-12)
    assert m.nc2_max_angle == pytest.approx(0.0, abs=1e-12)  # cos = −1 = −1/(C−1)
    # W rows of classes 0 and 2: (−1, 1)/√2; M = (−2, 2)/√8: identical directions
    assert m.nc3 == pytest.approx(0.0, abs=1e-12)
    # the classifier says class 0 for h < 0, class 2 for h > 0; nearest mean splits at 3
    assert m.nc4 == pytest.approx(0.25, abs=1e-12)  # only h = 2 disagrees


def test_one_class_is_one_sentence():
    with pytest.raises(ValueError, match="at least two classes"):
        collapse_measures(torch.ones(3, 2), torch.zeros(3, dtype=torch.long), torch.ones(2, 2))


def test_penultimate_features_are_the_classifier_inputs():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    assert classifier_layer(model, 2) == "2"
    assert classifier_layer(model, 3) is None
    x = torch.randn(10, 3)
    params = dict(model.named_parameters())
    feats = penultimate_features(model, params, "2", x, chunk=4)
    assert torch.allclose(feats, torch.relu(model[0](x)))


@pytest.mark.slow
def test_recorded_at_every_evaluation_of_a_short_run(tmp_path):
    from lca.config import RunConfig
    from lca.store import Reader
    from lca.train import run

    config = RunConfig(
        dataset="gauss",
        model="mlp",
        steps=6,
        eval_every=3,
        batch_size=16,
        subset=64,
        lr=0.1,
        seed=0,
    )
    out = tmp_path / "nc.h5"
    result = run(config, out=out)
    assert result.status == "complete"
    with Reader(out) as r:
        table = r.events(COLLAPSE_TABLE)
    assert list(table) == list(COLLAPSE_COLUMNS)
    np.testing.assert_array_equal(table["train_step"], [0, 3, 6])
    for col in COLLAPSE_COLUMNS[1:]:
        assert np.all(np.isfinite(table[col])) and np.all(table[col] >= 0)
    assert np.all(table["classes"] >= 2)


@pytest.mark.slow
def test_view_and_figure_of_a_recorded_run(tmp_path):
    from lca import figures as F
    from lca import views
    from lca.config import RunConfig
    from lca.store import Reader
    from lca.train import run

    out = tmp_path / "nc.h5"
    run(
        RunConfig(
            dataset="gauss",
            model="mlp",
            steps=4,
            eval_every=2,
            batch_size=16,
            subset=64,
            measure_size=64,
            lr=0.1,
            seed=0,
        ),
        out=out,
    )
    with Reader(out) as r:
        v = views.collapse_view(r)
        layer = np.asarray(r.layer_lca(0, r.num_steps))
        names = list(r.names)
    np.testing.assert_array_equal(v.steps, [0, 2, 4])
    assert set(v.measures) == set(COLLAPSE_COLUMNS[1:])
    assert v.tensors == [f"{v.classifier}.weight", f"{v.classifier}.bias"]
    cols = [names.index(n) for n in v.tensors]
    np.testing.assert_allclose(v.lca_cumulative, np.cumsum(layer[:, cols].sum(1)))
    fig = F.collapse_figure(
        v.steps, v.measures, v.positions, v.lca_cumulative, classifier=v.classifier
    )
    assert len(fig.data) == 1 + 6
    empty = F.collapse_figure(np.zeros(0), {}, np.zeros(0), np.zeros(0))
    assert "No evaluation" in empty.layout.annotations[0].text


@pytest.mark.slow
def test_layers_page_shows_collapse_beside_the_last_layer(make_run, runs_folder):
    import json
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    make_run("full.h5", runs_folder)
    root = Path(__file__).resolve().parents[1]
    at = AppTest.from_file(str(root / "pages" / "layers.py"), default_timeout=60)
    at.session_state["run"] = "full.h5"
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    fig = [
        s
        for s in specs
        if "Neural collapse" in ((s["layout"].get("title") or {}).get("text") or "")
    ]
    assert len(fig) == 1
    names = [t.get("name") for t in fig[0]["data"]]
    assert names[0].endswith("LCA") and "NC1 within-class spread" in names
