"""Figures of the Compare page: two or more runs side by side. Pure functions.

Loss curves overlaid, per-layer totals grouped by run, and one run's difference from another
(blue where run B's layer lowered the loss more, orange where less: green and red keep meaning
helped and hurt). Conventions in ``lca.figures.axes``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from .axes import (
    curve,
    thin,
    titled_layout,
)
from .common import (
    STILL,
    empty_figure,
    series_color,
)

__all__ = [
    "B_LESS",
    "B_MORE",
    "compare_layer_difference",
    "compare_layers",
    "compare_loss",
    "difference_colors",
]


def compare_loss(
    curves: Sequence[tuple[str, np.ndarray, np.ndarray]],
    *,
    x_title: str = "training step",
    log_y: bool = False,
    title: str = "Loss on the measurement set, run by run",
    height: int = 420,
) -> go.Figure:
    """Loss curves of several runs overlaid: ``curves`` = [(label, x, loss), ...]."""
    curves = [(lab, np.asarray(x, float), np.asarray(y, float)) for lab, x, y in curves if len(y)]
    if not curves:
        return empty_figure("None of these runs has recorded a loss yet.")
    fig = go.Figure()
    for j, (lab, x, y) in enumerate(curves):
        n = min(len(x), len(y))
        idx = thin(n)
        fig.add_trace(
            curve(
                x=x[:n][idx],
                y=y[:n][idx],
                mode="lines",
                name=lab,
                line={"color": series_color(j), "width": 2.5},
                hovertemplate=f"{lab}<br>%{{x:.4g}}: loss %{{y:.5f}}<extra></extra>",
            )
        )
    titled_layout(fig, title, height=height)
    fig.update_xaxes(title=x_title)
    fig.update_yaxes(title="loss", type="log" if log_y else "linear")
    return fig


def _per_param(values: np.ndarray, counts: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64) / np.maximum(np.asarray(counts, np.float64), 1)


def compare_layers(
    names: Sequence[str],
    totals: Mapping[str, np.ndarray],
    *,
    counts: Mapping[str, np.ndarray] | None = None,
    per_param: bool = False,
    title: str | None = None,
    height: int = 420,
) -> go.Figure:
    """Per-layer total LCA of several runs side by side (grouped bars, one colour per run).

    ``counts``: run label -> parameters per layer, used when ``per_param`` (runs may share layer
    names but not sizes).
    """
    if not names or not totals:
        return empty_figure("These runs have no layer names in common.")
    per = bool(per_param and counts is not None)
    fig = go.Figure()
    for j, (lab, tot) in enumerate(totals.items()):
        y = _per_param(tot, counts[lab]) if per else np.asarray(tot, dtype=np.float64)
        fig.add_trace(
            go.Bar(
                x=list(names),
                y=y,
                name=lab,
                marker_color=series_color(j),
                hovertemplate=f"{lab}<br>%{{x}}: %{{y:.4e}}<extra></extra>",
            )
        )
    fig.add_hline(y=0, line={"color": "black", "width": 1})
    what = " per parameter" if per else ""
    titled_layout(
        fig, title or f"Total LCA{what} of each layer, run by run (below 0 = helped)", height=height
    )
    fig.update_layout(barmode="group")
    fig.update_xaxes(title="layer (parameter tensor)", tickangle=-30 if len(names) > 6 else 0)
    fig.update_yaxes(title=f"total LCA{what} (below 0 = helped)", exponentformat="e")
    return fig


B_MORE = "#2166ac"  # blue: run B's layer lowered the loss more than run A's
B_LESS = "#e08214"  # orange: less (never red or green: those mean hurt and helped)


def difference_colors(d: np.ndarray) -> list[str]:
    """Blue where B − A < 0 (B lowered the loss more), orange where > 0, grey where equal."""
    return [B_MORE if x < 0 else B_LESS if x > 0 else STILL for x in np.asarray(d).ravel()]


def compare_layer_difference(
    names: Sequence[str],
    a: np.ndarray,
    b: np.ndarray,
    label_a: str,
    label_b: str,
    *,
    counts_a: np.ndarray | None = None,
    counts_b: np.ndarray | None = None,
    per_param: bool = False,
    height: int = 380,
) -> go.Figure:
    """Run B − run A per layer: blue where B's layer lowered the loss more (or raised it less)
    than A's, orange where less. Not green and red: those mean helped and hurt, and a layer
    that helped in both runs can still be "less" in B."""
    if not names:
        return empty_figure("These runs have no layer names in common.")
    per = bool(per_param and counts_a is not None and counts_b is not None)
    if per:
        d = _per_param(b, counts_b) - _per_param(a, counts_a)
    else:
        d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    fig = go.Figure(
        go.Bar(
            x=list(names),
            y=d,
            marker_color=difference_colors(d),
            hovertemplate="%{x}<br>B − A = %{y:.4e}<extra></extra>",
            showlegend=False,
        )
    )
    fig.add_hline(y=0, line={"color": "black", "width": 1})
    what = " per parameter" if per else ""
    titled_layout(
        fig,
        f"Difference{what}: {label_b} − {label_a} (blue = B lowered the loss more, orange = less)",
        height=height,
    )
    fig.update_xaxes(title="layer (parameter tensor)", tickangle=-30 if len(names) > 6 else 0)
    fig.update_yaxes(title=f"difference of total LCA{what}", exponentformat="e")
    return fig
