"""Figures of a run as it trains: the loss going down and each layer's share of it growing.

Used by the Home page's demo and the Train page's live panel; pure functions (numpy in, plotly
Figure out) so a notebook can draw the same pictures. Helped (LCA < 0) green, hurt red.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from lca.segments import step_axis

from .common import HELPED, HURT, base_layout, empty_figure, series_color, sign_colors

__all__ = [
    "live_layer_bars",
    "live_layer_lines",
    "live_loss_figure",
    "sample_points",
]

# Layer lines avoid green and red, which mean helped and hurt everywhere else.
# Points per curve drawn: long runs are sampled (cumulative values stay exact), so plain SVG
# scatter traces stay light enough to redraw every second, even without a GPU.
MAX_POINTS = 2000
MAX_LINES = 10  # layer lines drawn; the rest are named in the title


def sample_points(n: int, max_points: int = MAX_POINTS) -> np.ndarray:
    """Indices 0..n-1 thinned to at most ``max_points``, always keeping the last one."""
    if n <= max_points:
        return np.arange(n)
    idx = np.unique(np.linspace(0, n - 1, max_points).round().astype(int))
    return idx


def _x_range(fig: go.Figure, total: int | None, last: float) -> None:
    upper = max(total or 0, last, 1)
    fig.update_xaxes(range=[0, upper], title="training step")


def _legend_below(fig: go.Figure) -> None:
    # Below the axis title, so a legend never covers the chart's title on a narrow column.
    fig.update_layout(
        legend={"orientation": "h", "yanchor": "top", "y": -0.22, "x": 0},
        margin={"b": 90},
    )


def live_loss_figure(
    loss: np.ndarray,
    *,
    total_steps: int | None = None,
    train_loss: np.ndarray | None = None,
    kind: np.ndarray | None = None,
    title: str = "Measurement-set loss (lower is better)",
    height: int = 380,
) -> go.Figure:
    """The measurement-set loss L_0..L_T against the step; the x axis spans the whole run so the
    curve visibly grows into it. ``train_loss`` (minibatch loss per step) is drawn faintly.
    With ``kind``, an intervention (a prune) sits between the steps around it."""
    loss = np.asarray(loss, dtype=np.float64)
    if loss.size == 0:
        return empty_figure("No loss recorded yet: the run is starting.", height=height)
    pos = step_axis(kind, len(loss) - 1)
    fig = go.Figure()
    if train_loss is not None and len(train_loss):
        tl = np.asarray(train_loss, dtype=np.float64)
        i = sample_points(len(tl))
        fig.add_trace(
            go.Scatter(
                x=step_axis(kind, len(tl))[i],
                y=tl[i],
                mode="lines",
                name="minibatch loss",
                connectgaps=True,
                line={"color": "#b0b0b0", "width": 1},
                hovertemplate="step %{x}<br>minibatch loss %{y:.4f}<extra></extra>",
            )
        )
    i = sample_points(len(loss))
    fig.add_trace(
        go.Scatter(
            x=np.concatenate([[0.0], pos])[i],
            y=loss[i],
            mode="lines+markers" if len(loss) < 60 else "lines",
            name="measurement-set loss",
            line={"color": "#1f77b4", "width": 3},
            hovertemplate="step %{x}<br>loss %{y:.4f}<extra></extra>",
        )
    )
    base_layout(fig, title, height=height)
    _legend_below(fig)
    _x_range(fig, total_steps, float(pos[-1]) if len(pos) else 0)
    fig.update_yaxes(title="loss (cross-entropy)", rangemode="tozero")
    return fig


def live_layer_lines(
    cumulative: np.ndarray,
    names: Sequence[str],
    *,
    total_steps: int | None = None,
    kind: np.ndarray | None = None,
    title: str = "Each layer's running total of LCA (below 0 = it helped)",
    height: int = 420,
) -> go.Figure:
    """Cumulative LCA per layer (T, L) against the step, with the helped side (below 0) shaded
    green and the hurt side red, so a line sinking into the green is a layer doing the learning.
    """
    c = np.asarray(cumulative, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] == 0 or c.shape[1] == 0:
        return empty_figure(
            "No step recorded yet: the layers' LCA appears after step 1.", height=height
        )
    t, n_layers = c.shape
    order = np.argsort(-np.abs(c[-1]), kind="stable")[:MAX_LINES]
    order = np.sort(order)  # keep model order in the legend
    i = sample_points(t)
    pos = step_axis(kind, t)
    fig = go.Figure()
    for j in order:
        fig.add_trace(
            go.Scatter(
                x=pos[i],
                y=c[i, j],
                mode="lines",
                name=str(names[j]),
                line={"color": series_color(int(j)), "width": 2.5},
                hovertemplate=f"{names[j]}<br>step %{{x}}<br>total LCA %{{y:.4f}}<extra></extra>",
            )
        )
    lo, hi = float(np.nanmin(c)), float(np.nanmax(c))
    pad = 0.12 * max(hi - lo, 1e-12)  # room for the "hurt" label when nothing hurt
    lo, hi = min(lo - pad, -pad), max(hi + pad, pad)
    fig.add_hrect(y0=lo, y1=0, fillcolor=HELPED, opacity=0.08, line_width=0)
    fig.add_hrect(y0=0, y1=hi, fillcolor=HURT, opacity=0.08, line_width=0)
    fig.add_hline(y=0, line={"color": "#444", "width": 1})
    shown = "" if n_layers <= MAX_LINES else f" ({MAX_LINES} of {n_layers} tensors, largest)"
    base_layout(fig, title + shown, height=height)
    _legend_below(fig)
    _x_range(fig, total_steps, float(pos[-1]))
    fig.update_yaxes(title="LCA summed over steps (loss units)", range=[lo, hi])
    _sign_label(fig, "helped", HELPED, top=False)
    _sign_label(fig, "hurt", HURT, top=True)
    return fig


def _sign_label(fig: go.Figure, text: str, color: str, *, top: bool) -> None:
    """A word in the sign's colour at the left edge of the chart's helped (bottom) or hurt
    (top) band, so a student reads the bands without a legend."""
    fig.add_annotation(
        text=text,
        x=0.005,
        y=0.98 if top else 0.02,
        xref="paper",
        yref="paper",
        xanchor="left",
        yanchor="top" if top else "bottom",
        showarrow=False,
        font={"color": color, "size": 14},
        bgcolor="rgba(255,255,255,0.75)",
    )


def live_layer_bars(
    totals: np.ndarray,
    names: Sequence[str],
    *,
    title: str = "Total LCA per layer so far",
    height: int | None = None,
) -> go.Figure:
    """One horizontal bar per layer: its LCA summed over all steps so far, green when it helped
    (lowered the loss), red when it hurt."""
    v = np.asarray(totals, dtype=np.float64).ravel()
    if v.size == 0:
        return empty_figure("No step recorded yet.", height=height or 320)
    labels = [str(n) for n in names]
    h = height or int(min(900, max(280, 90 + 26 * len(v))))
    fig = go.Figure(
        go.Bar(
            x=v,
            y=labels,
            orientation="h",
            marker={"color": sign_colors(v)},
            text=[f"{x:+.3f}" for x in v],
            textposition="auto",
            hovertemplate="%{y}<br>total LCA %{x:.4f}<extra></extra>",
        )
    )
    base_layout(fig, title, height=h)
    fig.update_xaxes(
        title="total LCA (< 0 = helped)", zeroline=True, zerolinecolor="#444", zerolinewidth=1
    )
    fig.update_yaxes(autorange="reversed", title="")
    fig.update_layout(showlegend=False)
    return fig
