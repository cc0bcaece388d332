"""Figures of the Loss page: does LCA add up, and how did training go? Pure functions.

The conservation check (measured loss against L_0 plus the running sum of LCA), the per-step
error of the allocation, the minibatch loss and accuracy, and the share of parameters that
helped, did not move or hurt on each step. Conventions in ``lca.figures.axes``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from lca.downsample import block_sum
from lca.segments import step_axis

from .axes import (
    INTERVENTION,
    MAX_POINTS,
    MEASURED,
    PREDICTED,
    block_centres,
    curve,
    mark_interventions,
    thin,
    titled_layout,
)
from .common import (
    HELPED,
    HURT,
    STILL,
    empty_figure,
)

__all__ = [
    "helped_fractions",
    "loss_conservation",
    "step_error",
    "training_curves",
]


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
    fig.add_trace(
        curve(
            x=x[idx],
            y=loss[: t + 1][idx],
            name="measured loss L_t",
            mode="lines",
            line={"color": "rgba(37,37,37,0.35)", "width": 7},
            hovertemplate="after %{x} steps<br>L = %{y:.5f}<extra></extra>",
        )
    )
    fig.add_trace(
        curve(
            x=x[idx],
            y=rebuilt[idx],
            name="L₀ + cumulative sum of LCA",
            mode="lines",
            line={"color": PREDICTED, "width": 2.5, "dash": "dash"},
            hovertemplate="after %{x} steps<br>L₀ + ΣLCA = %{y:.5f}<extra></extra>",
        )
    )
    if kind is not None and t:
        rows = np.flatnonzero(np.asarray(kind)[:t] == 1)
        if len(rows):
            fig.add_trace(
                go.Scatter(
                    x=pos[rows],
                    y=loss[rows + 1],
                    mode="markers",
                    name="intervention (e.g. prune)",
                    marker={"color": INTERVENTION, "symbol": "x", "size": 11},
                    hovertemplate="intervention after step %{x:.0f}<br>L = %{y:.5f}<extra></extra>",
                )
            )
            mark_interventions(fig, pos[rows])
    titled_layout(fig, title, height=height)
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
    fig.add_trace(
        curve(
            x=x[idx],
            y=err[idx],
            mode="lines+markers" if t <= 300 else "lines",
            name="ΔL − ΣLCA",
            line={"color": MEASURED, "width": 1.5},
            marker={"size": 4},
            hovertemplate="step %{x}<br>error %{y:.3e}<extra></extra>",
        ),
        secondary_y=False,
    )
    if show_splits:
        fig.add_trace(
            curve(
                x=x[idx],
                y=sp[idx],
                mode="lines",
                name="Simpson panels used",
                line={"color": PREDICTED, "width": 1.5, "shape": "hv"},
                hovertemplate="step %{x}<br>%{y} panels<extra></extra>",
            ),
            secondary_y=True,
        )
        fig.update_yaxes(
            title="panels (adaptive)", secondary_y=True, rangemode="tozero", showgrid=False
        )
    if tolerance:
        for y in (-tolerance, tolerance):
            fig.add_hline(y=y, line={"color": STILL, "dash": "dot"}, secondary_y=False)
    fig.add_hline(y=0, line={"color": "#bdbdbd", "width": 1}, secondary_y=False)
    if kind is not None:
        rows = np.flatnonzero(np.asarray(kind)[:t] == 1)
        mark_interventions(fig, x[rows])
    titled_layout(fig, title, height=height)
    fig.update_xaxes(title="training step")
    fig.update_yaxes(title="error (loss units)", secondary_y=False, exponentformat="e")
    total = math.fsum(err.tolist())
    fig.add_annotation(
        text=f"sum of errors {total:.2e} · largest |error| {np.abs(err).max():.2e}",
        x=1,
        y=1,
        xref="paper",
        yref="paper",
        xanchor="right",
        yanchor="top",
        showarrow=False,
        font={"size": 13},
        bgcolor="rgba(255,255,255,0.8)",
    )
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
        fig.add_trace(
            curve(
                x=step_axis(kind, t)[idx],
                y=tl[idx],
                mode="lines",
                connectgaps=True,  # an intervention row has no minibatch
                name="minibatch loss",
                line={"color": "#969696", "width": 1},
                hovertemplate="step %{x}<br>loss %{y:.4f}<extra></extra>",
            ),
            secondary_y=False,
        )
    if acc_cols:
        x = np.asarray(eval_x if eval_x is not None else ev.get("train_step", []), dtype=float)
        styles = {
            "train_acc": ("train accuracy", "#ff7f0e", "dash"),
            "test_acc": ("test accuracy", "#1f77b4", "solid"),
        }
        for c in acc_cols:
            label, color, dash = styles[c]
            y = np.asarray(ev[c], dtype=np.float64) * 100
            fig.add_trace(
                go.Scatter(
                    x=x[: len(y)],
                    y=y,
                    mode="lines+markers",
                    name=label,
                    line={"color": color, "width": 2.5, "dash": dash},
                    hovertemplate=f"step %{{x}}<br>{label} %{{y:.1f}}%<extra></extra>",
                ),
                secondary_y=True,
            )
        fig.update_yaxes(
            title="accuracy (%)",
            range=[0, 102],
            secondary_y=True,
            showgrid=False,
            tickmode="linear",
            tick0=0,
            dtick=20,
        )
    titled_layout(fig, title, height=height)
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
    for y, name, color in (
        (h, "helped (LCA < 0)", HELPED),
        (s, "did not move (LCA = 0)", STILL),
        (u, "hurt (LCA > 0)", HURT),
    ):
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y * 100,
                name=name,
                mode="lines",
                stackgroup="one",
                line={"color": color, "width": 0.5},
                fillcolor=color,
                hovertemplate=f"step %{{x}}<br>{name}: %{{y:.1f}}%<extra></extra>",
            )
        )
    fig.add_hline(
        y=50,
        line={"color": "black", "dash": "dash", "width": 1.5},
        annotation_text="50%",
        annotation_position="top left",
        annotation_font={"size": 13, "color": "black"},
        annotation_bgcolor="rgba(255,255,255,0.85)",
    )
    if kind is not None:
        rows = np.flatnonzero(np.asarray(kind)[:t] == 1)
        mark_interventions(fig, pos[rows])
    titled_layout(fig, title, height=height)
    fig.update_xaxes(title="training step")
    fig.update_layout(legend={"traceorder": "normal"})
    fig.update_yaxes(title="% of parameters", range=[0, 100])
    return fig
