"""What the analysis figures share: the step axis, thinning, curves, titles, intervention marks.

Conventions of every analysis figure (Loss, Layers, Neurons & weights, Compare):

* LCA < 0 means **helped** (the parameter lowered the loss) and is green; > 0 **hurt**, red; the
  diverging heatmap scale is centred at 0 (``zmid=0``), so a pale cell means "little".
* Per-step quantities are drawn at step numbers 1..T (step k moves the loss from L_{k-1} to L_k);
  losses at 0..T (after 0..T steps). The two line up on a shared x axis; an intervention (e.g. a
  prune) sits between the steps around it (``lca.segments.step_positions``).
* Big arrays are block-summed (LCA is additive, so every cell is an exact sum and totals are
  kept), long curves use WebGL traces and are thinned to a few thousand points.
* When there is nothing to draw, a figure says why in words (``empty_figure``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import plotly.graph_objects as go

from lca.segments import step_axis, step_positions

from .common import (
    TITLE_LINE_PX,
    base_layout,
    trusted_layout,
    wrap_title,
)

__all__ = [
    "INTERVENTION",
    "STEP_COLUMNS",
    "block_centres",
    "step_axis",
    "step_positions",
    "thin",
]


INTERVENTION = "#7b3294"  # purple: a segment where a technique moved weights (e.g. a prune)
MEASURED = "#252525"  # the measured loss
PREDICTED = "#2c7fb8"  # L_0 + cumulative ΣA
# What is sent to a browser is sized to what a screen shows: a plot is ~1,000 px wide on a
# 1440-px screen (~750 on a projector), so more points or step columns than about two per pixel
# cost bytes, parsing and drawing (in every student's browser) and show nothing more.
# TensorBoard draws 1,000 points per scalar curve for the same reason.
MAX_POINTS = 2000  # points per curve sent to the browser
STEP_COLUMNS = 500  # block-summed step columns of a step heatmap or a bar chart over steps
CLICK_CELLS = 4_000  # cells of a clickable heatmap (one invisible SVG marker per cell)
GL_POINTS = 5000  # above this many points a curve is drawn with WebGL (Scattergl)


def curve(**kwargs: Any) -> go.Scatter | go.Scattergl:
    """A curve trace: SVG for short curves (crisp, no WebGL context to re-create on every live
    redraw), WebGL (Scattergl) for long ones."""
    x = kwargs.get("x")
    n = 0 if x is None else len(x)
    return go.Scattergl(**kwargs) if n > GL_POINTS else go.Scatter(**kwargs)


def thin(n: int, max_points: int = MAX_POINTS) -> np.ndarray:
    """Indices 0..n-1 thinned by a stride to at most ``max_points`` (the last index is kept)."""
    if n <= max_points:
        return np.arange(n)
    stride = math.ceil(n / max_points)
    idx = np.arange(0, n, stride)
    if idx[-1] != n - 1:
        idx = np.append(idx, n - 1)
    return idx


def block_centres(
    starts: np.ndarray, n: int, offset: int = 1, positions: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first, last, centre) step numbers of blocks that start at ``starts`` in a length-n axis.

    ``offset`` turns 0-based rows into step numbers (1: row 0 is step 1); ``positions`` (one per
    row, from ``step_positions``) replaces that numbering where a run has interventions.
    """
    starts = np.asarray(starts, dtype=np.int64)
    stops = np.append(starts[1:], n)
    if positions is not None:
        pos = np.asarray(positions, dtype=np.float64)
        first, last = pos[starts], pos[stops - 1]
    else:
        first = starts + offset
        last = stops - 1 + offset
    return first, last, (first + last) / 2.0


def mark_interventions(
    fig: go.Figure,
    xs: np.ndarray,
    *,
    row: int | None = None,
    col: int | None = None,
    max_lines: int = 40,
) -> None:
    """Purple dotted lines where a technique intervened (e.g. a prune event)."""
    xs = np.asarray(xs)
    if not len(xs) or len(xs) > max_lines:
        return
    kw: dict[str, Any] = {} if row is None else {"row": row, "col": col}
    for x in xs:
        fig.add_vline(
            x=float(x), line={"color": INTERVENTION, "dash": "dot", "width": 1.5}, opacity=0.7, **kw
        )


def titled_layout(fig: go.Figure, title: str | None, *, height: int = 380) -> go.Figure:
    """``base_layout`` with room for a one-line title above a one-line legend (no overlap)."""
    base_layout(fig, title, height=height)
    if title:
        named = [t for t in fig.data if t.showlegend is not False]
        legend = fig.layout.showlegend is not False and (
            len(named) > 1 or (len(named) == 1 and fig.layout.showlegend is True)
        )
        top = (95 if legend else 60) + TITLE_LINE_PX * (wrap_title(title)[1] - 1)
        with trusted_layout(fig):
            fig.update_layout(
                title={
                    "y": 1 - 12 / (height + top - 50),
                    "yanchor": "top",
                    "x": 0.01,
                    "xanchor": "left",
                    "font": {"size": 18},
                },
                margin={"t": top},
                height=height + top - 50,
            )
    return fig
