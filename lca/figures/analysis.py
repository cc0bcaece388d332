"""Figures of the analysis pages (Loss, Layers, Neurons & weights, Compare): pure functions.

Every function takes numpy arrays (what ``lca.store.Reader`` returns) and gives a plotly Figure,
so the app and notebooks draw the same charts. Conventions shared by all of them:

* LCA < 0 means **helped** (the parameter lowered the loss) and is green; > 0 **hurt**, red; the
  diverging heatmap scale is centred at 0 (``zmid=0``), so a pale cell means "little".
* Per-step quantities are drawn at step numbers 1..T (step k moves the loss from L_{k-1} to L_k);
  losses at 0..T (after 0..T steps). The two line up on a shared x axis.
* Big arrays are block-summed (LCA is additive, so every cell is an exact sum and totals are
  kept), long curves use WebGL traces and are thinned to a few thousand points.
* When there is nothing to draw, a figure says why in words (``empty_figure``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from lca.downsample import block_sum, downsample_to_cells

from .common import (
    DIVERGING,
    HELPED,
    HURT,
    NOT_HELPED,
    STILL,
    base_layout,
    empty_figure,
    series_color,
    sign_colors,
)

__all__ = [
    "IMAGE_DATASETS",
    "INTERVENTION",
    "block_centres",
    "compare_layer_difference",
    "compare_layers",
    "compare_loss",
    "cumulative_layers",
    "first_layer_images",
    "helped_fraction_histogram",
    "helped_fractions",
    "infer_image_shape",
    "lca_histogram",
    "layer_step_heatmap",
    "layer_totals",
    "loss_conservation",
    "param_trace",
    "peak_raster",
    "per_unit",
    "step_error",
    "synchrony_figure",
    "thin",
    "top_parameters",
    "step_axis",
    "step_positions",
    "training_curves",
    "unit_heatmap",
]

INTERVENTION = "#7b3294"  # purple: a segment where a technique moved weights (e.g. a prune)
MEASURED = "#252525"  # the measured loss
PREDICTED = "#2c7fb8"  # L_0 + cumulative ΣA
# Colours for lines that stand for layers or runs: no green or red, those mean helped / hurt.
MAX_POINTS = 4000  # points per curve sent to the browser
CLICK_CELLS = 20_000  # cells of a clickable heatmap (one invisible marker per cell)

# Per-example input shapes of the image datasets (IDX files may hold other sizes: inferred).
IMAGE_DATASETS: dict[str, tuple[int, int, int] | None] = {
    "digits": (1, 8, 8),
    "mnist": None,
    "fashion-mnist": None,
    "cifar10": (3, 32, 32),
}


# ---------------------------------------------------------------------------------------------
# Helpers (pure numpy).


GL_POINTS = 1500  # above this many points a curve is drawn with WebGL (Scattergl)


def _line(**kwargs: Any) -> go.Scatter | go.Scattergl:
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


def block_centres(starts: np.ndarray, n: int, offset: int = 1,
                  positions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                np.ndarray]:
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


def step_positions(kind: np.ndarray) -> np.ndarray:
    """Where each recorded segment sits on a training-step axis.

    Optimizer steps are numbered 1, 2, …; an intervention (kind 1, e.g. a prune event) made
    after k steps sits at k + 0.5, between the steps around it. Row numbers would run ahead of
    the optimizer by one per intervention; these stay the optimizer's own step numbers.
    """
    k = np.asarray(kind)
    return np.cumsum(k == 0).astype(np.float64) + np.where(k == 1, 0.5, 0.0)


def step_axis(kind: np.ndarray | None, t: int) -> np.ndarray:
    """``step_positions`` of the first ``t`` rows, or 1..t where the kinds are not known."""
    if kind is None or len(kind) < t:
        return np.arange(1, t + 1, dtype=np.float64)
    return step_positions(np.asarray(kind)[:t])


def per_unit(param_lca: np.ndarray, dim: int = 0) -> np.ndarray:
    """(T, *shape) per-weight LCA -> (T, shape[dim]) per output unit (sum of the other axes)."""
    a = np.asarray(param_lca)
    if a.ndim == 1:
        return a[:, None].astype(np.float64)
    a = np.moveaxis(a, dim + 1, 1)
    return a.reshape(a.shape[0], a.shape[1], -1).sum(axis=2, dtype=np.float64)


def infer_image_shape(dataset: str | None, in_features: int) -> tuple[int, int, int] | None:
    """(C, H, W) of an image dataset whose flattened input has ``in_features`` values, else None.

    Only datasets known to hold images count (digits, MNIST, Fashion-MNIST, CIFAR-10); their IDX
    files may hold any square size, so the side is inferred from ``in_features``.
    """
    if dataset is None:
        return None
    key = str(dataset).strip().lower().replace("_", "-")
    key = {"cifar-10": "cifar10", "fashionmnist": "fashion-mnist"}.get(key, key)
    if key not in IMAGE_DATASETS:
        return None
    known = IMAGE_DATASETS[key]
    if known is not None and math.prod(known) == in_features:
        return known
    for c in (1, 3):
        if in_features % c:
            continue
        side = math.isqrt(in_features // c)
        if side > 1 and side * side * c == in_features:
            return (c, side, side)
    return None


def _mark_interventions(fig: go.Figure, xs: np.ndarray, *, row: int | None = None,
                        col: int | None = None, max_lines: int = 40) -> None:
    """Purple dotted lines where a technique intervened (e.g. a prune event)."""
    xs = np.asarray(xs)
    if not len(xs) or len(xs) > max_lines:
        return
    kw: dict[str, Any] = {} if row is None else {"row": row, "col": col}
    for x in xs:
        fig.add_vline(x=float(x), line={"color": INTERVENTION, "dash": "dot", "width": 1.5},
                      opacity=0.7, **kw)


def _layout(fig: go.Figure, title: str | None, *, height: int = 380) -> go.Figure:
    """``base_layout`` with room for a one-line title above a one-line legend (no overlap)."""
    base_layout(fig, title, height=height)
    if title:
        named = [t for t in fig.data if t.showlegend is not False]
        legend = fig.layout.showlegend is not False and (
            len(named) > 1 or (len(named) == 1 and fig.layout.showlegend is True))
        top = 95 if legend else 60
        fig.update_layout(title={"y": 1 - 12 / (height + top - 50), "yanchor": "top", "x": 0.01,
                                 "xanchor": "left", "font": {"size": 18}},
                          margin={"t": top}, height=height + top - 50)
    return fig


# ---------------------------------------------------------------------------------------------
# Loss page.


def loss_conservation(
    loss: np.ndarray,
    lca: np.ndarray,
    *,
    kind: np.ndarray | None = None,
    log_y: bool = False,
    title: str = "Measured loss vs. loss rebuilt from LCA (the curves overlap when LCA is exact)",
    height: int = 420,
) -> go.Figure:
    """Measured L_t against L_0 + Σ_{s<t} ΣA_s, at t = 0..T; interventions (kind 1) marked.

    LCA splits each step's loss change exactly, so the rebuilt curve lies on the measured one;
    any gap is the integration error.
    """
    loss = np.asarray(loss, dtype=np.float64)
    lca = np.asarray(lca, dtype=np.float64)
    t = min(len(lca), len(loss) - 1)
    if len(loss) == 0:
        return empty_figure("No loss has been recorded yet.")
    rebuilt = loss[0] + np.concatenate([[0.0], np.cumsum(lca[:t])])
    pos = step_axis(kind, t)
    x = np.concatenate([[0.0], pos])
    idx = thin(t + 1)
    fig = go.Figure()
    fig.add_trace(_line(x=x[idx], y=loss[: t + 1][idx], name="measured loss L_t",
                               mode="lines", line={"color": "rgba(37,37,37,0.35)", "width": 7},
                               hovertemplate="after %{x} steps<br>L = %{y:.5f}<extra></extra>"))
    fig.add_trace(_line(x=x[idx], y=rebuilt[idx], name="L₀ + cumulative sum of LCA",
                               mode="lines",
                               line={"color": PREDICTED, "width": 2.5, "dash": "dash"},
                               hovertemplate="after %{x} steps<br>L₀ + ΣLCA = %{y:.5f}"
                                             "<extra></extra>"))
    if kind is not None and t:
        rows = np.flatnonzero(np.asarray(kind)[:t] == 1)
        if len(rows):
            fig.add_trace(go.Scatter(x=pos[rows], y=loss[rows + 1], mode="markers",
                                     name="intervention (e.g. prune)",
                                     marker={"color": INTERVENTION, "symbol": "x", "size": 11},
                                     hovertemplate="intervention after step %{x:.0f}<br>"
                                                   "L = %{y:.5f}<extra></extra>"))
            _mark_interventions(fig, pos[rows])
    _layout(fig, title, height=height)
    fig.update_xaxes(title="training step")
    fig.update_yaxes(title="loss on the measurement set", type="log" if log_y else "linear")
    return fig


def step_error(
    error: np.ndarray,
    splits: np.ndarray | None = None,
    *,
    kind: np.ndarray | None = None,
    tolerance: float | None = None,
    title: str = "Per-step error of the allocation: ΔL − ΣLCA (0 = exact)",
    height: int = 360,
) -> go.Figure:
    """ΔL_t − ΣA_t per step; with an adaptive method, the Simpson panels used (right axis)."""
    err = np.asarray(error, dtype=np.float64)
    t = len(err)
    if t == 0:
        return empty_figure("No steps have been recorded yet.")
    x = step_axis(kind, t)
    idx = thin(t)
    sp = None if splits is None else np.asarray(splits)[:t]
    show_splits = sp is not None and len(sp) == t and bool(np.any(sp > 1))
    fig = make_subplots(specs=[[{"secondary_y": show_splits}]])
    fig.add_trace(_line(x=x[idx], y=err[idx], mode="lines+markers" if t <= 300 else "lines",
                               name="ΔL − ΣLCA", line={"color": MEASURED, "width": 1.5},
                               marker={"size": 4},
                               hovertemplate="step %{x}<br>error %{y:.3e}<extra></extra>"),
                  secondary_y=False)
    if show_splits:
        fig.add_trace(_line(x=x[idx], y=sp[idx], mode="lines", name="Simpson panels used",
                                   line={"color": PREDICTED, "width": 1.5, "shape": "hv"},
                                   hovertemplate="step %{x}<br>%{y} panels<extra></extra>"),
                      secondary_y=True)
        fig.update_yaxes(title="panels (adaptive)", secondary_y=True, rangemode="tozero",
                         showgrid=False)
    if tolerance:
        for y in (-tolerance, tolerance):
            fig.add_hline(y=y, line={"color": STILL, "dash": "dot"}, secondary_y=False)
    fig.add_hline(y=0, line={"color": "#bdbdbd", "width": 1}, secondary_y=False)
    if kind is not None:
        rows = np.flatnonzero(np.asarray(kind)[:t] == 1)
        _mark_interventions(fig, x[rows])
    _layout(fig, title, height=height)
    fig.update_xaxes(title="training step")
    fig.update_yaxes(title="error (loss units)", secondary_y=False, exponentformat="e")
    total = math.fsum(err.tolist())
    fig.add_annotation(text=f"sum of errors {total:.2e} · largest |error| {np.abs(err).max():.2e}",
                       x=1, y=1, xref="paper", yref="paper", xanchor="right", yanchor="top",
                       showarrow=False, font={"size": 13}, bgcolor="rgba(255,255,255,0.8)")
    return fig


def training_curves(
    train_loss: np.ndarray | None = None,
    evals: Mapping[str, np.ndarray] | None = None,
    eval_x: np.ndarray | None = None,
    *,
    kind: np.ndarray | None = None,
    title: str = "Training: minibatch loss and accuracy",
    height: int = 380,
) -> go.Figure:
    """Minibatch loss per step (left axis) and train/test accuracy at evaluations (right axis).

    With ``kind`` the rows sit at ``step_positions``; evaluations at their ``train_step`` (the
    optimizer steps done), unless ``eval_x`` places them elsewhere.
    """
    tl = None if train_loss is None else np.asarray(train_loss, dtype=np.float64)
    has_loss = tl is not None and bool(np.isfinite(tl).any())
    ev = dict(evals or {})
    acc_cols = [c for c in ("train_acc", "test_acc") if c in ev and len(ev[c])]
    if not has_loss and not acc_cols:
        return empty_figure("This run has no training loss or accuracy records.")
    fig = make_subplots(specs=[[{"secondary_y": bool(acc_cols)}]])
    if has_loss:
        t = len(tl)
        idx = thin(t)
        fig.add_trace(_line(x=step_axis(kind, t)[idx], y=tl[idx], mode="lines",
                                   connectgaps=True,  # an intervention row has no minibatch
                                   name="minibatch loss", line={"color": "#969696", "width": 1},
                                   hovertemplate="step %{x}<br>loss %{y:.4f}<extra></extra>"),
                      secondary_y=False)
    if acc_cols:
        x = np.asarray(eval_x if eval_x is not None else ev.get("train_step", []), dtype=float)
        styles = {"train_acc": ("train accuracy", "#ff7f0e", "dash"),
                  "test_acc": ("test accuracy", "#1f77b4", "solid")}
        for c in acc_cols:
            label, color, dash = styles[c]
            y = np.asarray(ev[c], dtype=np.float64) * 100
            fig.add_trace(go.Scatter(x=x[: len(y)], y=y, mode="lines+markers", name=label,
                                     line={"color": color, "width": 2.5, "dash": dash},
                                     hovertemplate=f"step %{{x}}<br>{label} %{{y:.1f}}%"
                                                   "<extra></extra>"),
                          secondary_y=True)
        fig.update_yaxes(title="accuracy (%)", range=[0, 102], secondary_y=True, showgrid=False,
                         tickmode="linear", tick0=0, dtick=20)
    _layout(fig, title, height=height)
    fig.update_xaxes(title="training step")
    fig.update_yaxes(title="minibatch loss", secondary_y=False)
    return fig


def helped_fractions(
    helped: np.ndarray,
    hurt: np.ndarray,
    *,
    kind: np.ndarray | None = None,
    max_points: int = MAX_POINTS,
    title: str = "Share of parameters that helped, did not move, or hurt on each step",
    height: int = 380,
) -> go.Figure:
    """Stacked area (percent): helped green at the bottom, still grey, hurt red on top; 50% line.

    Long runs are averaged over blocks of steps (a fraction's block mean is still a fraction).
    """
    h = np.asarray(helped, dtype=np.float64)
    u = np.asarray(hurt, dtype=np.float64)
    t = min(len(h), len(u))
    if t == 0:
        return empty_figure("No steps have been recorded yet.")
    h, u = h[:t], u[:t]
    s = np.clip(1.0 - h - u, 0.0, 1.0)
    pos = step_axis(kind, t)
    x = pos
    if t > max_points:
        sums, starts, _ = block_sum(np.stack([h, s, u], axis=1), max_points)
        counts = np.diff(np.append(starts, t))
        h, s, u = (sums / counts[:, None]).T
        x = block_centres(starts, t, positions=pos)[2]
    fig = go.Figure()
    for y, name, color in ((h, "helped (LCA < 0)", HELPED), (s, "did not move (LCA = 0)", STILL),
                           (u, "hurt (LCA > 0)", HURT)):
        fig.add_trace(go.Scatter(x=x, y=y * 100, name=name, mode="lines", stackgroup="one",
                                 line={"color": color, "width": 0.5}, fillcolor=color,
                                 hovertemplate=f"step %{{x}}<br>{name}: %{{y:.1f}}%"
                                               "<extra></extra>"))
    fig.add_hline(y=50, line={"color": "black", "dash": "dash", "width": 1.5},
                  annotation_text="50%", annotation_position="top left",
                  annotation_font={"size": 13, "color": "black"},
                  annotation_bgcolor="rgba(255,255,255,0.85)")
    if kind is not None:
        rows = np.flatnonzero(np.asarray(kind)[:t] == 1)
        _mark_interventions(fig, pos[rows])
    _layout(fig, title, height=height)
    fig.update_xaxes(title="training step")
    fig.update_layout(legend={"traceorder": "normal"})
    fig.update_yaxes(title="% of parameters", range=[0, 100])
    return fig


# ---------------------------------------------------------------------------------------------
# Layers page.


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
    fig = go.Figure(go.Bar(
        x=list(names), y=y, marker_color=sign_colors(y), customdata=custom,
        hovertemplate="%{x}<br>total %{customdata[0]:.4e}<br>%{customdata[1]:,} parameters"
                      "<extra></extra>"))
    fig.add_hline(y=0, line={"color": "black", "width": 1})
    _layout(fig, title or default, height=height)
    fig.update_layout(showlegend=False)
    # Many tensors (ResNet-20 has 65): upright labels would pile on each other.
    fig.update_xaxes(title="layer (parameter tensor)", automargin=True,
                     tickangle=-90 if len(tot) > 16 else -30 if len(tot) > 6 else 0)
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
    """Layer × step heatmap of (T, L) ``layer_lca``, steps block-summed to ``max_cells`` cells.

    Every cell is the exact sum of its steps. With ``clickable``, an almost invisible marker sits
    on every cell centre (a heatmap itself reports no clicks); its customdata is
    ``[layer index, first step, last step, value]`` so a page can drill into the cell.
    """
    a = np.asarray(layer_lca, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        return empty_figure("No steps have been recorded yet.")
    t, nl = a.shape
    sums, starts, _ = block_sum(a, max(1, max_cells // nl))
    first, last, centre = block_centres(starts, t, positions=step_axis(kind, t))
    # Whole step numbers for the hover and the click (an intervention sits at k + 0.5).
    first, last = np.floor(first).astype(np.int64), np.ceil(last).astype(np.int64)
    z = sums.T  # (L, blocks)
    labels = list(names)
    m = float(np.abs(z).max()) or 1.0
    hover = "%{y}<br>steps %{customdata[1]}–%{customdata[2]}<br>LCA %{customdata[3]:.3e}"
    fig = go.Figure(go.Heatmap(
        z=z, x=centre, y=labels, colorscale=DIVERGING, zmid=0, zmin=-m, zmax=m,
        colorbar={"title": {"text": "LCA"}}, hoverinfo="skip" if clickable else None,
        customdata=None if clickable else np.dstack([
            np.tile(np.arange(nl)[:, None], (1, len(first))), np.tile(first, (nl, 1)),
            np.tile(last, (nl, 1)), z]),
        hovertemplate=None if clickable else hover + "<extra></extra>"))
    if clickable:
        li, bi = np.meshgrid(np.arange(nl), np.arange(len(first)), indexing="ij")
        custom = np.stack([li.ravel(), first[bi.ravel()], last[bi.ravel()], z.ravel()], axis=1)
        fig.add_trace(go.Scatter(
            x=centre[bi.ravel()], y=[labels[i] for i in li.ravel()], mode="markers",
            # Fully transparent: overlapping markers would add up to a grey veil over the cells;
            # plotly picks the clicked point by distance, not by what is drawn.
            marker={"size": 14, "color": "rgba(0,0,0,0)", "symbol": "square"},
            selected={"marker": {"color": "rgba(0,0,0,0.55)", "size": 14}},
            # A plain list: a typed array would reach the click event as {"0": .., "1": ..}.
            unselected={"marker": {"opacity": 1}}, customdata=custom.tolist(), showlegend=False,
            name="cells", hovertemplate=hover + "<extra>click to look closer</extra>"))
        fig.update_layout(clickmode="event+select", dragmode=False)
    _layout(fig, title, height=height or max(300, 120 + 26 * nl))
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
        fig.add_trace(_line(
            x=x, y=c[idx, j], mode="lines", name=str(name),
            line={"color": series_color(j), "width": 2},
            hovertemplate=f"{name}<br>after step %{{x}}: %{{y:.4e}}<extra></extra>"))
    fig.add_hline(y=0, line={"color": "black", "width": 1})
    what = "per parameter" if per_param and per_param_counts is not None else ""
    _layout(fig, title or f"Cumulative LCA of each layer {what} over training".replace(
        "  ", " "), height=height)
    fig.update_layout(legend={"orientation": "v", "y": 1, "x": 1.02, "yanchor": "top"},
                      margin={"r": 180})
    fig.update_xaxes(title="training step")
    fig.update_yaxes(title="cumulative LCA" + (" per parameter" if what else "") +
                     " (below 0 = helped)", exponentformat="e")
    return fig


def peak_raster(
    peaks: np.ndarray,
    names: Sequence[str],
    *,
    title: str = "Peak steps of each layer (its top steps by |LCA|)",
    height: int | None = None,
) -> go.Figure:
    """One dot per (layer, peak step): columns of dots are steps where many layers peak."""
    p = np.asarray(peaks, dtype=bool)
    if p.ndim != 2 or not p.any():
        return empty_figure("No peaks to show.")
    rows, cols = np.nonzero(p)
    labels = list(names)
    fig = go.Figure(_line(
        x=cols + 1, y=[labels[i] for i in rows], mode="markers",
        marker={"symbol": "line-ns-open", "size": 12, "color": "#253494",
                "line": {"width": 2, "color": "#253494"}},
        hovertemplate="%{y}<br>peak at step %{x}<extra></extra>", showlegend=False))
    _layout(fig, title, height=height or max(260, 110 + 24 * p.shape[0]))
    fig.update_xaxes(title="training step (optimizer steps only)", range=[0, p.shape[1] + 1])
    fig.update_yaxes(autorange="reversed", type="category")
    return fig


def synchrony_figure(result: Any, *, height: int = 340) -> go.Figure:
    """Null distribution of the coincidence C (random circular shifts) and the observed C.

    ``result`` is a :class:`lca.synchrony.SynchronyResult`.
    """
    null = np.asarray(result.null, dtype=np.float64) * 100
    obs = float(result.observed) * 100
    fig = go.Figure(go.Histogram(x=null, nbinsx=40, marker_color="#bdbdbd",
                                 name="chance (layers shifted at random)",
                                 hovertemplate="C = %{x}%<br>%{y} shifts<extra></extra>"))
    fig.add_vline(x=obs, line={"color": "#253494", "width": 3})
    lo = min(float(null.min()), obs)
    hi = max(float(null.max()), obs)
    right = obs > lo + 0.6 * (hi - lo)  # label on the side of the line with room
    fig.add_annotation(x=obs, y=1, yref="paper", text=f"this run: {obs:.1f}%", showarrow=False,
                       xanchor="right" if right else "left", yanchor="top",
                       font={"color": "#253494", "size": 14}, bgcolor="rgba(255,255,255,0.8)")
    z = result.z
    ztext = "∞" if math.isinf(z) else f"{z:.1f}"
    title = (f"Shared peak steps: {obs:.1f}% vs {result.null_mean * 100:.1f}% ± "
             f"{result.null_sd * 100:.1f}% by chance (z = {ztext}, p = {result.p:.3g})")
    fig.update_layout(showlegend=True, bargap=0.05)  # before _layout, which makes room for it
    _layout(fig, title, height=height)
    pad = 0.05 * (hi - lo or 1.0)
    fig.update_xaxes(title="C: average % of a layer's peak steps shared with another layer",
                     range=[lo - pad, hi + pad])
    fig.update_yaxes(title="number of random shifts")
    return fig


# ---------------------------------------------------------------------------------------------
# Neurons & weights page.


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
    m = float(np.abs(z).max()) or 1.0
    # No per-cell customdata (it would triple the bytes sent): a cell's block is stated once.
    per_cell = []
    if len(rs) < t:
        per_cell.append(f"{t / len(rs):.1f} steps")
    if len(cs) < u:
        per_cell.append(f"{u / len(cs):.1f} units")
    near = "around " if per_cell else ""
    fig = go.Figure(go.Heatmap(
        z=z, x=centre, y=ucentre, colorscale=DIVERGING, zmid=0, zmin=-m, zmax=m,
        colorbar={"title": {"text": "LCA"}},
        hovertemplate=f"{near}unit %{{y:.0f}}<br>{near}step %{{x:.0f}}<br>LCA %{{z:.3e}}"
                      "<extra></extra>"))
    if per_cell:
        title = f"{title} · each cell sums about {' × '.join(per_cell)}"
    _layout(fig, title, height=height)
    # Units and steps are whole numbers: on short axes plotly would tick at 0.5, 1.5, …
    fig.update_xaxes(title="training step", showgrid=False, dtick=1 if t <= 20 else None)
    fig.update_yaxes(title=y_title, autorange="reversed", showgrid=False,
                     dtick=1 if u <= 20 else None)
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
        mosaic[y0: y0 + h, x0: x0 + wd] = imgs[k]
        unit[y0: y0 + h, x0: x0 + wd] = k
    finite = np.abs(imgs[np.isfinite(imgs)])
    lim = float(np.percentile(finite, 99.5)) if finite.size else 1.0
    lim = lim or float(finite.max() if finite.size else 1.0) or 1.0
    py, px = np.indices(mosaic.shape)
    custom = np.dstack([unit, py % (h + gap), px % (wd + gap)])
    fig = go.Figure(go.Heatmap(
        z=mosaic, colorscale=DIVERGING, zmid=0, zmin=-lim, zmax=lim, customdata=custom,
        colorbar={"title": {"text": "total LCA"}}, hoverongaps=False,
        hovertemplate="unit %{customdata[0]}<br>row %{customdata[1]}, col %{customdata[2]}"
                      "<br>total LCA %{z:.3e}<extra></extra>"))
    shown = f" (first {n} of {n_all})" if n < n_all else ""
    _layout(fig, title or f"First layer: each unit's {what} as an image of the input{shown} "
                "(green = helped, red = hurt)", height=height or min(900, 140 + rows * 70))
    fig.update_xaxes(visible=False, constrain="domain")
    fig.update_yaxes(visible=False, autorange="reversed", scaleanchor="x", constrain="domain")
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
    v = v[np.isfinite(v)]
    if v.size == 0:
        return empty_figure("No LCA values have been recorded yet.")
    zeros = int(np.count_nonzero(v == 0))
    nz = v[v != 0]
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
    fig = go.Figure()
    neg = centres < 0
    fig.add_trace(go.Bar(x=centres[neg], y=counts[neg], width=width, marker_color=HELPED,
                         name=f"helped (< 0): {helped / total:.1%}",
                         hovertemplate="LCA ≈ %{x:.2e}<br>%{y:,} values<extra></extra>"))
    fig.add_trace(go.Bar(x=centres[~neg], y=counts[~neg], width=width, marker_color=HURT,
                         name=f"hurt (> 0): {(nz.size - helped) / total:.1%}",
                         hovertemplate="LCA ≈ %{x:.2e}<br>%{y:,} values<extra></extra>"))
    note = f"{total:,} values"
    if zeros:
        note += f"; {zeros / total:.1%} exactly 0 (did not move, not drawn)"
    if steps_used is not None and steps_total is not None and steps_used < steps_total:
        note += f" from a seeded sample of {steps_used:,} of {steps_total:,} steps"
    if beyond:
        note += f"; {beyond:,} beyond ±{lim:.1e} counted in the end bars"
    fig.add_annotation(text=note, x=1, y=-0.2, xref="paper", yref="paper", xanchor="right",
                       yanchor="top", showarrow=False, font={"size": 12})
    _layout(fig, title, height=height)
    fig.update_layout(bargap=0, barmode="overlay", margin={"b": 85})
    fig.update_xaxes(title="LCA of one parameter on one step (loss units)", exponentformat="e")
    fig.update_yaxes(title="number of values" + (" (log scale)" if log else ""),
                     type="log" if log else "linear")
    return fig


def helped_fraction_histogram(
    helped_steps: np.ndarray,
    num_steps: int,
    *,
    totals: np.ndarray | None = None,
    bins: int = 50,
    title: str = "How often each parameter helped (fraction of steps with LCA < 0)",
    height: int = 380,
) -> go.Figure:
    """Histogram over parameters of helped_steps / T; the paper found it peaked near 0.5.

    Bars right of 50% (helped on most steps) are green, left of it grey. With ``totals``,
    parameters whose total LCA is exactly 0 (they never moved: frozen, pruned from the start)
    are left out and counted in a note.
    """
    hs = np.asarray(helped_steps, dtype=np.float64).ravel()
    if num_steps <= 0 or hs.size == 0:
        return empty_figure("No steps have been recorded yet.")
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
    fig = go.Figure(go.Bar(x=centres, y=counts, width=edges[1] - edges[0], marker_color=colors,
                           hovertemplate="helped on %{x:.0f}% of steps<br>%{y:,} parameters"
                                         "<extra></extra>", showlegend=False))
    fig.add_vline(x=50, line={"color": "black", "dash": "dash", "width": 1.5})
    med = float(np.median(frac))
    note = (f"dashed: half of the steps · median {med:.1f}% of {num_steps:,} steps · "
            f"{hs.size:,} parameters")
    if still:
        note += f" ({still:,} that never moved left out)"
    fig.add_annotation(text=note, x=1, y=1.01, xref="paper", yref="paper", xanchor="right",
                       yanchor="bottom", showarrow=False, font={"size": 12})
    _layout(fig, title, height=height)
    fig.update_layout(bargap=0)
    fig.update_xaxes(title="% of steps on which the parameter helped", range=[0, 100])
    fig.update_yaxes(title="number of parameters")
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
                "side": side, "parameter": f"{name}{_index_text(i, shape)}", "tensor": name,
                "index": i, "total LCA": v,
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
    max_bars: int = 3000,
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
    if cumulative:
        fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.58, 0.42],
                            vertical_spacing=0.06)
    else:
        fig = make_subplots(rows=1, cols=1)
    fig.add_trace(go.Bar(x=centre, y=sums, marker_color=sign_colors(sums),
                         width=(last - first + 1) * 0.9 if len(starts) > 1 else None,
                         name=f"LCA per {per}", customdata=np.stack([first, last], axis=1),
                         hovertemplate="steps %{customdata[0]}–%{customdata[1]}<br>"
                                       "LCA %{y:.3e}<extra></extra>", showlegend=False),
                  row=1, col=1)
    fig.add_hline(y=0, line={"color": "black", "width": 1}, row=1, col=1)
    fig.update_yaxes(title=f"LCA per {per}", exponentformat="e", row=1, col=1)
    if cumulative:
        cum = np.cumsum(v)
        idx = thin(t)
        xs = (np.arange(1, t + 1) if positions is None
              else np.asarray(positions, dtype=np.float64))
        fig.add_trace(_line(x=xs[idx],
                                   y=cum[idx], mode="lines", name="running total",
                                   line={"color": MEASURED, "width": 2.5}, showlegend=False,
                                   hovertemplate="after step %{x}<br>running total %{y:.3e}"
                                                 "<extra></extra>"), row=2, col=1)
        fig.add_hline(y=0, line={"color": "#bdbdbd", "width": 1}, row=2, col=1)
        fig.update_yaxes(title="running total", exponentformat="e", row=2, col=1)
    _layout(fig, title or f"LCA of {label} on each step (green = helped, red = hurt)",
            height=height)
    fig.update_layout(bargap=0, showlegend=False)
    fig.update_xaxes(title="training step", row=2 if cumulative else 1, col=1)
    return fig


# ---------------------------------------------------------------------------------------------
# Compare page.


def compare_loss(
    curves: Sequence[tuple[str, np.ndarray, np.ndarray]],
    *,
    x_title: str = "training step",
    log_y: bool = False,
    title: str = "Loss on the measurement set, run by run",
    height: int = 420,
) -> go.Figure:
    """Loss curves of several runs overlaid: ``curves`` = [(label, x, loss), ...]."""
    curves = [(lab, np.asarray(x, float), np.asarray(y, float)) for lab, x, y in curves
              if len(y)]
    if not curves:
        return empty_figure("None of these runs has recorded a loss yet.")
    fig = go.Figure()
    for j, (lab, x, y) in enumerate(curves):
        n = min(len(x), len(y))
        idx = thin(n)
        fig.add_trace(_line(x=x[:n][idx], y=y[:n][idx], mode="lines", name=lab,
                                   line={"color": series_color(j), "width": 2.5},
                                   hovertemplate=f"{lab}<br>%{{x:.4g}}: loss %{{y:.5f}}"
                                                 "<extra></extra>"))
    _layout(fig, title, height=height)
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
        fig.add_trace(go.Bar(x=list(names), y=y, name=lab,
                             marker_color=series_color(j),
                             hovertemplate=f"{lab}<br>%{{x}}: %{{y:.4e}}<extra></extra>"))
    fig.add_hline(y=0, line={"color": "black", "width": 1})
    what = " per parameter" if per else ""
    _layout(fig, title or f"Total LCA{what} of each layer, run by run (below 0 = helped)",
                height=height)
    fig.update_layout(barmode="group")
    fig.update_xaxes(title="layer (parameter tensor)", tickangle=-30 if len(names) > 6 else 0)
    fig.update_yaxes(title=f"total LCA{what} (below 0 = helped)", exponentformat="e")
    return fig


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
    """Run B − run A per layer: green where B's layer helped more (or hurt less) than A's."""
    if not names:
        return empty_figure("These runs have no layer names in common.")
    per = bool(per_param and counts_a is not None and counts_b is not None)
    if per:
        d = _per_param(b, counts_b) - _per_param(a, counts_a)
    else:
        d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    fig = go.Figure(go.Bar(x=list(names), y=d, marker_color=sign_colors(d),
                           hovertemplate="%{x}<br>B − A = %{y:.4e}<extra></extra>",
                           showlegend=False))
    fig.add_hline(y=0, line={"color": "black", "width": 1})
    what = " per parameter" if per else ""
    _layout(fig, f"Difference{what}: {label_b} − {label_a} (green = B helped more, "
                "red = B helped less)", height=height)
    fig.update_xaxes(title="layer (parameter tensor)", tickangle=-30 if len(names) > 6 else 0)
    fig.update_yaxes(title=f"difference of total LCA{what}", exponentformat="e")
    return fig
