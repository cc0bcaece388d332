"""Figures for the low-precision techniques: bits assigned per tensor and class (fixed-point),
per-layer loss scales beside the layers' LCA and the float16 underflow rate (adaptive loss
scaling). Pure functions of numpy arrays; helped (LCA < 0) is green, hurt red.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .common import base_layout, empty_figure, series_color, sign_colors

__all__ = ["layer_scales_figure", "precision_bits_figure", "underflow_figure"]

CLASS_LABELS = {
    "weights": "weights (forward)",
    "activations": "activations",
    "act_grads": "activation gradients",
    "weight_grads": "weight gradients",
    "accumulator": "weight accumulator",
}


def _module(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def precision_bits_figure(
    tensor_names: Sequence[str], bits: Mapping[str, np.ndarray], *, height: int = 360
) -> go.Figure:
    """Grouped bars: per layer (the rows with a finite value), the bits of each tensor class."""
    arrays = {c: np.asarray(v, dtype=np.float64) for c, v in bits.items()}
    rows = sorted({i for v in arrays.values() for i in np.flatnonzero(np.isfinite(v))})
    if not rows:
        return empty_figure("No bit assignment recorded.", height=height)
    layers = [_module(tensor_names[i]) for i in rows]
    fig = go.Figure()
    for k, (cls, v) in enumerate(arrays.items()):
        y = [v[i] for i in rows]
        fig.add_trace(
            go.Bar(
                x=layers,
                y=y,
                name=CLASS_LABELS.get(cls, cls),
                marker_color=series_color(k),
                text=[f"{b:g}" for b in y],
                textposition="outside",
                hovertemplate="%{x}<br>%{y:g} bits<extra>"
                + CLASS_LABELS.get(cls, cls)
                + "</extra>",
            )
        )
    base_layout(fig, "Bits assigned to each tensor, by class", height=height)
    fig.update_layout(barmode="group")
    fig.update_xaxes(title="layer")
    top = max(float(np.nanmax(v)) for v in arrays.values() if np.isfinite(v).any())
    fig.update_yaxes(title="bits", range=[0, top * 1.2 + 1])
    return fig


def layer_scales_figure(
    tensor_names: Sequence[str],
    scale: np.ndarray,
    layer_lca: np.ndarray,
    kind: np.ndarray | None = None,
    *,
    height: int = 520,
) -> go.Figure:
    """Top: each layer's accumulated loss scale per step (log2). Bottom: each layer's total LCA
    over the run (green = helped), so underflow-prone layers can be read against their help."""
    s = np.asarray(scale, dtype=np.float64)
    if s.ndim != 2 or not s.size or not np.isfinite(s).any():
        return empty_figure("No per-layer loss scales recorded yet.", height=height)
    keep = np.ones(len(s), dtype=bool) if kind is None else np.asarray(kind)[: len(s)] == 0
    x = np.flatnonzero(keep)
    rows = [
        i
        for i, n in enumerate(tensor_names)
        if n.endswith("weight") and i < s.shape[1] and np.isfinite(s[:, i]).any()
    ]
    fig = make_subplots(
        rows=2,
        cols=1,
        row_heights=[0.62, 0.38],
        vertical_spacing=0.14,
        subplot_titles=(
            "log2 of each layer's loss scale, per step",
            "each layer's total LCA (green = helped)",
        ),
    )
    for k, i in enumerate(rows):
        fig.add_trace(
            go.Scatter(
                x=x,
                y=np.log2(s[keep, i]),
                mode="lines",
                name=_module(tensor_names[i]),
                line={"color": series_color(k), "shape": "hv"},
                hovertemplate="step %{x}<br>scale 2^%{y:g}<extra>%{fullData.name}</extra>",
            ),
            row=1,
            col=1,
        )
    lca = np.asarray(layer_lca, dtype=np.float64)
    if lca.ndim == 2 and lca.shape[0]:
        mods: dict[str, float] = {}
        for i, n in enumerate(tensor_names[: lca.shape[1]]):
            mods[_module(n)] = mods.get(_module(n), 0.0) + float(np.nansum(lca[:, i]))
        names, totals = list(mods), np.array(list(mods.values()))
        fig.add_trace(
            go.Bar(
                x=names,
                y=totals,
                marker_color=sign_colors(totals),
                showlegend=False,
                hovertemplate="%{x}<br>ΣLCA %{y:.4g}<extra></extra>",
            ),
            row=2,
            col=1,
        )
    base_layout(
        fig, "Adaptive loss scaling: scales per layer beside the layers' LCA", height=height
    )
    fig.update_xaxes(title="step", row=1, col=1)
    fig.update_yaxes(title="log2 scale", row=1, col=1)
    fig.update_yaxes(title="ΣLCA", row=2, col=1)
    return fig


def underflow_figure(
    underflow: np.ndarray,
    underflow_global: np.ndarray | None = None,
    kind: np.ndarray | None = None,
    *,
    height: int = 300,
) -> go.Figure:
    """Fraction of nonzero gradient values flushed to zero in float16, per step (%)."""
    u = np.asarray(underflow, dtype=np.float64)
    if u.ndim != 1 or not len(u):
        return empty_figure("No underflow recorded yet.", height=height)
    keep = np.ones(len(u), dtype=bool) if kind is None else np.asarray(kind)[: len(u)] == 0
    x = np.flatnonzero(keep)
    fig = go.Figure(
        go.Scatter(
            x=x,
            y=100 * u[keep],
            mode="lines",
            name="per-layer scales",
            line={"color": series_color(0)},
        )
    )
    if underflow_global is not None and len(underflow_global) == len(u):
        g = np.asarray(underflow_global, dtype=np.float64)
        fig.add_trace(
            go.Scatter(
                x=x,
                y=100 * g[keep],
                mode="lines",
                name="one global scale",
                line={"color": series_color(1), "dash": "dash"},
            )
        )
    base_layout(fig, "Gradient values flushed to zero in float16", height=height)
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="underflow (%)", rangemode="tozero")
    return fig
