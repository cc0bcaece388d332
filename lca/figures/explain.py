"""Figures of the "What is LCA?" page: the loss surface with one step, the path integral along
it, and the two shares adding up to the loss change. Pure functions of a ``TwoWeightExample``."""

from __future__ import annotations

import plotly.graph_objects as go

from ..explain import TwoWeightExample
from .common import HELPED, HURT, STILL, base_layout, series_color

__all__ = ["explain_path_figure", "explain_shares_figure", "explain_surface_figure"]

WEIGHT_NAMES = ("weight 1", "weight 2")
# The loss surface uses a grey-blue scale: green and red mean helped and hurt, not low and high.
SURFACE_SCALE = [[0.0, "#f7fbff"], [0.5, "#9ecae1"], [1.0, "#08519c"]]


def _sign_color(v: float) -> str:
    return HELPED if v < 0 else HURT if v > 0 else STILL


def explain_surface_figure(ex: TwoWeightExample, *, height: int = 420) -> go.Figure:
    """Contours of the loss over the two weights; the step is an arrow from start to end."""
    fig = go.Figure(
        go.Contour(
            x=ex.grid_w1,
            y=ex.grid_w2,
            z=ex.grid_loss,
            colorscale=SURFACE_SCALE,
            ncontours=18,
            colorbar={"title": {"text": "loss"}, "thickness": 12},
            hovertemplate="weight 1 %{x:.2f}<br>weight 2 %{y:.2f}<br>loss %{z:.3f}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[ex.start[0], ex.end[0]],
            y=[ex.start[1], ex.end[1]],
            mode="markers+text",
            marker={
                "size": 11,
                "color": ["#333333", "#ffffff"],
                "line": {"width": 2, "color": "#333333"},
            },
            text=["before", "after"],
            textposition=["bottom center", "top center"],
            textfont={"size": 15},
            hoverinfo="skip",
            showlegend=False,
        )
    )
    fig.add_annotation(
        x=ex.end[0],
        y=ex.end[1],
        ax=ex.start[0],
        ay=ex.start[1],
        xref="x",
        yref="y",
        axref="x",
        ayref="y",
        showarrow=True,
        arrowhead=3,
        arrowsize=1.4,
        arrowwidth=3,
        arrowcolor="#333333",
        text="",
    )
    base_layout(fig, "Loss over the two weights; the arrow is one step", height=height)
    fig.update_xaxes(title_text="weight 1", range=[ex.grid_w1[0], ex.grid_w1[-1]])
    fig.update_yaxes(title_text="weight 2", range=[ex.grid_w2[0], ex.grid_w2[-1]])
    return fig


def explain_path_figure(ex: TwoWeightExample, *, height: int = 420) -> go.Figure:
    """Each weight's gradient × its move along the step; the area under a curve is its share.

    The area is shaded green where it lowers the loss and red where it raises it; the three
    points Simpson's rule uses are marked with their weights 1, 4, 1.
    """
    fig = go.Figure()
    for i, name in enumerate(WEIGHT_NAMES):
        y = ex.integrand[:, i]
        share = float(ex.shares[i])
        fig.add_trace(
            go.Scatter(
                x=ex.s,
                y=y,
                mode="lines",
                name=f"{name}: share {share:+.3f}",
                line={"color": series_color(i), "width": 3},
                fill="tozeroy",
                fillcolor=_tint(_sign_color(share)),
                hovertemplate=f"{name}<br>position %{{x:.2f}}<br>gradient × move %{{y:.3f}}"
                "<extra></extra>",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=ex.simpson_s,
                y=ex.simpson_values[:, i],
                mode="markers+text",
                marker={
                    "size": 11,
                    "color": series_color(i),
                    "line": {"width": 1.5, "color": "#333333"},
                },
                text=["×1", "×4", "×1"],
                textposition="top center",
                textfont={"size": 13},
                showlegend=False,
                hoverinfo="skip",
            )
        )
    fig.add_hline(y=0, line={"color": "#555555", "width": 1})
    base_layout(fig, "Gradient × move along the step; area = share", height=height)
    fig.update_xaxes(
        title_text="position along the step (0 = before, 1 = after)", range=[-0.02, 1.02]
    )
    fig.update_yaxes(title_text="rate of loss change")
    return fig


def explain_shares_figure(ex: TwoWeightExample, *, height: int = 360) -> go.Figure:
    """The two shares stacked, beside the measured change of the loss: they add up."""
    fig = go.Figure()
    for i, name in enumerate(WEIGHT_NAMES):
        v = float(ex.shares[i])
        fig.add_trace(
            go.Bar(
                x=["shares of the two weights"],
                y=[v],
                name=f"{name} {'helped' if v < 0 else 'hurt'}",
                marker={"color": _sign_color(v), "line": {"color": series_color(i), "width": 4}},
                text=[f"{name}: {v:+.3f}"],
                textposition="inside",
                insidetextanchor="middle",
                hovertemplate=f"{name}: %{{y:+.4f}}<extra></extra>",
            )
        )
    change = ex.loss_change
    fig.add_trace(
        go.Bar(
            x=["measured change of the loss"],
            y=[change],
            name="loss change",
            marker={"color": STILL},
            text=[f"{change:+.3f}"],
            textposition="inside",
            hovertemplate="loss after − loss before: %{y:+.4f}<extra></extra>",
        )
    )
    fig.update_layout(barmode="relative")
    base_layout(fig, "The shares add up to the loss change", height=height)
    fig.update_yaxes(title_text="change of the loss", zeroline=True, zerolinecolor="#555555")
    return fig


def _tint(hex_color: str, alpha: float = 0.25) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"
