"""Techniques page, low-precision part: the precision figures on synthetic arrays, and the page
on real run files with fixed-point, and adaptive-loss-scaling + bnn (writer, reader, page)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from lca.figures import (
    HELPED,
    HURT,
    layer_scales_figure,
    precision_bits_figure,
    underflow_figure,
)
from lca.store import Reader

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "techniques_used.py")
LOWBIT = [
    {"name": "fixed-point", "probe_steps": 3},
    {"name": "adaptive-loss-scaling"},
    {"name": "bnn"},
]
NAMES = ["fc1.weight", "fc1.bias", "out.weight", "out.bias"]


def test_precision_bits_figure_groups_classes_per_layer():
    nan = np.nan
    fig = precision_bits_figure(
        NAMES, {"weights": np.array([8, nan, 10, nan]), "accumulator": np.array([20, nan, 22, nan])}
    )
    assert [t.name for t in fig.data] == ["weights (forward)", "weight accumulator"]
    assert list(fig.data[0].x) == ["fc1", "out"] and list(fig.data[1].y) == [20, 22]
    empty = precision_bits_figure(NAMES, {"weights": np.full(4, nan)})
    assert not empty.data


def test_layer_scales_figure_plots_log2_scales_and_coloured_layer_totals():
    scale = np.array([[1, 1, 4, 4], [2, 2, 8, 8], [2, 2, 8, 8.0]])
    lca = np.array([[-0.1, 0.0, 0.2, 0.0], [-0.1, 0.0, 0.1, 0.0], [0, 0, 0, 0.0]])
    kind = np.array([0, 1, 0])  # the intervention row is left out
    fig = layer_scales_figure(NAMES, scale, lca, kind)
    lines = [t for t in fig.data if t.type == "scatter"]
    assert [t.name for t in lines] == ["fc1", "out"]
    assert list(lines[1].y) == [2, 3] and list(lines[1].x) == [0, 2]
    bars = [t for t in fig.data if t.type == "bar"][0]
    assert list(bars.x) == ["fc1", "out"]
    assert np.allclose(bars.y, [-0.2, 0.3]) and list(bars.marker.color) == [HELPED, HURT]


def test_underflow_figure_compares_with_the_global_scale():
    fig = underflow_figure(np.array([0.1, 0.2]), np.array([0.3, 0.4]))
    assert [t.name for t in fig.data] == ["per-layer scales", "one global scale"]
    assert np.allclose(fig.data[1].y, [30, 40])


def _page(name: str) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["run"] = name
    at.run()
    assert not at.exception and not at.error
    return at


@pytest.mark.slow
def test_page_shows_precision_scales_and_savings(runs_folder, make_run):
    # fixed-point refuses bnn (both set the weights' number format) and adaptive-loss-scaling
    # (its torch.func backward cannot run fixed-point's rounding): two runs show all three.
    common = {"steps": 8, "measure_size": 100, "optimizer": "adam", "lr": 0.01}
    fixed = make_run(name="fixed.h5", folder=runs_folder, techniques=LOWBIT[:1], **common)
    scaled = make_run(name="scaled.h5", folder=runs_folder, techniques=LOWBIT[1:], **common)
    with Reader(fixed) as r:
        bits = np.asarray(r.array("techniques/fixed-point/bits_accumulator"))
        assert np.isfinite(bits).sum() == 2  # hidden (16,): fc1 and out
        assert set(r.technique_summaries()) == {"fixed-point"}
    with Reader(scaled) as r:
        assert np.asarray(r.series("techniques/adaptive-loss-scaling/scale")).shape[0] == 8
        assert np.isfinite(np.asarray(r.series("techniques/bnn/residual"))).all()
        assert set(r.technique_summaries()) == {"adaptive-loss-scaling", "bnn"}
    at = _page("fixed.h5")
    assert "Precision per tensor (fixed-point)" in [h.value for h in at.subheader]
    table = [df for df in at.dataframe if "numerics" in df.value.columns][0].value
    assert list(table["technique"]) == ["fixed-point"]
    assert set(table["numerics"]) == {"simulated"}
    at = _page("scaled.h5")
    heads = [h.value for h in at.subheader]
    assert "Per-layer loss scales (adaptive-loss-scaling)" in heads
    assert "bnn: recorded series" in heads  # residual, loss_binary, flipped
    table = [df for df in at.dataframe if "numerics" in df.value.columns][0].value
    assert list(table["technique"]) == ["adaptive-loss-scaling", "bnn"]
    assert set(table["numerics"]) == {"simulated"}
