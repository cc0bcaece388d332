"""Figures written as plotly data (lca.figures.spec): valid for plotly, laid out exactly like the
figures built through plotly's object model, and drawing the numbers they are given."""

from __future__ import annotations

import json
import math

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest
from plotly.subplots import make_subplots

from lca import figures as F
from lca.figures import spec
from lca.figures.axes import titled_layout

RNG = np.random.default_rng(7)


def _layout_json(fig: go.Figure) -> dict:
    return json.loads(pio.to_json(fig, validate=False))["layout"]


@pytest.mark.parametrize(
    ("title", "legend"),
    [
        (None, False),
        ("Short title", False),
        ("Short title", True),
        ("A title long enough to be wrapped over two or even three lines on a projector", True),
    ],
)
def test_titled_layout_is_the_object_models(title, legend):
    traces = [go.Bar(y=[1], name="a")] + ([go.Bar(y=[2], name="b")] if legend else [])
    built = titled_layout(go.Figure(traces), title, height=420)
    layout = spec.titled_layout(title, height=420, legend=legend)
    data = spec.figure([t.to_plotly_json() for t in traces], layout)
    assert _layout_json(data) == _layout_json(built)


@pytest.mark.parametrize("rows", [1, 2])
def test_subplot_axes_are_make_subplots(rows):
    heights = (0.58, 0.42) if rows == 2 else ()
    grid = make_subplots(
        rows=rows,
        cols=1,
        shared_xaxes=True,
        row_heights=list(heights) or None,
        vertical_spacing=0.06,
    )
    axes = spec.subplot_axes(rows, heights)
    expected = {k: v for k, v in _layout_json(grid).items() if k.startswith(("xaxis", "yaxis"))}
    assert json.loads(json.dumps(axes)) == expected
    axes["yaxis"]["title"] = {"text": "changed"}  # a copy: the next caller gets a clean grid
    assert "title" not in spec.subplot_axes(rows, heights)["yaxis"]


def test_validated_catches_a_property_plotly_does_not_know():
    good = spec.figure([{"type": "bar", "y": [1, 2]}], spec.titled_layout("t"))
    spec.validated(good)
    bad = spec.figure([{"type": "bar", "y": [1, 2], "colour": "red"}], spec.titled_layout("t"))
    with pytest.raises(ValueError):
        spec.validated(bad)


def _neurons_figures() -> list[go.Figure]:
    v = RNG.normal(size=300)
    return [
        F.unit_heatmap(RNG.normal(size=(500, 40)), max_cells=2_000),
        F.unit_heatmap(RNG.normal(size=(8, 4)), positions=np.arange(8) + 1.5),
        F.first_layer_images(RNG.normal(size=(12, 16)), (1, 4, 4)),
        F.lca_histogram(np.r_[RNG.normal(size=2_000), np.zeros(10)], log=True),
        F.helped_fraction_histogram(RNG.integers(0, 50, size=200), 50, totals=RNG.normal(size=200)),
        F.param_trace(v),
        F.param_trace(RNG.normal(size=5_000), max_bars=400, positions=np.arange(5_000) + 1.0),
        F.param_trace(v, cumulative=False),
    ]


def test_neurons_figures_are_valid_plotly():
    for fig in _neurons_figures():
        spec.validated(fig)  # raises on any property plotly.js would not know


def test_unit_heatmap_states_its_cell_cap_and_keeps_every_sum():
    a = RNG.normal(size=(2_000, 256))
    fig = F.unit_heatmap(a, max_cells=60_000)
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z.size <= 60_000
    assert "at most 60,000 cells" in fig.layout.title.text.replace("<br>", " ")
    assert math.isclose(math.fsum(z.ravel()), math.fsum(a.ravel()), rel_tol=1e-9, abs_tol=1e-9)
    # Each unit's row of cells sums to that unit's total over every step, block by block.
    small = F.unit_heatmap(a[:, :4], max_cells=400)  # 4 units kept, steps in 100 blocks
    zs = np.asarray(small.data[0].z, dtype=float)
    assert zs.shape == (4, 100)
    np.testing.assert_allclose(zs.sum(axis=1), a[:, :4].sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(zs[:, 0], a[:20, :4].sum(axis=0), rtol=1e-12)
    full = F.unit_heatmap(a[:10, :5])
    assert "at most" not in full.layout.title.text  # nothing summed: no cap to state


def test_lca_histogram_counts_are_a_direct_count():
    v = np.r_[RNG.standard_normal(50_000).astype(np.float32), np.zeros(300, np.float32), np.nan]
    fig = F.lca_histogram(v, bins=40, clip_quantile=0.95)
    nz = v[np.isfinite(v) & (v != 0)]
    lim = float(np.quantile(np.abs(nz), 0.95))
    edges = np.linspace(-lim, lim, 41)
    direct = np.array(
        [np.count_nonzero((nz >= a) & (nz < b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    )
    direct[-1] += np.count_nonzero(nz == lim)
    direct[0] += np.count_nonzero(nz < -lim)  # beyond the range: counted in the end bars
    direct[-1] += np.count_nonzero(nz > lim)
    drawn = np.r_[np.asarray(fig.data[0].y), np.asarray(fig.data[1].y)]
    np.testing.assert_array_equal(drawn, direct)
    assert fig.data[0].marker.color == F.HELPED and fig.data[1].marker.color == F.HURT


def test_capped_colour_bar_title_shows_no_markup_on_a_page():
    a = RNG.normal(size=(200, 8))
    a[50, 3] = 1e3  # one outlier caps the colours and is named on the colour bar
    fig = F.unit_heatmap(a)
    shown = F.literal_spec(fig)["data"][0]["colorbar"]["title"]["text"]
    assert "colours capped" in shown and "largest cell" in shown
    assert "&lt;" not in shown  # no tag left for the page to draw as text
