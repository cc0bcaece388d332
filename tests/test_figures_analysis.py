"""Figures of the analysis pages and the synchrony metric, without Streamlit.

Checks what a reader of the chart relies on: the traces are there, helped is green and hurt red,
heatmaps are centred at 0, block-summed cells keep totals exactly, and the synchrony test tells
synchronized peaks from independent series.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import pytest

from lca import figures as F
from lca.figures.common import DIVERGING, HELPED, HURT, NOT_HELPED, STILL
from lca.synchrony import SynchronyError, coincidence, local_level, peak_steps, synchrony

RNG = np.random.default_rng(7)


def _is_empty(fig: go.Figure) -> bool:
    return not fig.data and bool(fig.layout.annotations)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


# ---------------------------------------------------------------------------------------------
# Helpers.


def test_thin_keeps_ends_and_bounds_points():
    idx = F.thin(10_001, 1000)
    assert idx[0] == 0 and idx[-1] == 10_000 and len(idx) <= 1001
    assert list(F.thin(5, 10)) == [0, 1, 2, 3, 4]


def test_block_centres():
    first, last, centre = F.block_centres(np.array([0, 3, 6]), 8)
    assert list(first) == [1, 4, 7] and list(last) == [3, 6, 8]
    assert list(centre) == [2.0, 5.0, 7.5]


def test_step_positions_keep_optimizer_step_numbers_across_interventions():
    # Rows: prune before any step, step, step, prune, step, step.
    kind = np.array([1, 0, 0, 1, 0, 0])
    pos = F.step_positions(kind)
    assert list(pos) == [0.5, 1, 2, 2.5, 3, 4]  # the last step is step 4, not row 6
    first, last, centre = F.block_centres(np.array([0, 3]), 6, positions=pos)
    assert list(first) == [0.5, 2.5] and list(last) == [2, 4]
    # Figures place rows there: the loss after the second prune is drawn at 2.5.
    fig = F.loss_conservation(np.arange(7.0)[::-1], -np.ones(6), kind=kind)
    assert list(fig.data[0].x) == [0, 0.5, 1, 2, 2.5, 3, 4]
    assert list(fig.data[2].x) == [0.5, 2.5]  # the intervention markers
    heat = F.layer_step_heatmap(np.ones((6, 2)), ["a", "b"], kind=kind, max_cells=4)
    cells = heat.data[1].customdata  # [layer, first step, last step, value]: whole steps
    assert np.asarray(cells)[:2, 1:3].tolist() == [[0, 2], [2, 4]]
    lines = F.cumulative_layers(np.ones((6, 1)), ["a"], kind=kind)
    assert list(lines.data[0].x) == list(pos)
    minibatch = F.training_curves(np.ones(6), kind=kind)
    assert list(minibatch.data[0].x) == list(pos)


def test_per_unit_sums_other_axes():
    a = RNG.normal(size=(5, 3, 4, 2))
    u = F.per_unit(a)
    assert u.shape == (5, 3)
    np.testing.assert_allclose(u, a.sum(axis=(2, 3)))
    np.testing.assert_allclose(F.per_unit(a[:, :, 0, 0]), a[:, :, 0, 0])


@pytest.mark.parametrize(
    ("dataset", "n", "shape"),
    [
        ("digits", 64, (1, 8, 8)),
        ("mnist", 784, (1, 28, 28)),
        ("fashion_mnist", 100, (1, 10, 10)),
        ("cifar10", 3072, (3, 32, 32)),
        ("CIFAR-10", 3072, (3, 32, 32)),
        ("iris", 4, None),
        ("digits", 30, None),
        ("moons", 4, None),
        (None, 64, None),
    ],
)
def test_infer_image_shape(dataset, n, shape):
    assert F.infer_image_shape(dataset, n) == shape


# ---------------------------------------------------------------------------------------------
# Loss page.


def test_loss_conservation_rebuilds_loss_and_marks_interventions():
    loss = np.array([2.0, 1.5, 1.2, 1.3, 1.0])
    lca = np.diff(loss)
    kind = np.array([0, 0, 1, 0])
    fig = F.loss_conservation(loss, lca, kind=kind)
    measured, rebuilt, marks = fig.data[:3]
    np.testing.assert_allclose(measured.y, loss)
    np.testing.assert_allclose(rebuilt.y, loss)  # exact allocation: the curves coincide
    assert list(marks.x) == [2.5] and "intervention" in marks.name  # between steps 2 and 3
    assert fig.layout.yaxis.type == "linear"
    assert F.loss_conservation(loss, lca, log_y=True).layout.yaxis.type == "log"


def test_loss_conservation_long_run_is_thinned():
    loss = np.linspace(2, 0.1, 50_001)
    fig = F.loss_conservation(loss, np.diff(loss))
    assert len(fig.data[0].x) <= 4001
    assert fig.data[0].x[-1] == 50_000


def test_step_error_with_and_without_splits():
    err = RNG.normal(scale=1e-4, size=50)
    fig = F.step_error(err, np.ones(50, dtype=int))
    assert len(fig.data) == 1
    splits = np.ones(50, dtype=int)
    splits[10] = 4
    fig = F.step_error(err, splits, tolerance=1e-3)
    assert len(fig.data) == 2 and fig.data[1].yaxis == "y2"
    assert list(fig.data[0].x[:2]) == [1, 2]  # per-step values drawn at step numbers 1..T
    assert _is_empty(F.step_error(np.zeros(0)))


def test_training_curves():
    ev = {
        "train_step": np.array([0, 10, 20]),
        "train_acc": np.array([0.1, 0.5, 0.9]),
        "test_acc": np.array([0.1, 0.4, 0.8]),
    }
    fig = F.training_curves(RNG.random(20), ev)
    names = [t.name for t in fig.data]
    assert names == ["minibatch loss", "train accuracy", "test accuracy"]
    np.testing.assert_allclose(fig.data[2].y, [10, 40, 80])
    assert _is_empty(F.training_curves(None, {}))


def test_helped_fractions_colours_and_totals():
    t = 30
    helped = RNG.uniform(0.4, 0.6, t)
    hurt = 1 - helped - 0.05
    fig = F.helped_fractions(helped, hurt, kind=np.zeros(t))
    assert [tr.line.color for tr in fig.data] == [HELPED, STILL, HURT]
    total = sum(np.asarray(tr.y) for tr in fig.data)
    np.testing.assert_allclose(total, 100)
    assert any(s.y0 == 50 for s in fig.layout.shapes)  # the 50% line


def test_helped_fractions_long_run_block_means():
    t = 10_000
    helped = np.r_[np.full(5000, 0.6), np.full(5000, 0.4)]
    fig = F.helped_fractions(helped, 1 - helped, max_points=100)
    assert len(fig.data[0].x) == 100
    np.testing.assert_allclose(np.asarray(fig.data[0].y).mean(), 50)
    assert fig.data[0].y[0] == pytest.approx(60) and fig.data[0].y[-1] == pytest.approx(40)
    assert t == 10_000


# ---------------------------------------------------------------------------------------------
# Layers page.


def test_layer_totals_colours_and_per_param():
    fig = F.layer_totals(["a", "b", "c"], np.array([-2.0, 1.0, 0.0]), [4, 1, 2])
    assert list(fig.data[0].marker.color) == [HELPED, HURT, STILL]
    fig = F.layer_totals(["a", "b", "c"], np.array([-2.0, 1.0, 0.0]), [4, 1, 2], per_param=True)
    np.testing.assert_allclose(fig.data[0].y, [-0.5, 1.0, 0.0])


def test_layer_step_heatmap_keeps_totals_and_cells_point_to_steps():
    t, nl = 1003, 4
    a = RNG.normal(size=(t, nl))
    names = [f"l{i}" for i in range(nl)]
    fig = F.layer_step_heatmap(a, names, max_cells=400)
    hm, cells = fig.data
    z = np.asarray(hm.z)
    assert z.shape[0] == nl and z.size <= 400
    assert hm.zmid == 0 and hm.zmin == -hm.zmax
    assert hm.colorscale[0][1] == HELPED and hm.colorscale[-1][1] == HURT
    for j in range(nl):
        assert _close(math.fsum(z[j]), math.fsum(a[:, j]))  # block sums keep totals
    # Every clickable marker names its layer and steps; its value is that block's exact sum.
    custom = np.asarray(cells.customdata)
    assert len(custom) == z.size
    for layer, first, last, value in custom[:: max(1, len(custom) // 25)]:
        assert _close(value, a[int(first) - 1 : int(last), int(layer)].sum())
    assert fig.layout.clickmode == "event+select"


def test_layer_step_heatmap_small_run_is_not_downsampled():
    a = RNG.normal(size=(20, 3))
    z = np.asarray(F.layer_step_heatmap(a, ["a", "b", "c"]).data[0].z)
    np.testing.assert_allclose(z, a.T)
    assert _is_empty(F.layer_step_heatmap(np.zeros((0, 3)), ["a", "b", "c"]))


def test_cumulative_layers_one_line_per_layer_without_green_or_red():
    c = np.cumsum(RNG.normal(size=(100, 3)), axis=0)
    fig = F.cumulative_layers(c, ["a", "b", "c"])
    assert [t.name for t in fig.data] == ["a", "b", "c"]
    assert not {t.line.color for t in fig.data} & {HELPED, HURT}
    per = F.cumulative_layers(c, ["a", "b", "c"], per_param_counts=[1, 2, 4], per_param=True)
    np.testing.assert_allclose(per.data[2].y[-1], c[-1, 2] / 4)


def test_a_layer_has_one_colour_on_every_page():
    """Home's live lines show only the largest layers; a layer must not change colour there."""
    from lca.figures.live import live_layer_lines

    names = [f"l{i}" for i in range(14)]
    c = np.cumsum(RNG.normal(size=(50, 14)), axis=0)
    c[:, 3] *= 1e-6  # small: the live chart leaves it out, shifting the others' rank
    everywhere = {t.name: t.line.color for t in F.cumulative_layers(c, names).data}
    live = {t.name: t.line.color for t in live_layer_lines(c, names).data}
    assert "l3" not in live and len(live) < len(names)
    assert all(everywhere[n] == colour for n, colour in live.items())
    assert len(set(everywhere.values())) == len(names)
    from lca.figures.techniques import technique_layer_lines_figure

    tensors = ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "out.weight"]
    steps = RNG.normal(size=(30, 5))
    per_tensor = {
        t.name: t.line.color for t in F.cumulative_layers(np.cumsum(steps, 0), tensors).data
    }
    modules = {t.name: t.line.color for t in technique_layer_lines_figure(steps, tensors).data}
    assert modules == {m: per_tensor[f"{m}.weight"] for m in ("conv1", "conv2", "out")}


def test_synchrony_legend_has_room_above_the_plot():
    from lca.synchrony import synchrony as sync

    peaks = np.zeros((200, 3))
    peaks[::17] = 1.0
    fig = F.synchrony_figure(sync(peaks + RNG.normal(scale=0.01, size=peaks.shape)))
    assert fig.layout.showlegend and fig.layout.margin.t >= 95  # legend and title both fit


def test_peak_raster_and_synchrony_figure():
    series = RNG.normal(size=(200, 3))
    res = synchrony(series, shifts=200)
    raster = F.peak_raster(res.peaks, ["a", "b", "c"])
    # 200 steps fit the screen: every cell is one step, dark (1) exactly where a layer peaked.
    hm = raster.data[0]
    np.testing.assert_array_equal(np.asarray(hm.z), res.peaks.astype(int))
    np.testing.assert_array_equal(np.asarray(hm.x), np.arange(1, 201))
    assert not hm.showscale
    # A long run: columns group steps, each cell counts its layer's peaks (none lost).
    long = np.zeros((3, 5003), dtype=bool)
    long[1, [0, 7, 5002]] = True
    long[2, ::3] = True
    hm = F.peak_raster(long, ["a", "b", "c"]).data[0]
    z = np.asarray(hm.z)
    assert z.shape[1] <= F.STEP_COLUMNS and hm.showscale
    np.testing.assert_array_equal(z.sum(axis=1), long.sum(axis=1))
    assert z[1, 0] == 2 and z[1, -1] == 1
    fig = F.synchrony_figure(res)
    assert isinstance(fig.data[0], go.Histogram) and len(fig.data[0].x) == 200
    assert any(s.type == "line" for s in fig.layout.shapes)  # the observed value
    assert "z =" in fig.layout.title.text


# ---------------------------------------------------------------------------------------------
# Neurons & weights page.


def test_unit_heatmap_downsamples_with_exact_totals():
    a = RNG.normal(size=(2000, 300))
    fig = F.unit_heatmap(a, max_cells=20_000)
    hm = fig.data[0]
    z = np.asarray(hm.z, dtype=float)
    assert z.size <= 20_000 and hm.zmid == 0
    assert _close(math.fsum(z.ravel()), math.fsum(a.ravel()))
    np.testing.assert_allclose(z.sum(axis=1).sum(), a.sum())
    fig = F.unit_heatmap(a[:10, :5], positions=np.arange(101, 111))
    assert fig.data[0].x[0] == 101  # drill-down ranges keep real step numbers
    assert fig.layout.yaxis.dtick == 1 and fig.layout.xaxis.dtick == 1  # no unit "1.5"


def test_first_layer_images_linear_and_conv():
    w = RNG.normal(size=(6, 64))
    fig = F.first_layer_images(w, (1, 8, 8))
    hm = fig.data[0]
    mosaic = np.asarray(hm.z, dtype=float)
    assert _close(np.nansum(mosaic), w.sum())
    assert hm.zmid == 0 and hm.colorscale[0][1] == HELPED
    custom = np.asarray(hm.customdata)
    assert set(np.unique(custom[..., 0])) == {-1, 0, 1, 2, 3, 4, 5}
    # Unit 0 occupies the top-left 8x8 block.
    np.testing.assert_allclose(mosaic[:8, :8], w[0].reshape(8, 8))
    conv = RNG.normal(size=(4, 3, 5, 5))
    mosaic = np.asarray(F.first_layer_images(conv).data[0].z, dtype=float)
    assert _close(np.nansum(mosaic), conv.sum())
    fig = F.first_layer_images(RNG.normal(size=(100, 64)), (1, 8, 8), max_units=10)
    assert "first 10 of 100" in fig.layout.title.text
    assert _is_empty(F.first_layer_images(w, (1, 4, 4)))


def test_lca_histogram_sides_and_counts():
    v = np.r_[RNG.normal(size=10_000), np.zeros(500)]
    fig = F.lca_histogram(v, clip_quantile=1.0)
    helped, hurt = fig.data
    assert helped.marker.color == HELPED and hurt.marker.color == HURT
    assert max(helped.x) < 0 < min(hurt.x)
    assert sum(helped.y) == (v < 0).sum() and sum(hurt.y) == (v > 0).sum()
    assert "exactly 0" in fig.layout.annotations[0].text
    assert F.lca_histogram(v, log=True).layout.yaxis.type == "log"
    clipped = F.lca_histogram(v, clip_quantile=0.9)
    assert sum(clipped.data[0].y) + sum(clipped.data[1].y) == 10_000  # extremes in end bars
    assert _is_empty(F.lca_histogram(np.zeros(10)))


def test_helped_fraction_histogram():
    helped_steps = np.r_[np.full(70, 30), np.full(30, 70), np.zeros(5)]
    totals = np.r_[np.ones(100), np.zeros(5)]
    fig = F.helped_fraction_histogram(helped_steps, 100, totals=totals)
    bar = fig.data[0]
    assert sum(bar.y) == 100  # the 5 that never moved are left out
    colors = dict(zip(np.round(bar.x, 3), bar.marker.color, strict=True))
    # Helped on 30% of steps says nothing of the rest (hurt or still): grey, never red.
    assert colors[71.0] == HELPED and colors[31.0] == NOT_HELPED
    assert HURT not in set(bar.marker.color)
    assert "never moved" in fig.layout.annotations[0].text


def test_top_parameters_order_and_indices():
    totals = {"w": np.array([[0.5, -3.0], [1.0, -1.0]]), "b": np.array([-2.0, 4.0])}
    helped = {"w": np.array([[1, 9], [2, 5]]), "b": np.array([8, 0])}
    rows = F.top_parameters(totals, helped, 10, k=2)
    assert [r["parameter"] for r in rows] == ["w[0, 1]", "b[0]", "b[1]", "w[1, 0]"]
    assert [r["side"] for r in rows] == ["helped", "helped", "hurt", "hurt"]
    assert rows[0]["index"] == 1 and rows[0]["% steps helped"] == 90.0
    assert F.top_parameters({}) == []


def test_param_trace_colours_and_block_sums():
    v = np.array([-1.0, 2.0, 0.0, -0.5])
    fig = F.param_trace(v)
    bars, line = fig.data
    assert list(bars.marker.color) == [HELPED, HURT, STILL, HELPED]
    np.testing.assert_allclose(line.y, np.cumsum(v))
    long = RNG.normal(size=10_000)
    bars = F.param_trace(long, max_bars=500).data[0]
    assert len(bars.y) == 500 and _close(math.fsum(bars.y), math.fsum(long))


# ---------------------------------------------------------------------------------------------
# Compare page.


def test_compare_figures():
    fig = F.compare_loss(
        [
            ("a", np.arange(3), np.array([2.0, 1.0, 0.5])),
            ("b", np.arange(4), np.array([2.0, 1.5, 1.0, 0.2])),
        ]
    )
    assert [t.name for t in fig.data] == ["a", "b"]
    totals = {"a": np.array([-1.0, 0.5]), "b": np.array([-2.0, 0.25])}
    fig = F.compare_layers(["x", "y"], totals, counts={"a": [1, 1], "b": [2, 1]}, per_param=True)
    assert fig.layout.barmode == "group"
    np.testing.assert_allclose(fig.data[1].y, [-1.0, 0.25])
    assert not {t.marker.color for t in fig.data} & {HELPED, HURT}
    diff = F.compare_layer_difference(["x", "y"], totals["a"], totals["b"], "a", "b")
    np.testing.assert_allclose(diff.data[0].y, [-1.0, -0.25])
    assert list(diff.data[0].marker.color) == [F.B_MORE, F.B_MORE]  # B lowered it more
    assert _is_empty(F.compare_layers([], {}))


@pytest.mark.parametrize("default", ["plotly", "none"])
def test_figures_carry_plotly_white_as_the_named_template_would(default, monkeypatch):
    """base_layout assigns plotly_white without validating it again: the JSON sent to the
    browser is the one ``update_layout(template="plotly_white")`` gives, whatever template is
    plotly's default (Streamlit makes its own the default when it is imported)."""
    import json

    import plotly.io as pio

    from lca.figures import common

    monkeypatch.setattr(pio.templates, "default", default)
    a = np.random.default_rng(1).normal(size=(30, 4))  # not RNG: later tests rely on its order

    def build() -> list[go.Figure]:
        return [
            F.layer_totals(["a", "b"], np.array([-1.0, 2.0])),  # bars
            F.unit_heatmap(a),  # a heatmap
            F.step_error(a[:, 0], np.arange(30) % 3 + 1),  # two y axes
            F.empty_figure("Nothing yet."),
        ]

    figs = build()
    monkeypatch.setattr(
        common, "white_template", lambda fig: fig.update_layout(template="plotly_white")
    )
    for fig, named in zip(figs, build(), strict=True):
        assert json.loads(fig.to_json()) == json.loads(named.to_json())
        assert fig.layout.template.layout.plot_bgcolor == "white"
    # The template is a copy: changing one figure's leaves plotly's (and the next figure's).
    figs[0].layout.template.layout.font.color = "red"
    assert pio.templates["plotly_white"].layout.font.color != "red"
    assert figs[1].layout.template.layout.font.color != "red"


def test_diverging_scale_is_green_to_red():
    assert DIVERGING[0][1] == HELPED and DIVERGING[-1][1] == HURT


# ---------------------------------------------------------------------------------------------
# Synchrony.


def _synchronized(t: int = 600, layers: int = 5, peaks: int = 30) -> np.ndarray:
    a = RNG.normal(scale=0.01, size=(t, layers))
    steps = RNG.choice(t, size=peaks, replace=False)
    a[steps] += RNG.choice([-1.0, 1.0], size=(peaks, layers))
    return a


def test_synchronized_peaks_give_high_z():
    res = synchrony(_synchronized(), top_fraction=0.05, shifts=500)
    assert res.observed == pytest.approx(1.0)  # every layer peaks on exactly the same steps
    assert res.z > 10 and res.p <= 2 / 501
    assert res.null_mean == pytest.approx(res.expected, abs=0.02)
    np.testing.assert_allclose(np.diag(res.pairwise), 1)


def test_independent_series_give_z_near_zero():
    zs = [synchrony(RNG.normal(size=(500, 6)), shifts=300, seed=i).z for i in range(12)]
    assert abs(float(np.mean(zs))) < 1.0
    assert max(abs(z) for z in zs) < 4


def test_detrending_removes_a_shared_trend():
    # Independent noise on a shared decay: raw peaks coincide early; detrended they do not.
    t = 1000
    trend = np.exp(-np.arange(t) / 60)[:, None]
    a = trend * RNG.normal(size=(t, 5))
    assert synchrony(a, window=0, shifts=300).z > 5
    assert synchrony(a, window=25, shifts=300).z < 4


def test_peak_steps_and_coincidence():
    a = RNG.normal(size=(100, 3))
    a[:, 2] = 0.0
    a[5, 2] = 1.0  # a layer that barely moved: fewer non-zero steps than peaks
    peaks, used, n = peak_steps(a, 0.1)
    assert n == 10 and list(used) == [0, 1]
    assert (peaks.sum(axis=1) == n).all()
    assert coincidence(np.vstack([peaks[0], peaks[0]])) == 1.0
    lvl = local_level(np.ones((10, 1)), 5)
    np.testing.assert_allclose(lvl, 1.0)


def test_synchrony_refuses_what_it_cannot_test():
    with pytest.raises(SynchronyError, match="at least"):
        synchrony(RNG.normal(size=(5, 3)))
    with pytest.raises(SynchronyError, match="two layers"):
        synchrony(RNG.normal(size=(100, 1)))
    with pytest.raises(SynchronyError, match="two layers"):
        synchrony(np.c_[RNG.normal(size=100), np.zeros(100)])
