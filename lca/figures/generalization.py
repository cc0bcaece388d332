"""Generalization figures: LCA of the training loss beside LCA of the held-out loss.

Helped (LCA < 0) is green and hurt red on both; the held-out bars are hatched so the two losses
are told apart without a third colour.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from .axes import titled_layout
from .common import HELPED, HURT, empty_figure, sign_colors

__all__ = ["generalization_shares", "train_vs_heldout_layers"]


def _tick_angle(n: int) -> int:
    return -90 if n > 16 else -30 if n > 6 else 0


def train_vs_heldout_layers(
    names: Sequence[str],
    train_totals: np.ndarray,
    val_totals: np.ndarray,
    counts: Sequence[int] | np.ndarray | None = None,
    *,
    per_param: bool = False,
    title: str | None = None,
    height: int = 420,
) -> go.Figure:
    """Per layer, two bars: total LCA of the training loss (solid) and of the held-out loss
    (hatched); each green where the layer lowered that loss, red where it raised it."""
    tr = np.asarray(train_totals, dtype=np.float64)
    va = np.asarray(val_totals, dtype=np.float64)
    if len(tr) == 0:
        return empty_figure("This run has no layers.")
    if per_param and counts is not None:
        n = np.maximum(np.asarray(counts, dtype=np.float64), 1)
        tr, va = tr / n, va / n
    x = list(names)
    fig = go.Figure(
        [
            go.Bar(
                x=x,
                y=tr,
                name="training loss",
                marker={"color": sign_colors(tr)},
                hovertemplate="%{x}<br>training loss: %{y:.4e}<extra></extra>",
            ),
            go.Bar(
                x=x,
                y=va,
                name="held-out loss (hatched)",
                marker={
                    "color": sign_colors(va),
                    "pattern": {"shape": "/", "fgcolor": "white", "solidity": 0.35},
                },
                hovertemplate="%{x}<br>held-out loss: %{y:.4e}<extra></extra>",
            ),
        ]
    )
    fig.add_hline(y=0, line={"color": "black", "width": 1})
    what = " per parameter" if per_param else ""
    titled_layout(
        fig,
        title or f"Total LCA{what} of each layer: training (solid) vs held-out (hatched)",
        height=height,
    )
    fig.update_layout(barmode="group", legend={"orientation": "h", "y": -0.3})
    fig.update_xaxes(
        title="layer (parameter tensor)", automargin=True, tickangle=_tick_angle(len(x))
    )
    fig.update_yaxes(title=f"total LCA{what} (loss units)", exponentformat="e")
    return fig


def generalization_shares(
    names: Sequence[str],
    helped_both: np.ndarray,
    train_only: np.ndarray,
    val_only: np.ndarray,
    hurt_both: np.ndarray,
    *,
    title: str = "Which weights helped the training loss and which the held-out loss",
    height: int = 420,
) -> go.Figure:
    """Per layer, the share of its counted weights (total LCA over the run) that helped both
    losses (green), helped training but hurt held-out (red, green hatching: the generalization
    gap), hurt training but helped held-out (green, red hatching), or hurt both (red)."""
    groups = (helped_both, train_only, val_only, hurt_both)
    parts = [np.asarray(p, dtype=np.float64) for p in groups]
    total = sum(parts)
    if len(total) == 0 or not np.any(total > 0):
        return empty_figure("No weight has moved on both losses yet.")
    share = [100 * p / np.maximum(total, 1) for p in parts]
    x = list(names)
    styles = [
        ("helped both", HELPED, None),
        ("helped training, hurt held-out", HURT, HELPED),
        ("hurt training, helped held-out", HELPED, HURT),
        ("hurt both", HURT, None),
    ]
    bars = []
    for (label, color, hatch), s, p in zip(styles, share, parts, strict=True):
        marker: dict = {"color": color}
        if hatch is not None:
            marker["pattern"] = {"shape": "x", "fgcolor": hatch, "solidity": 0.4}
        bars.append(
            go.Bar(
                x=x,
                y=s,
                name=label,
                marker=marker,
                customdata=p,
                hovertemplate="%{x}<br>" + label + ": %{y:.1f}% (%{customdata:,} weights)"
                "<extra></extra>",
            )
        )
    fig = go.Figure(bars)
    titled_layout(fig, title, height=height)
    fig.update_layout(barmode="stack", legend={"orientation": "h", "y": -0.3})
    fig.update_xaxes(
        title="layer (parameter tensor)", automargin=True, tickangle=_tick_angle(len(x))
    )
    fig.update_yaxes(title="% of the layer's moving weights", range=[0, 100])
    return fig
