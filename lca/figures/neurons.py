"""Figures of the Neurons & weights page: which units and single weights helped or hurt.

Unit × step heatmaps, the first layer's weights drawn as pictures of the input, the histogram of
every LCA value, how often each weight helped, the top helpers and hurters, and one weight's
(or layer's) trace over the steps. Pure functions; conventions in ``lca.figures.axes``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import plotly.graph_objects as go

from lca.downsample import block_sum, downsample_to_cells

from . import spec
from .axes import (
    GL_POINTS,
    MEASURED,
    STEP_COLUMNS,
    block_centres,
    thin,
)
from .common import (
    DIVERGING,
    HELPED,
    HURT,
    NOT_HELPED,
    empty_figure,
    robust_colorbar_title,
    robust_limit,
    sign_colors,
)

__all__ = [
    "first_layer_images",
    "helped_fraction_histogram",
    "lca_histogram",
    "param_trace",
    "per_unit",
    "top_parameters",
    "unit_heatmap",
]


def per_unit(param_lca: np.ndarray, dim: int = 0) -> np.ndarray:
    """(T, *shape) per-weight LCA -> (T, shape[dim]) per output unit (sum of the other axes)."""
    a = np.asarray(param_lca)
    if a.ndim == 1:
        return a[:, None].astype(np.float64)
    a = np.moveaxis(a, dim + 1, 1)
    return a.reshape(a.shape[0], a.shape[1], -1).sum(axis=2, dtype=np.float64)


def unit_heatmap(
    unit_lca: np.ndarray,
    *,
    max_cells: int = 120_000,
    positions: np.ndarray | None = None,
    title: str = "LCA of each unit on each step (green = helped, red = hurt)",
    y_title: str = "unit (neuron / channel)",
    height: int = 460,
) -> go.Figure:
    """Unit × step heatmap of (T, U) ``unit_lca``, block-summed to ``max_cells`` (exact sums).

    ``positions``: each row's place on the step axis (default 1, 2, …; ``step_positions`` of a
    run, or a slice of them for a drill-down into a range of steps).
    """
    a = np.asarray(unit_lca, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.shape[0] == 0 or a.shape[1] == 0:
        return empty_figure("No steps have been recorded yet.")
    t, u = a.shape
    sums, rs, cs = downsample_to_cells(a, max_cells)
    first, last, centre = block_centres(rs, t, positions=positions)
    ufirst, ulast, ucentre = block_centres(cs, u, offset=0)
    z = sums.T
    m, largest = robust_limit(z)
    # No per-cell customdata (it would triple the bytes sent): a cell's block is stated once.
    per_cell = []
    if len(rs) < t:
        per_cell.append(f"{t / len(rs):.1f} steps")
    if len(cs) < u:
        per_cell.append(f"{u / len(cs):.1f} units")
    near = "around " if per_cell else ""
    if per_cell:  # the cap is stated, so nobody reads a cell as one step of one unit
        title = (
            f"{title} · each cell sums about {' × '.join(per_cell)} "
            f"(at most {max_cells:,} cells drawn)"
        )
    heatmap = {
        "type": "heatmap",
        "z": z,
        "x": centre,
        "y": ucentre,
        "colorscale": DIVERGING,
        "zmid": 0,
        "zmin": -m,
        "zmax": m,
        "colorbar": {"title": {"text": robust_colorbar_title("LCA", largest)}},
        "hovertemplate": f"{near}unit %{{y:.0f}}<br>{near}step %{{x:.0f}}<br>LCA %{{z:.3e}}"
        "<extra></extra>",
    }
    layout = spec.titled_layout(title, height=height)
    # Units and steps are whole numbers: on short axes plotly would tick at 0.5, 1.5, …
    layout["xaxis"] = {"title": {"text": "training step"}, "showgrid": False}
    layout["yaxis"] = {"title": {"text": y_title}, "autorange": "reversed", "showgrid": False}
    if t <= 20:
        layout["xaxis"]["dtick"] = 1
    if u <= 20:
        layout["yaxis"]["dtick"] = 1
    fig = spec.figure([heatmap], layout)
    return fig


def first_layer_images(
    weight_totals: np.ndarray,
    image_shape: tuple[int, int, int] | None = None,
    *,
    max_units: int = 256,
    columns: int | None = None,
    title: str | None = None,
    height: int | None = None,
) -> go.Figure:
    """Each first-layer unit's incoming weights' total LCA drawn as a picture of the input.

    ``weight_totals``: a Linear weight's totals (units, C·H·W) with ``image_shape`` (C, H, W), or
    a Conv weight's (units, C, kh, kw). Channels are summed; one small image per unit, tiled in a
    grid; green pixels helped, red hurt, one colour scale for all (centred at 0, saturating at
    the 99.5th percentile of |LCA| so a few extreme pixels do not wash out the rest).
    """
    w = np.asarray(weight_totals, dtype=np.float64)
    if w.ndim == 2:
        if image_shape is None or math.prod(image_shape) != w.shape[1]:
            return empty_figure("These first-layer weights do not match an image shape.")
        c, h, wd = image_shape
        imgs = w.reshape(w.shape[0], c, h, wd).sum(axis=1)
        what = "incoming weights"
    elif w.ndim == 4:
        imgs = w.sum(axis=1)
        what = "kernel"
    else:
        return empty_figure("The first layer's weights are not images (Linear or Conv needed).")
    n_all = imgs.shape[0]
    imgs = imgs[:max_units]
    n, h, wd = imgs.shape
    cols = columns or max(1, min(n, math.ceil(math.sqrt(n * 1.6))))
    rows = math.ceil(n / cols)
    gap = 1
    mosaic = np.full((rows * (h + gap) - gap, cols * (wd + gap) - gap), np.nan)
    unit = np.full(mosaic.shape, -1, dtype=np.int64)
    for k in range(n):
        r, q = divmod(k, cols)
        y0, x0 = r * (h + gap), q * (wd + gap)
        mosaic[y0 : y0 + h, x0 : x0 + wd] = imgs[k]
        unit[y0 : y0 + h, x0 : x0 + wd] = k
    finite = np.abs(imgs[np.isfinite(imgs)])
    lim = float(np.percentile(finite, 99.5)) if finite.size else 1.0
    lim = lim or float(finite.max() if finite.size else 1.0) or 1.0
    py, px = np.indices(mosaic.shape)
    custom = np.dstack([unit, py % (h + gap), px % (wd + gap)])  # sent as int8/16 by plotly
    shown = f" (first {n} of {n_all})" if n < n_all else ""
    heatmap = {
        "type": "heatmap",
        "z": mosaic,
        "colorscale": DIVERGING,
        "zmid": 0,
        "zmin": -lim,
        "zmax": lim,
        "customdata": custom,
        "colorbar": {"title": {"text": "total LCA"}},
        "hoverongaps": False,
        "hovertemplate": "unit %{customdata[0]}<br>row %{customdata[1]}, col %{customdata[2]}"
        "<br>total LCA %{z:.3e}<extra></extra>",
    }
    layout = spec.titled_layout(
        title
        or f"First layer: each unit's {what} as an image of the input{shown} "
        "(green = helped, red = hurt)",
        height=height or min(900, 140 + rows * 70),
    )
    layout["xaxis"] = {"visible": False, "constrain": "domain"}
    layout["yaxis"] = {
        "visible": False,
        "autorange": "reversed",
        "scaleanchor": "x",
        "constrain": "domain",
    }
    fig = spec.figure([heatmap], layout)
    return fig


def lca_histogram(
    values: np.ndarray,
    *,
    log: bool = False,
    bins: int = 120,
    clip_quantile: float = 0.98,
    steps_used: int | None = None,
    steps_total: int | None = None,
    title: str = "All LCA values (every parameter on every step)",
    height: int = 400,
) -> go.Figure:
    """Histogram of LCA values: helped side (< 0) green, hurt side (> 0) red.

    Bins are symmetric with 0 as an edge, so no bar mixes helped and hurt; exact zeros (weights
    that did not move: pruned, frozen, skipped) are counted in the note, not drawn, because they
    can outnumber everything else. The x range stops at
    the ``clip_quantile`` of |LCA| (values beyond are counted in the end bars; the note says how
    many), because the distribution is heavy-tailed and a few extremes would squash the rest.
    """
    v = np.asarray(values).ravel()
    finite = np.isfinite(v)
    if not finite.all():  # copies only when there is something to drop (4M values: ~15 ms)
        v = v[finite]
    if v.size == 0:
        return empty_figure("No LCA values have been recorded yet.")
    zeros = int(np.count_nonzero(v == 0))
    nz = v[v != 0] if zeros else v
    if nz.size == 0:
        return empty_figure("Every recorded LCA value is exactly 0: no parameter moved.")
    step = max(1, math.ceil(nz.size / 400_000))  # the range comes from a sample: fast
    lim = float(np.quantile(np.abs(nz[::step]), clip_quantile)) or float(np.abs(nz).max())
    half = max(1, bins // 2)
    edges = np.linspace(-lim, lim, 2 * half + 1)
    counts, _ = np.histogram(nz, bins=edges)  # values beyond ±lim are not counted here ...
    below, above = int(np.count_nonzero(nz < -lim)), int(np.count_nonzero(nz > lim))
    counts[0] += below  # ... but in the end bars
    counts[-1] += above
    beyond = below + above
    centres = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    helped = int(np.count_nonzero(nz < 0))
    total = v.size
    neg = centres < 0
    bars = [
        {
            "type": "bar",
            "x": centres[side],
            "y": counts[side],
            "width": width,
            "marker": {"color": color},
            "name": name,
            "hovertemplate": "LCA ≈ %{x:.2e}<br>%{y:,} values<extra></extra>",
        }
        for side, color, name in (
            (neg, HELPED, f"helped (< 0): {helped / total:.1%}"),
            (~neg, HURT, f"hurt (> 0): {(nz.size - helped) / total:.1%}"),
        )
    ]
    note = f"{total:,} values"
    if zeros:
        note += f"; {zeros / total:.1%} exactly 0 (did not move, not drawn)"
    if steps_used is not None and steps_total is not None and steps_used < steps_total:
        note += f" from a seeded sample of {steps_used:,} of {steps_total:,} steps"
    if beyond:
        note += f"; {beyond:,} beyond ±{lim:.1e} counted in the end bars"
    layout = spec.titled_layout(title, height=height, legend=True)
    layout["annotations"] = [
        {
            "text": note,
            "x": 1,
            "y": -0.2,
            "xref": "paper",
            "yref": "paper",
            "xanchor": "right",
            "yanchor": "top",
            "showarrow": False,
            "font": {"size": 12},
        }
    ]
    layout["bargap"] = 0
    layout["barmode"] = "overlay"
    layout["margin"]["b"] = 85
    layout["xaxis"] = {
        "title": {"text": "LCA of one parameter on one step (loss units)"},
        "exponentformat": "e",
    }
    layout["yaxis"] = {
        "title": {"text": "number of values" + (" (log scale)" if log else "")},
        "type": "log" if log else "linear",
    }
    fig = spec.figure(bars, layout)
    return fig


def helped_fraction_histogram(
    helped_steps: np.ndarray,
    num_steps: int,
    *,
    totals: np.ndarray | None = None,
    bins: int = 50,
    title: str = "How often each parameter helped (fraction of steps with LCA < 0)",
    height: int = 380,
    left_out: np.ndarray | None = None,
) -> go.Figure:
    """Histogram over parameters of helped_steps / T; the paper found it peaked near 0.5.

    Bars right of 50% (helped on most steps) are green, left of it grey. With ``totals``,
    parameters whose total LCA is exactly 0 (they never moved: frozen, pruned from the start)
    are left out and counted in a note.
    """
    hs = np.asarray(helped_steps, dtype=np.float64).ravel()
    if num_steps <= 0 or hs.size == 0:
        return empty_figure("No steps have been recorded yet.")
    structural = 0
    if left_out is not None:  # structurally zero gradients: rounding noise, a random sign
        drop = np.asarray(left_out, dtype=bool).ravel()
        structural = int(drop.sum())
        hs = hs[~drop]
        totals = None if totals is None else np.asarray(totals).ravel()[~drop]
    still = 0
    if totals is not None:
        moved = np.asarray(totals).ravel() != 0
        still = int(hs.size - moved.sum())
        hs = hs[moved]
    if hs.size == 0:
        return empty_figure("No parameter has moved yet.")
    frac = np.clip(hs / num_steps, 0, 1) * 100
    half = max(1, bins // 2)
    edges = np.linspace(0, 100, 2 * half + 1)
    counts, _ = np.histogram(frac, bins=edges)
    centres = (edges[:-1] + edges[1:]) / 2
    # Right of 50%: helped on most steps. Left of it the file cannot say whether the weight hurt
    # or stood still on the other steps, so those bars are grey, not red.
    colors = [HELPED if c > 50 else NOT_HELPED for c in centres]
    bar = {
        "type": "bar",
        "x": centres,
        "y": counts,
        "width": edges[1] - edges[0],
        "marker": {"color": colors},
        "hovertemplate": "helped on %{x:.0f}% of steps<br>%{y:,} parameters<extra></extra>",
        "showlegend": False,
    }
    med = float(np.median(frac))
    note = (
        f"dashed: half of the steps · median {med:.1f}% of {num_steps:,} steps · "
        f"{hs.size:,} parameters"
    )
    if still:
        note += f" ({still:,} that never moved left out)"
    if structural:
        note += f" ({structural:,} with a structurally zero gradient left out)"
    layout = spec.titled_layout(title, height=height)
    layout["shapes"] = [
        {
            "type": "line",
            "x0": 50,
            "x1": 50,
            "xref": "x",
            "y0": 0,
            "y1": 1,
            "yref": "y domain",
            "line": {"color": "black", "dash": "dash", "width": 1.5},
        }
    ]
    layout["annotations"] = [
        {
            "text": note,
            "x": 1,
            "y": 1.01,
            "xref": "paper",
            "yref": "paper",
            "xanchor": "right",
            "yanchor": "bottom",
            "showarrow": False,
            "font": {"size": 12},
        }
    ]
    layout["bargap"] = 0
    layout["xaxis"] = {
        "title": {"text": "% of steps on which the parameter helped"},
        "range": [0, 100],
    }
    layout["yaxis"] = {"title": {"text": "number of parameters"}}
    fig = spec.figure([bar], layout)
    return fig


def _index_text(flat: int, shape: tuple[int, ...]) -> str:
    if not shape:
        return ""
    return "[" + ", ".join(str(int(i)) for i in np.unravel_index(int(flat), shape)) + "]"


def top_parameters(
    totals: Mapping[str, np.ndarray],
    helped_steps: Mapping[str, np.ndarray] | None = None,
    num_steps: int | None = None,
    k: int = 10,
) -> list[dict[str, Any]]:
    """The k parameters with the most negative total LCA (top helpers) and the k most positive
    (top hurters), as table rows: side, parameter ("fc1.weight[3, 17]"), tensor, flat index,
    total LCA, % of steps helped. Helpers first (most helpful on top), then hurters."""
    names = list(totals)
    if not names:
        return []
    flat = [np.asarray(totals[n], dtype=np.float64).ravel() for n in names]
    sizes = np.array([f.size for f in flat])
    allv = np.concatenate(flat) if flat else np.zeros(0)
    if allv.size == 0:
        return []
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    k = max(1, min(int(k), allv.size))

    def pick(order: np.ndarray, side: str) -> list[dict[str, Any]]:
        out = []
        for g in order:
            v = float(allv[g])
            if (side == "helped" and v >= 0) or (side == "hurt" and v <= 0):
                continue
            j = int(np.searchsorted(offsets, g, side="right") - 1)
            name = names[j]
            i = int(g - offsets[j])
            shape = tuple(np.shape(totals[name]))
            row: dict[str, Any] = {
                "side": side,
                "parameter": f"{name}{_index_text(i, shape)}",
                "tensor": name,
                "index": i,
                "total LCA": v,
            }
            if helped_steps is not None and num_steps:
                hs = np.asarray(helped_steps[name]).ravel()[i]
                row["% steps helped"] = round(100.0 * float(hs) / num_steps, 1)
            out.append(row)
        return out

    if allv.size > k:
        lo = np.argpartition(allv, k - 1)[:k]
        hi = np.argpartition(-allv, k - 1)[:k]
    else:
        lo = hi = np.arange(allv.size)
    lo = lo[np.argsort(allv[lo], kind="stable")]
    hi = hi[np.argsort(-allv[hi], kind="stable")]
    return pick(lo, "helped") + pick(hi, "hurt")


def param_trace(
    values: np.ndarray,
    *,
    label: str = "this parameter",
    positions: np.ndarray | None = None,
    cumulative: bool = True,
    max_bars: int = STEP_COLUMNS,
    title: str | None = None,
    height: int = 420,
) -> go.Figure:
    """Per-step LCA of one parameter (or layer) as bars, green helped / red hurt, and below it the
    running sum. Long traces are block-summed (each bar the exact sum of its steps)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    t = len(v)
    if t == 0:
        return empty_figure("No steps have been recorded yet.")
    sums, starts, _ = block_sum(v, min(t, max_bars))
    first, last, centre = block_centres(starts, t, positions=positions)
    per = "step" if len(starts) == t else "block of steps"
    bar = {
        "type": "bar",
        "x": centre,
        "y": sums,
        "marker": {"color": sign_colors(sums)},
        "name": f"LCA per {per}",
        "customdata": np.stack([first, last], axis=1),
        "hovertemplate": "steps %{customdata[0]}–%{customdata[1]}<br>LCA %{y:.3e}<extra></extra>",
        "showlegend": False,
        "xaxis": "x",
        "yaxis": "y",
    }
    if len(starts) > 1:
        bar["width"] = (last - first + 1) * 0.9
    data = [bar]
    layout = spec.titled_layout(
        title or f"LCA of {label} on each step (green = helped, red = hurt)", height=height
    )
    axes = spec.subplot_axes(2, (0.58, 0.42)) if cumulative else spec.subplot_axes(1)
    axes["yaxis"].update(title={"text": f"LCA per {per}"}, exponentformat="e")
    shapes = [_hline("y", "black")]
    if cumulative:
        cum = np.cumsum(v)
        idx = thin(t)
        xs = np.arange(1, t + 1) if positions is None else np.asarray(positions, dtype=np.float64)
        data.append(
            {
                "type": "scattergl" if len(idx) > GL_POINTS else "scatter",
                "x": xs[idx],
                "y": cum[idx],
                "mode": "lines",
                "name": "running total",
                "line": {"color": MEASURED, "width": 2.5},
                "showlegend": False,
                "hovertemplate": "after step %{x}<br>running total %{y:.3e}<extra></extra>",
                "xaxis": "x2",
                "yaxis": "y2",
            }
        )
        shapes.append(_hline("y2", "#bdbdbd"))
        axes["yaxis2"].update(title={"text": "running total"}, exponentformat="e")
    axes["xaxis2" if cumulative else "xaxis"]["title"] = {"text": "training step"}
    layout.update(axes, shapes=shapes, bargap=0, showlegend=False)
    fig = spec.figure(data, layout)
    return fig


def _hline(yaxis: str, color: str) -> dict:
    """A horizontal line at 0 across the whole width of the plot on ``yaxis``."""
    x = "x" + yaxis[1:]
    return {
        "type": "line",
        "x0": 0,
        "x1": 1,
        "xref": f"{x} domain",
        "y0": 0,
        "y1": 0,
        "yref": yaxis,
        "line": {"color": color, "width": 1},
    }
