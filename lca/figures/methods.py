"""Figures for training without backprop (DFA, BDFA): alignment over time, helped per layer.

Pure functions of arrays: the Techniques page passes the recorded ``alignment`` series and what
the technique reported when the run ended.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from .common import HELPED, HURT, base_layout, empty_figure, series_color

__all__ = ["alignment_figure", "helped_by_method_figure"]


def alignment_figure(
    alignment: np.ndarray,
    layers: Sequence[str],
    *,
    kind: np.ndarray | None = None,
    height: int = 340,
) -> go.Figure:
    """cos(DFA update, true gradient) per layer against the segment (one line per layer).

    ``alignment`` is (segments, layers); intervention rows are left out when ``kind`` is given.
    Above 0 the update goes downhill on the true loss; 0 is orthogonal (no learning).
    """
    a = np.asarray(alignment, dtype=np.float64)
    if a.ndim != 2 or not a.size or not np.any(np.isfinite(a)):
        return empty_figure("Alignment: nothing recorded yet.", height=height)
    x = np.arange(len(a))
    if kind is not None:
        keep = np.asarray(kind)[: len(a)] == 0
        x, a = x[keep], a[keep]
    fig = go.Figure()
    for j in range(a.shape[1]):
        name = layers[j] if j < len(layers) else f"layer {j}"
        fig.add_trace(
            go.Scatter(
                x=x, y=a[:, j], mode="lines", name=name, line={"color": series_color(j), "width": 2}
            )
        )
    fig.add_hline(y=0, line={"color": "#888", "dash": "dot"})
    base_layout(fig, "Alignment of each layer's update with the true gradient", height=height)
    fig.update_xaxes(title="segment")
    fig.update_yaxes(title="cosine(update, true gradient)", range=[-1, 1])
    return fig


def helped_by_method_figure(
    helped: Mapping[str, float], trained_by: Mapping[str, str], *, height: int = 320
) -> go.Figure:
    """Share of each layer's weights that helped (total LCA < 0), bars labelled by how the layer
    was trained (feedback alignment or backprop); green part helped, red part hurt."""
    layers = [n for n in helped if np.isfinite(helped[n])]
    if not layers:
        return empty_figure("Helped per layer: nothing recorded yet.", height=height)
    labels = [f"{n} ({trained_by.get(n, '?')})" for n in layers]
    h = np.array([100 * helped[n] for n in layers])
    fig = go.Figure(
        [
            go.Bar(x=labels, y=h, name="helped", marker_color=HELPED),
            go.Bar(x=labels, y=100 - h, name="the rest (hurt, or exactly 0)", marker_color=HURT),
        ]
    )
    base_layout(
        fig, "Weights that helped, per layer: feedback alignment vs backprop", height=height
    )
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title="weights (%)", range=[0, 100])
    return fig
