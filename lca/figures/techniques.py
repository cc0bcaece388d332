"""Where each efficiency technique acted in a run, as figures: pure functions of numpy data.

The data comes from ``lca.views`` (``technique_view`` reads which segments were skipped, where
prune events happened, which layers were frozen); these functions only draw it, with no
Streamlit, so a notebook draws the same pictures as the Techniques page. The prune figures
live in ``lca.figures.prune``.

Colours: green = helped (LCA < 0), red = hurt (LCA > 0), as everywhere. Technique marks use
colours that are neither: blue bands for skipped weight updates, black outlines for frozen
layers, black crosses for prune events, purple for mixed-precision skipped steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from lca.downsample import block_sum
from lca.segments import intervals, module_of, modules, step_axis

from .common import (
    base_layout,
    empty_figure,
    lca_heatmap,
    series_color,
)

__all__ = [
    "FROZEN_COLOR",
    "PRUNE_COLOR",
    "SCALER_COLOR",
    "SKIP_COLOR",
    "amp_scale_figure",
    "bits_figure",
    "intervals",
    "module_of",
    "series_figure",
    "technique_heatmap_figure",
    "technique_layer_lines_figure",
    "technique_loss_figure",
]


SKIP_COLOR = "rgba(8, 119, 189, 0.16)"  # band: weights not updating
SKIP_LINE = "#0877bd"
FROZEN_COLOR = "#111111"
PRUNE_COLOR = "#111111"
SCALER_COLOR = "#7b3294"  # purple: a step the fp16 loss scaler skipped
MAX_LINES = 10
MAX_HEATMAP_COLS = 1500


def _loss_axis(kind: np.ndarray | None, t: int) -> np.ndarray:
    """Step-axis places of L_0..L_t: 0, then where each segment ends (``step_axis``), so a
    prune made after step k sits at k + 0.5 as on the other pages."""
    return np.concatenate([[0.0], step_axis(kind, t)])


def _add_bands(
    fig: go.Figure,
    bands: Sequence[tuple[int, int]],
    *,
    xs: np.ndarray,
    label: str = "weights not updating (skipped)",
) -> None:
    """Bands over segments [s, e): from the loss before segment s to the loss after e - 1
    (``xs`` = ``_loss_axis``)."""
    for i, (s, e) in enumerate(bands):
        fig.add_vrect(
            x0=float(xs[min(s, len(xs) - 1)]),
            x1=float(xs[min(e, len(xs) - 1)]),
            fillcolor=SKIP_COLOR,
            line_width=0,
            layer="below",
        )
        if i == 0:
            fig.add_trace(
                go.Scatter(
                    x=[None],
                    y=[None],
                    mode="markers",
                    name=label,
                    marker={"symbol": "square", "size": 14, "color": "rgba(8,119,189,0.35)"},
                )
            )


def technique_loss_figure(
    loss: np.ndarray,
    *,
    skip_bands: Sequence[tuple[int, int]] = (),
    prune_marks: Sequence[tuple[int, str]] = (),
    scaler_skipped: np.ndarray | None = None,
    kind: np.ndarray | None = None,
    title: str = "Loss over training, with where each technique acted",
    height: int = 380,
) -> go.Figure:
    """Measurement loss L_0..L_T; blue bands where weight updates were skipped, a cross and a
    dotted line at each prune event, purple marks on steps the loss scaler skipped.

    x is the training step, as on every page: L_t sits where segment t - 1 ends
    (``lca.segments.step_axis``); with ``kind`` a prune made after step k sits at k + 0.5.
    """
    loss = np.asarray(loss, dtype=np.float64)
    if len(loss) < 2:
        return empty_figure("No step recorded yet: the loss timeline appears after step 1.")
    x = _loss_axis(kind, len(loss) - 1)
    line = go.Scattergl if len(loss) > 5000 else go.Scatter
    fig = go.Figure(
        line(
            x=x,
            y=loss,
            mode="lines",
            name="loss",
            line={"color": "#333333", "width": 2.5},
            hovertemplate="after step %{x}<br>loss %{y:.4f}<extra></extra>",
        )
    )
    _add_bands(fig, skip_bands, xs=x)
    if prune_marks:
        segs = np.array([s for s, _ in prune_marks])
        after = x[np.minimum(segs + 1, len(x) - 1)]
        for p in after:
            fig.add_vline(x=float(p), line={"color": PRUNE_COLOR, "dash": "dot", "width": 1})
        fig.add_trace(
            go.Scatter(
                x=after,
                y=loss[np.minimum(segs + 1, len(loss) - 1)],
                mode="markers",
                name="prune event",
                marker={"symbol": "x", "size": 13, "color": PRUNE_COLOR},
                hovertext=[
                    f"{n}: loss {loss[s]:.4f} → {loss[min(s + 1, len(loss) - 1)]:.4f} "
                    f"({loss[min(s + 1, len(loss) - 1)] - loss[s]:+.4f})"
                    for s, n in prune_marks
                ],
                hoverinfo="text",
            )
        )
    if scaler_skipped is not None and np.any(scaler_skipped):
        segs = np.flatnonzero(scaler_skipped)
        segs = segs[segs + 1 < len(loss)]
        fig.add_trace(
            go.Scatter(
                x=x[segs + 1],
                y=loss[segs + 1],
                mode="markers",
                name="step skipped by loss scaler",
                marker={"symbol": "triangle-down", "size": 11, "color": SCALER_COLOR},
            )
        )
    base_layout(fig, title, height=height)
    fig.update_xaxes(
        title="training step"
        + (" (a prune made after step k sits at k + ½)" if prune_marks else "")
    )
    fig.update_yaxes(title="loss on the measurement set")
    return fig


def technique_layer_lines_figure(
    layer_lca: np.ndarray,
    tensor_names: Sequence[str],
    *,
    skip_bands: Sequence[tuple[int, int]] = (),
    prune_marks: Sequence[tuple[int, str]] = (),
    kind: np.ndarray | None = None,
    title: str = "Each layer's running total of LCA (lower = it helped more)",
    height: int = 400,
) -> go.Figure:
    """Cumulative LCA per layer (module: weights + bias) with the skip bands and prune lines.

    A line falling means the layer is lowering the loss; flat inside a blue band means its
    weights were not updating.
    """
    a = np.asarray(layer_lca, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0:
        return empty_figure("No step recorded yet: the per-layer timeline appears after step 1.")
    mods, idx = modules(tensor_names)
    # A module takes its first tensor's colour, so conv2 here matches conv2.weight elsewhere.
    first = {int(m): j for j, m in reversed(list(enumerate(idx)))}
    per = np.zeros((a.shape[0], len(mods)))
    for j, m in enumerate(idx):
        per[:, m] += a[:, j]
    cum = np.cumsum(per, axis=0)
    order = np.argsort(-np.abs(cum[-1]), kind="stable")[:MAX_LINES]
    xs = _loss_axis(kind, a.shape[0])
    x = xs[1:]
    line = go.Scattergl if a.shape[0] > 5000 else go.Scatter
    fig = go.Figure()
    for m in sorted(order):
        fig.add_trace(
            line(
                x=x,
                y=cum[:, m],
                mode="lines",
                name=mods[m],
                line={"color": series_color(first[m]), "width": 2.2},
                hovertemplate=f"{mods[m]}<br>after step %{{x}}: Σ LCA %{{y:+.4f}}<extra></extra>",
            )
        )
    _add_bands(fig, skip_bands, xs=xs)
    for s, _ in prune_marks:
        fig.add_vline(
            x=float(xs[min(s + 1, len(xs) - 1)]),
            line={"color": PRUNE_COLOR, "dash": "dot", "width": 1},
        )
    base_layout(
        fig,
        title
        if len(mods) <= MAX_LINES
        else f"{title} — the {MAX_LINES} largest of {len(mods)} layers",
        height=height,
    )
    fig.update_xaxes(title="training step")
    fig.update_yaxes(title="cumulative LCA (loss change)", zeroline=True, zerolinecolor="#555555")
    return fig


def technique_heatmap_figure(
    layer_lca: np.ndarray,
    tensor_names: Sequence[str],
    *,
    skip_bands: Sequence[tuple[int, int]] = (),
    skip_rows: Sequence[int] = (),
    frozen: Sequence[tuple[Sequence[int], np.ndarray]] = (),
    prune_marks: Sequence[tuple[int, Sequence[int], str]] = (),
    scaler_skipped: np.ndarray | None = None,
    kind: np.ndarray | None = None,
    max_cols: int = MAX_HEATMAP_COLS,
    title: str = "Where each tensor helped or hurt, step by step, with the techniques marked",
    height: int | None = None,
) -> go.Figure:
    """Tensor × segment LCA heatmap (green helped, red hurt) with the techniques drawn on it.

    Blue dashed boxes: skipped weight updates (on the weight rows only: biases keep training);
    black boxes: frozen tensors; black crosses: prune events on the pruned tensors; purple
    ticks at the top: steps the loss scaler skipped. Long runs are block-summed along time
    (totals kept exact), so a box edge falls on the nearest drawn column.
    """
    a = np.asarray(layer_lca, dtype=np.float64)
    names = list(tensor_names)
    if a.ndim != 2 or a.shape[0] == 0 or not names:
        return empty_figure("No step recorded yet: the heatmap appears after step 1.")
    t = a.shape[0]
    z, starts, _ = block_sum(a, max_cols)
    starts = np.asarray(starts)
    width = t / len(starts)  # segments per drawn column

    def col(seg: float) -> float:
        """Drawn x position of a segment boundary."""
        return seg / width - 0.5

    pos = step_axis(kind, t)  # each segment's place on the training-step axis
    fig = lca_heatmap(
        z.T,
        x=np.arange(len(starts)),
        y=list(range(len(names))),
        title=title,
        x_title="training step",
        y_title="",
        colorbar_title="LCA",
        height=height or max(340, 28 * len(names) + 170),
    )
    base_layout(fig, title, height=fig.layout.height)
    # Round step numbers (1, 20, 40, … or 1, 500, 1000, …), each at its step's column, so the
    # axis reads in training steps as on the other pages (a prune segment has no whole number).
    last = max(float(pos[-1]), 1.0)
    raw = max(last / 8, 1.0)
    step = min(
        m * 10 ** math.floor(math.log10(raw))
        for m in (1, 2, 5, 10)
        if m * 10 ** math.floor(math.log10(raw)) >= raw
    )
    ticks = [k for k in [1, *range(int(step), int(last) + 1, int(step))] if k <= last]
    rows_of = np.searchsorted(pos, ticks)
    fig.update_xaxes(
        tickvals=[col(r + 0.5) for r in rows_of],
        ticktext=[str(k) for k in ticks],
        title="training step",
    )
    fig.update_yaxes(
        tickvals=list(range(len(names))), ticktext=names, autorange="reversed", title=""
    )
    stops = np.append(starts[1:], t) - 1
    span = [_steps_text(pos[a], pos[b]) for a, b in zip(starts, stops, strict=True)]
    fig.data[0].customdata = np.array([[f"{n}<br>{s}" for s in span] for n in names], dtype=object)
    fig.data[0].hovertemplate = "%{customdata}<br>LCA %{z:.3e}<extra></extra>"
    legend = set()
    rows = sorted(set(skip_rows))
    for s, e in skip_bands:
        for lo, hi in _row_runs(rows):
            fig.add_shape(
                type="rect",
                x0=col(s),
                x1=col(e),
                y0=lo - 0.5,
                y1=hi + 0.5,
                line={"color": SKIP_LINE, "width": 2, "dash": "dash"},
                fillcolor="rgba(8,119,189,0.08)",
            )
        legend.add("skip")
    for frows, mask in frozen:
        for s, e in intervals(mask):
            for lo, hi in _row_runs(sorted(frows)):
                fig.add_shape(
                    type="rect",
                    x0=col(s),
                    x1=col(e),
                    y0=lo - 0.5,
                    y1=hi + 0.5,
                    line={"color": FROZEN_COLOR, "width": 2.5},
                    fillcolor="rgba(0,0,0,0.06)",
                )
            legend.add("frozen")
    if prune_marks:
        px, py, text = [], [], []
        for seg, prows, label in prune_marks:
            for row in prows:
                px.append(col(seg + 0.5))
                py.append(row)
                text.append(f"{label}: prune event after step {int(pos[seg])} on {names[row]}")
        fig.add_trace(
            go.Scatter(
                x=px,
                y=py,
                mode="markers",
                name="prune event",
                marker={
                    "symbol": "x-thin",
                    "size": 14,
                    "color": PRUNE_COLOR,
                    "line": {"width": 3, "color": PRUNE_COLOR},
                },
                hovertext=text,
                hoverinfo="text",
            )
        )
    if scaler_skipped is not None and np.any(scaler_skipped):
        segs = np.flatnonzero(scaler_skipped)
        fig.add_trace(
            go.Scatter(
                x=[col(s + 0.5) for s in segs],
                y=[-0.75] * len(segs),
                mode="markers",
                name="step skipped by loss scaler",
                marker={"symbol": "triangle-down", "size": 10, "color": SCALER_COLOR},
                hovertext=[f"loss scaler skipped step {pos[s]:g}" for s in segs],
                hoverinfo="text",
            )
        )
    if "skip" in legend:
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                name="weight updates skipped (blue box)",
                marker={"symbol": "square-open", "size": 14, "color": SKIP_LINE},
            )
        )
    if "frozen" in legend:
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                name="frozen (black box)",
                marker={"symbol": "square-open", "size": 14, "color": FROZEN_COLOR},
            )
        )
    fig.update_layout(showlegend=True)
    fig.update_yaxes(
        range=[
            len(names) - 0.5,
            -1.2 if scaler_skipped is not None and np.any(scaler_skipped) else -0.5,
        ],
        autorange=False,
    )
    fig.update_xaxes(range=[-0.5, len(starts) - 0.5])
    return fig


def _steps_text(first: float, last: float) -> str:
    """'step 12', 'steps 12–15', or 'prune after step 12' for a drawn column's segments."""

    def one(p: float) -> str:
        return f"prune after step {int(p)}" if p != int(p) else f"step {int(p)}"

    if first == last:
        return one(first)
    return f"steps {first:g}–{last:g}".replace(".5", "½")


def _row_runs(rows: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive row indices grouped into (first, last) runs, to draw one box per run."""
    out: list[tuple[int, int]] = []
    for r in rows:
        if out and r == out[-1][1] + 1:
            out[-1] = (out[-1][0], r)
        else:
            out.append((r, r))
    return out


def amp_scale_figure(
    scale: np.ndarray,
    skipped: np.ndarray | None = None,
    *,
    kind: np.ndarray | None = None,
    title: str = "Mixed precision: the loss scale, and the steps it skipped",
    height: int = 320,
) -> go.Figure:
    """The GradScaler's loss scale per step (log axis) with purple marks where it skipped."""
    s = np.asarray(scale, dtype=np.float64)
    if not len(s) or not np.any(np.isfinite(s)):
        return empty_figure("No loss scale recorded yet.", height=height)
    x = step_axis(kind, len(s))
    fig = go.Figure(
        go.Scatter(
            x=x, y=s, mode="lines", name="loss scale", line={"color": "#333333", "width": 2.5}
        )
    )
    if skipped is not None and np.any(skipped):
        k = np.flatnonzero(np.asarray(skipped, dtype=bool))
        k = k[k < len(s)]
        fig.add_trace(
            go.Scatter(
                x=x[k],
                y=s[k],
                mode="markers",
                name="step skipped (inf/NaN gradients)",
                marker={"symbol": "triangle-down", "size": 12, "color": SCALER_COLOR},
            )
        )
    base_layout(fig, title, height=height)
    fig.update_xaxes(title="training step")
    fig.update_yaxes(title="loss scale", type="log")
    return fig


def bits_figure(
    tensor_names: Sequence[str],
    bits: np.ndarray,
    *,
    title: str = "Bits per weight in the forward pass, by tensor",
    height: int = 320,
) -> go.Figure:
    """Bits per weight of each tensor: quantized tensors in blue, float32 ones in grey."""
    b = np.asarray(bits, dtype=np.float64)
    if not len(b):
        return empty_figure("No bit widths recorded.", height=height)
    q = np.isfinite(b)
    shown = np.where(q, b, 32.0)
    fig = go.Figure(
        go.Bar(
            x=list(tensor_names),
            y=shown,
            marker={"color": ["#0877bd" if v else "#bdbdbd" for v in q]},
            text=[f"{v:g}" for v in shown],
            textposition="outside",
            hovertemplate="%{x}<br>%{y:g} bits per weight<extra></extra>",
            showlegend=False,
        )
    )
    base_layout(fig, title, height=height)
    fig.update_xaxes(title="tensor (grey = left in float32)")
    fig.update_yaxes(title="bits per weight", range=[0, 36])
    return fig


def series_figure(
    values: np.ndarray,
    *,
    title: str,
    y_title: str,
    height: int = 300,
    kind: np.ndarray | None = None,
) -> go.Figure:
    """Any technique series against the training step (``step_axis``; intervention rows left
    out when ``kind`` is given), in a neutral colour."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or not len(v) or not np.any(np.isfinite(v)):
        return empty_figure(f"{title}: nothing recorded yet.", height=height)
    x = step_axis(kind, len(v))
    if kind is not None and len(kind) >= len(v):
        keep = np.asarray(kind)[: len(v)] == 0
        x, v = x[keep], v[keep]
    line = go.Scattergl if len(v) > 5000 else go.Scatter
    fig = go.Figure(
        line(x=x, y=v, mode="lines", line={"color": "#0877bd", "width": 2.5}, showlegend=False)
    )
    base_layout(fig, title, height=height)
    fig.update_xaxes(title="training step")
    fig.update_yaxes(title=y_title)
    return fig
