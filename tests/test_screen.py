"""Charts go to the browser at screen precision (lca.figures.screen): float32, half the bytes,
with nothing a chart shows changed, and the shared figure data left as it was."""

from __future__ import annotations

import base64
import copy
import json

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio

import lca.figures as F
from lca.figures.screen import screen_array, screen_spec


def decode(typed: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(typed["bdata"]), dtype=np.dtype(typed["dtype"]))


def test_float64_arrays_become_float32_rounded_values():
    a = np.random.default_rng(0).normal(size=1000) * 1e-3
    out = screen_array(a)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, a.astype(np.float32))
    np.testing.assert_allclose(out, a, rtol=2**-24)


def test_arrays_float32_cannot_draw_are_kept():
    huge = np.array([1.0, 1e39])  # would become infinite
    tiny = np.array([0.0, 1e-40, 1.0])  # would leave float32's normal range
    assert screen_array(huge) is huge and screen_array(tiny) is tiny
    special = np.array([np.nan, np.inf, -np.inf, 0.0, 2.5])  # drawn the same in float32
    np.testing.assert_array_equal(screen_array(special), special.astype(np.float32))
    ints = np.arange(5)
    assert screen_array(ints) is ints  # plotly already sends the smallest integer type


def test_a_figure_spec_is_sent_in_float32_and_the_input_is_untouched():
    fig = F.cumulative_layers(np.random.default_rng(1).normal(size=(500, 2)), ["a", "b"])
    spec = fig.to_plotly_json()
    before = copy.deepcopy(spec)
    out = screen_spec(spec)
    assert json.dumps(spec, default=str) == json.dumps(before, default=str)
    sent = json.loads(pio.to_json(out, validate=False))
    for trace, original in zip(sent["data"], before["data"], strict=True):
        assert trace["y"]["dtype"] == "f4"
        y = original["y"]
        y = decode(y) if isinstance(y, dict) else np.asarray(y)
        np.testing.assert_array_equal(decode(trace["y"]), y.astype(np.float32))
    assert sent["layout"]["title"]["text"] == before["layout"]["title"]["text"]


def test_a_2d_typed_array_keeps_its_shape():
    z = np.random.default_rng(2).normal(size=(3, 4))
    spec = go.Figure(go.Heatmap(z=z)).to_plotly_json()
    typed = json.loads(pio.to_json(spec, validate=False))["data"][0]["z"]
    assert typed["dtype"] == "f8"  # what plotly makes of it, shape included
    out = screen_spec(typed)
    assert out["dtype"] == "f4" and out["shape"] == typed["shape"]
    np.testing.assert_array_equal(decode(out).reshape(3, 4), z.astype(np.float32))


def test_what_a_page_sends_has_no_float64_array():
    """``pages.shared.prepare``, the one way every page's chart goes out."""
    from pages.shared import prepare

    rng = np.random.default_rng(3)
    fig = F.layer_step_heatmap(rng.normal(size=(2000, 3)) * 1e-3, ["fc1", "fc2", "out"])
    kinds = []

    def walk(node):
        if isinstance(node, dict):
            if "bdata" in node:
                kinds.append(node["dtype"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(prepare(fig).to_plotly_json())
    assert "f4" in kinds and "f8" not in kinds, kinds
