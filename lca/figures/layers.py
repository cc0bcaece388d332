"""Figures of the Layers page: which layers did the learning, when, and together? Pure functions.

Total LCA per layer, the clickable layer × step heatmap, each layer's running total, and the
synchronization test's peak raster and null distribution. Conventions in ``lca.figures.axes``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from lca.downsample import block_sum
from lca.segments import step_axis

from .axes import (
    CLICK_CELLS,
    STEP_COLUMNS,
    block_centres,
    curve,
    thin,
    titled_layout,
)
from .common import (
    DIVERGING,
    empty_figure,
    robust_colorbar_title,
    robust_limit,
    series_color,
    sign_colors,
)

__all__ = [
    "cumulative_layers",
    "layer_step_heatmap",
    "layer_totals",
    "peak_raster",
    "synchrony_figure",
]


def layer_totals(
    names: Sequence[str],
    totals: np.ndarray,
    per_param_counts: Sequence[int] | np.ndarray | None = None,
    *,
    per_param: bool = False,
    title: str | None = None,
    height: int = 400,
) -> go.Figure:
    """Total LCA per layer (bars; green helped, red hurt); ``per_param`` divides by its size."""
    tot = np.asarray(totals, dtype=np.float64)
    if len(tot) == 0:
        return empty_figure("This run has no layers.")
    counts = None if per_param_counts is None else np.asarray(per_param_counts, dtype=np.float64)
    if per_param and counts is not None:
        y = tot / np.maximum(counts, 1)
        ytitle = "LCA per parameter (loss units)"
        default = "Total LCA of each layer per parameter (green = helped, red = hurt)"
    else:
        y = tot
        ytitle = "total LCA (loss units)"
        default = "Total LCA of each layer over training (green = helped, red = hurt)"
    custom = np.stack([tot, counts if counts is not None else np.full(len(tot), np.nan)], axis=1)
    fig = go.Figure(
        go.Bar(
            x=list(names),
            y=y,
            marker_color=sign_colors(y),
            customdata=custom,
            hovertemplate="%{x}<br>total %{customdata[0]:.4e}<br>%{customdata[1]:,} parameters"
            "<extra></extra>",
        )
    )
    fig.add_hline(y=0, line={"color": "black", "width": 1})
    titled_layout(fig, title or default, height=height)
    fig.update_layout(showlegend=False)
    # Many tensors (ResNet-20 has 65): upright labels would pile on each other.
    fig.update_xaxes(
        title="layer (parameter tensor)",
        automargin=True,
        tickangle=-90 if len(tot) > 16 else -30 if len(tot) > 6 else 0,
    )
    fig.update_yaxes(title=ytitle, exponentformat="e")
    return fig


def layer_step_heatmap(
    layer_lca: np.ndarray,
    names: Sequence[str],
    max_cells: int = CLICK_CELLS,
    *,
    clickable: bool = True,
    kind: np.ndarray | None = None,
    title: str = "LCA of each layer on each step (green = helped, red = hurt)",
    height: int | None = None,
) -> go.Figure:
    """Layer × step heatmap of (T, L) ``layer_lca``, steps block-summed to ``max_cells`` cells
    and at most ``STEP_COLUMNS`` columns.

    Every cell is the exact sum of its steps. With ``clickable``, an almost invisible marker sits
    on every cell centre (a heatmap itself reports no clicks); its customdata is
    ``[layer index, first step, last step, value]`` so a page can drill into the cell.
    """
    a = np.asarray(layer_lca, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        return empty_figure("No steps have been recorded yet.")
    t, nl = a.shape
    sums, starts, _ = block_sum(a, max(1, min(STEP_COLUMNS, max_cells // nl)))
    first, last, centre = block_centres(starts, t, positions=step_axis(kind, t))
    # Whole step numbers for the hover and the click (an intervention sits at k + 0.5).
    first, last = np.floor(first).astype(np.int64), np.ceil(last).astype(np.int64)
    z = sums.T  # (L, blocks)
    labels = list(names)
    m, largest = robust_limit(z)
    hover = "%{y}<br>steps %{customdata[1]}–%{customdata[2]}<br>LCA %{customdata[3]:.3e}"
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=centre,
            y=labels,
            colorscale=DIVERGING,
            zmid=0,
            zmin=-m,
            zmax=m,
            colorbar={"title": {"text": robust_colorbar_title("LCA", largest)}},
            hoverinfo="skip" if clickable else None,
            customdata=None
            if clickable
            else np.dstack(
                [
                    np.tile(np.arange(nl)[:, None], (1, len(first))),
                    np.tile(first, (nl, 1)),
                    np.tile(last, (nl, 1)),
                    z,
                ]
            ),
            hovertemplate=None if clickable else hover + "<extra></extra>",
        )
    )
    if clickable:
        li, bi = np.meshgrid(np.arange(nl), np.arange(len(first)), indexing="ij")
        # numpy arrays, not lists: plotly checks and copies a list element by element (20,000
        # cells took most of the page's time, benchmarks/app.py). The browser gets a typed
        # array; a click reports a row as {"0": .., "1": ..}, which pages/layers.py reads.
        custom = np.stack([li.ravel(), first[bi.ravel()], last[bi.ravel()], z.ravel()], axis=1)
        fig.add_trace(
            go.Scatter(
                x=centre[bi.ravel()],
                y=np.asarray(labels, dtype=object)[li.ravel()],
                mode="markers",
                # Fully transparent: overlapping markers would add up to a grey veil over the cells;
                # plotly picks the clicked point by distance, not by what is drawn.
                marker={"size": 14, "color": "rgba(0,0,0,0)", "symbol": "square"},
                selected={"marker": {"color": "rgba(0,0,0,0.55)", "size": 14}},
                unselected={"marker": {"opacity": 1}},
                customdata=custom,
                showlegend=False,
                name="cells",
                hovertemplate=hover + "<extra>click to look closer</extra>",
            )
        )
        fig.update_layout(clickmode="event+select", dragmode=False)
    titled_layout(fig, title, height=height or max(300, 120 + 26 * nl))
    fig.update_xaxes(title="training step", showgrid=False)
    fig.update_yaxes(title="", autorange="reversed", showgrid=False, type="category")
    return fig


def cumulative_layers(
    cumulative: np.ndarray,
    names: Sequence[str],
    *,
    per_param_counts: Sequence[int] | np.ndarray | None = None,
    per_param: bool = False,
    kind: np.ndarray | None = None,
    max_points: int = 2000,
    title: str | None = None,
    height: int = 420,
) -> go.Figure:
    """Running sum of each layer's LCA over steps (one line per layer; below 0 = helped)."""
    c = np.asarray(cumulative, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] == 0:
        return empty_figure("No steps have been recorded yet.")
    t, nl = c.shape
    if per_param and per_param_counts is not None:
        c = c / np.maximum(np.asarray(per_param_counts, dtype=np.float64), 1)[None, :]
    idx = thin(t, max_points)
    x = step_axis(kind, t)[idx]
    fig = go.Figure()
    for j, name in enumerate(names):
        fig.add_trace(
            curve(
                x=x,
                y=c[idx, j],
                mode="lines",
                name=str(name),
                line={"color": series_color(j), "width": 2},
                hovertemplate=f"{name}<br>after step %{{x}}: %{{y:.4e}}<extra></extra>",
            )
        )
    fig.add_hline(y=0, line={"color": "black", "width": 1})
    what = "per parameter" if per_param and per_param_counts is not None else ""
    titled_layout(
        fig,
        title or f"Cumulative LCA of each layer {what} over training".replace("  ", " "),
        height=height,
    )
    fig.update_layout(
        legend={"orientation": "v", "y": 1, "x": 1.02, "yanchor": "top"}, margin={"r": 180}
    )
    fig.update_xaxes(title="training step")
    fig.update_yaxes(
        title="cumulative LCA" + (" per parameter" if what else "") + " (below 0 = helped)",
        exponentformat="e",
    )
    return fig


def peak_raster(
    peaks: np.ndarray,
    names: Sequence[str],
    *,
    title: str = "Peak steps of each layer (its top steps by |LCA|)",
    height: int | None = None,
) -> go.Figure:
    """Where each layer peaked: a raster of (layer, peak step) cells, dark where a layer peaked;
    dark columns are steps where many layers peak together.

    A long run has more steps than a screen has pixels (and thousands of peaks, which drawn one
    marker each cost seconds in a student's browser), so steps are grouped into at most
    ``STEP_COLUMNS`` blocks and a cell counts the layer's peak steps in its block; up to that
    many steps every cell is one step, the plain raster."""
    p = np.asarray(peaks, dtype=bool)
    if p.ndim != 2 or not p.any():
        return empty_figure("No peaks to show.")
    t = p.shape[1]
    counts, starts, _ = block_sum(p.T.astype(np.int64), min(t, STEP_COLUMNS))
    first, last, centre = block_centres(starts, t)
    z = counts.T  # (layers, blocks)
    per = int(np.ceil(t / len(starts)))
    steps = "step %{customdata[0]}" if per == 1 else "steps %{customdata[0]}–%{customdata[1]}"
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=centre,
            y=list(names)[: p.shape[0]],
            customdata=np.broadcast_to(
                np.stack([first, last], axis=-1), (z.shape[0], len(first), 2)
            ),
            colorscale=[[0.0, "#ffffff"], [1.0, "#253494"]],
            zmin=0,
            zmax=max(1, int(z.max())),
            showscale=per > 1,
            colorbar={"title": {"text": "peak steps"}},
            xgap=0,
            hovertemplate=f"%{{y}}<br>{steps}: %{{z}} peak step(s)<extra></extra>",
        )
    )
    if per > 1:
        title = f"{title} · each column groups about {t / len(starts):.0f} steps"
    titled_layout(fig, title, height=height or max(260, 110 + 24 * p.shape[0]))
    fig.update_xaxes(title="training step (optimizer steps only)", range=[0, t + 1], showgrid=False)
    fig.update_yaxes(autorange="reversed", type="category", showgrid=False)
    return fig


def synchrony_figure(result: Any, *, height: int = 340) -> go.Figure:
    """Null distribution of the coincidence C (random circular shifts) and the observed C.

    ``result`` is a :class:`lca.synchrony.SynchronyResult`.
    """
    null = np.asarray(result.null, dtype=np.float64) * 100
    obs = float(result.observed) * 100
    fig = go.Figure(
        go.Histogram(
            x=null,
            nbinsx=40,
            marker_color="#bdbdbd",
            name="chance (layers shifted at random)",
            hovertemplate="C = %{x}%<br>%{y} shifts<extra></extra>",
        )
    )
    fig.add_vline(x=obs, line={"color": "#253494", "width": 3})
    lo = min(float(null.min()), obs)
    hi = max(float(null.max()), obs)
    right = obs > lo + 0.6 * (hi - lo)  # label on the side of the line with room
    fig.add_annotation(
        x=obs,
        y=1,
        yref="paper",
        text=f"this run: {obs:.1f}%",
        showarrow=False,
        xanchor="right" if right else "left",
        yanchor="top",
        font={"color": "#253494", "size": 14},
        bgcolor="rgba(255,255,255,0.8)",
    )
    z = result.z
    ztext = "∞" if math.isinf(z) else f"{z:.1f}"
    title = (
        f"Shared peak steps: {obs:.1f}% vs {result.null_mean * 100:.1f}% ± "
        f"{result.null_sd * 100:.1f}% by chance (z = {ztext}, p = {result.p:.3g})"
    )
    fig.update_layout(showlegend=True, bargap=0.05)  # before _layout, which makes room for it
    titled_layout(fig, title, height=height)
    pad = 0.05 * (hi - lo or 1.0)
    fig.update_xaxes(
        title="C: average % of a layer's peak steps shared with another layer",
        range=[lo - pad, hi + pad],
    )
    fig.update_yaxes(title="number of random shifts")
    return fig
