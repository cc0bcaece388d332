"""Playground figures: decision boundary, the network graph coloured by LCA, neuron outputs, loss.

The two classes are blue and orange, as in TensorFlow Playground, so they never collide with the
LCA colours: green = helped (lowered the loss), red = hurt (raised it). In the network graph an
edge is one weight and a circle one neuron (its incoming weights plus its bias); colour says
helped or hurt, thickness and size say how much.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .common import HELPED, HURT, STILL, base_layout, empty_figure

__all__ = [
    "CLASS_COLORS",
    "CLASS_SCALE",
    "accuracy_curves_figure",
    "decision_boundary_figure",
    "layer_lca_bars_figure",
    "network_figure",
    "neuron_outputs_figure",
    "playground_loss_figure",
]

BLUE = "#0877bd"  # class 0 (TensorFlow Playground's blue)
ORANGE = "#f59322"  # class 1 (its orange)
CLASS_COLORS = (BLUE, ORANGE)
# Background of the input plane: pale versions, so the points stay visible on top.
CLASS_SCALE = [[0.0, "#6aaed6"], [0.5, "#ffffff"], [1.0, "#f8b869"]]
TRAIN_COLOR = "#222222"
TEST_COLOR = "#7b3294"  # purple: neither a class colour nor an LCA colour

MAX_EDGE_WIDTH = 9.0
MIN_NODE, MAX_NODE = 14.0, 46.0


def _sign_word(v: float) -> str:
    return "helped" if v < 0 else "hurt" if v > 0 else "did not move"


def decision_boundary_figure(
    xs: np.ndarray,
    ys: np.ndarray,
    prob: np.ndarray,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    *,
    show_test: bool = True,
    title: str = "What the network predicts over the plane",
    height: int = 440,
) -> go.Figure:
    """Probability of orange over the input plane, with training (filled) and test (ringed)
    points in their class colours."""
    prob = np.asarray(prob, dtype=np.float64)
    fig = go.Figure(
        go.Heatmap(
            x=np.asarray(xs),
            y=np.asarray(ys),
            z=prob,
            zmin=0.0,
            zmax=1.0,
            colorscale=CLASS_SCALE,
            showscale=False,
            hovertemplate="x₁ %{x:.2f}<br>x₂ %{y:.2f}<br>P(orange) %{z:.2f}<extra></extra>",
            name="prediction",
        )
    )
    sets = [("training", x_train, y_train, "circle", "white", 1.0)]
    if show_test and x_test is not None and y_test is not None and len(x_test):
        sets.append(("test", x_test, y_test, "circle", "#222222", 1.0))
    for label, x, y, symbol, edge, lw in sets:
        x, y = np.asarray(x), np.asarray(y)
        for cls, color in enumerate(CLASS_COLORS):
            sel = y == cls
            fig.add_trace(
                go.Scatter(
                    x=x[sel, 0],
                    y=x[sel, 1],
                    mode="markers",
                    name=f"{label}: {'blue' if cls == 0 else 'orange'}",
                    marker={
                        "color": color,
                        "size": 7,
                        "symbol": symbol,
                        "line": {"color": edge, "width": lw},
                    },
                    hovertemplate=f"{label} ({'blue' if cls == 0 else 'orange'})<br>"
                    "x₁ %{x:.2f}, x₂ %{y:.2f}<extra></extra>",
                )
            )
    base_layout(fig, title, height=height)
    e = float(max(np.abs(xs).max(), np.abs(ys).max())) if len(xs) else 1.0
    fig.update_xaxes(title="x₁", range=[-e, e], constrain="domain", showgrid=False, zeroline=False)
    fig.update_yaxes(
        title="x₂", range=[-e, e], scaleanchor="x", scaleratio=1, showgrid=False, zeroline=False
    )
    fig.update_layout(
        legend={
            "orientation": "h",
            "y": -0.16,
            "yanchor": "top",
            "x": 0,
            "font": {"size": 13},
            "entrywidth": 0.5,
            "entrywidthmode": "fraction",
        },
        margin={"l": 50, "r": 10, "t": 60, "b": 100},
    )
    return fig


def _positions(sizes: Sequence[int]) -> list[np.ndarray]:
    """y position of each node, layer by layer, centred on 0, top to bottom; a layer smaller
    than the largest is spread out (up to 2 units apart) so big circles do not touch."""
    span = max(sizes)
    out = []
    for n in sizes:
        gap = 1.0 if n <= 1 else min(2.0, max(1.0, (span - 1) / (n - 1)))
        out.append((np.arange(n)[::-1] - (n - 1) / 2.0) * gap)
    return out


def _layer_title(i: int, count: int, names: Sequence[str]) -> str:
    if i == 0:
        return "input"
    if i == count - 1:
        return "output"
    return f"hidden {i}<br>({names[i - 1]})"


def network_figure(
    layer_sizes: Sequence[int],
    edge_lca: Sequence[np.ndarray],
    neuron_lca: Sequence[np.ndarray],
    *,
    weights: Sequence[np.ndarray] | None = None,
    layer_names: Sequence[str] | None = None,
    input_names: Sequence[str] = ("x₁", "x₂"),
    output_names: Sequence[str] = ("blue", "orange"),
    title: str = "Who helped: the network, coloured by LCA",
    height: int = 460,
) -> go.Figure:
    """The network as a graph: edges (weights) and circles (neurons) coloured by LCA.

    ``edge_lca[l]`` is the (out, in) LCA of layer l's weights, ``neuron_lca[l]`` the (out,) LCA
    of its neurons (incoming weights + bias). Green = helped, red = hurt, grey = did not move;
    line width and circle size grow with |LCA| (scaled to the largest in the picture).
    """
    sizes = list(layer_sizes)
    count = len(sizes)
    if count < 2 or len(edge_lca) != count - 1 or len(neuron_lca) != count - 1:
        return empty_figure("The network has no layers to draw.")
    names = (
        list(layer_names)
        if layer_names is not None
        else [f"fc{i}" for i in range(1, count - 1)] + ["out"]
    )
    ys = _positions(sizes)
    xs = np.arange(count, dtype=float)
    edges = [np.asarray(e, dtype=np.float64) for e in edge_lca]
    nodes = [np.asarray(v, dtype=np.float64).ravel() for v in neuron_lca]
    emax = max((float(np.abs(e).max()) for e in edges if e.size), default=0.0) or 1.0
    nmax = max((float(np.abs(v).max()) for v in nodes if v.size), default=0.0) or 1.0
    # Circle sizes in pixels follow the room one node row gets, so neighbours never overlap.
    span = max(sizes)
    per_row = (height - 150) / (span + 1.6)
    big = float(np.clip(0.85 * per_row, 16.0, MAX_NODE))
    small = max(8.0, MIN_NODE * big / MAX_NODE)

    fig = go.Figure()
    # Edges: grouped into a few traces by colour and width bucket (one trace per edge is slow).
    buckets: dict[tuple[str, float], tuple[list, list]] = {}
    hover_x, hover_y, hover_text, hover_color = [], [], [], []
    for l, e in enumerate(edges):
        for j in range(e.shape[0]):
            for i in range(e.shape[1]):
                v = float(e[j, i])
                color = HELPED if v < 0 else HURT if v > 0 else STILL
                width = round(0.6 + (MAX_EDGE_WIDTH - 0.6) * abs(v) / emax, 0) or 0.6
                bx, by = buckets.setdefault((color, width), ([], []))
                x0, x1, y0, y1 = xs[l], xs[l + 1], ys[l][i], ys[l + 1][j]
                bx += [x0, x1, None]
                by += [y0, y1, None]
                # Hover point 70% of the way along: distinct for i→j and j→i.
                hover_x.append(x0 + 0.7 * (x1 - x0))
                hover_y.append(y0 + 0.7 * (y1 - y0))
                src = input_names[i] if l == 0 and i < len(input_names) else f"{i + 1}"
                w = "" if weights is None else f"<br>weight now {float(weights[l][j, i]):+.3f}"
                hover_text.append(
                    f"edge {names[l]}: from {'' if l == 0 else 'neuron '}{src} "
                    f"to neuron {j + 1}<br>LCA {v:+.3e} ({_sign_word(v)}){w}"
                )
                hover_color.append(color)
    order = {HELPED: 0, HURT: 1, STILL: 2}
    for (color, width), (bx, by) in sorted(
        buckets.items(), key=lambda kv: (kv[0][1], order[kv[0][0]])
    ):
        fig.add_trace(
            go.Scatter(
                x=bx,
                y=by,
                mode="lines",
                hoverinfo="skip",
                showlegend=False,
                line={"color": color, "width": width},
                opacity=0.85,
                legendgroup=color,
                meta={"kind": "edge", "color": color},
            )
        )
    fig.add_trace(
        go.Scatter(
            x=hover_x,
            y=hover_y,
            mode="markers",
            showlegend=False,
            marker={"size": 9, "color": hover_color, "opacity": 0.0},
            hovertext=hover_text,
            hoverinfo="text",
            meta={"kind": "edge-hover"},
        )
    )
    # Neurons.
    fig.add_trace(
        go.Scatter(
            x=np.zeros(sizes[0]),
            y=ys[0],
            mode="markers+text",
            marker={
                "size": min(30.0, big),
                "color": "#d9d9d9",
                "line": {"color": "#555555", "width": 1.5},
            },
            text=list(input_names[: sizes[0]]),
            textposition="middle left",
            textfont={"size": 16},
            hovertext=[f"input {n}" for n in input_names[: sizes[0]]],
            hoverinfo="text",
            showlegend=False,
            meta={"kind": "input"},
        )
    )
    for l, v in enumerate(nodes):
        colors = [HELPED if a < 0 else HURT if a > 0 else STILL for a in v]
        size = small + (big - small) * np.abs(v) / nmax
        last = l == len(nodes) - 1
        labels = [
            f"{'output ' + output_names[j] if last and j < len(output_names) else 'neuron'}"
            f" {j + 1} of {names[l]}<br>LCA {a:+.3e} ({_sign_word(a)})<br>"
            "(incoming weights + bias)"
            for j, a in enumerate(v)
        ]
        fig.add_trace(
            go.Scatter(
                x=np.full(len(v), xs[l + 1]),
                y=ys[l + 1],
                mode="markers+text" if last else "markers",
                marker={"size": size, "color": colors, "line": {"color": "#333333", "width": 1.5}},
                text=list(output_names[: len(v)]) if last else None,
                textposition="middle right",
                textfont={"size": 16},
                hovertext=labels,
                hoverinfo="text",
                showlegend=False,
                meta={"kind": "neuron", "layer": names[l]},
            )
        )
    # Legend entries (dummy traces) and layer titles.
    for color, label in ((HELPED, "helped (lowered the loss)"), (HURT, "hurt (raised the loss)")):
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="lines+markers",
                name=label,
                line={"color": color, "width": 5},
                marker={"color": color, "size": 14},
                meta={"kind": "legend"},
            )
        )
    top = max(float(y.max()) for y in ys if len(y)) + 0.9
    for i in range(count):
        fig.add_annotation(
            x=xs[i],
            y=top,
            text=_layer_title(i, count, names),
            showarrow=False,
            font={"size": 14},
            yanchor="bottom",
        )
    base_layout(fig, title, height=height)
    bottom = min(float(y.min()) for y in ys if len(y))
    fig.update_xaxes(visible=False, range=[-0.7, count - 0.1])
    fig.update_yaxes(visible=False, range=[bottom - 0.7, top + 0.9])
    fig.update_layout(hovermode="closest", plot_bgcolor="white")
    return fig


def neuron_outputs_figure(
    xs: np.ndarray,
    ys: np.ndarray,
    outputs: Sequence[np.ndarray],
    neuron_lca: Sequence[np.ndarray] | None = None,
    *,
    layer_names: Sequence[str] | None = None,
    title: str = "What each hidden neuron computes over the plane",
    height: int | None = None,
) -> go.Figure:
    """Small multiples: one column per hidden layer, one heatmap per neuron (blue negative,
    orange positive). A title in green or red says whether the neuron helped or hurt."""
    outs = [np.asarray(o, dtype=np.float64) for o in outputs]
    if not outs or not any(o.shape[0] for o in outs):
        return empty_figure(
            "This network has no hidden layer:<br>it can only draw a straight boundary.<br>"
            "Add one (e.g. 4,4) to see what neurons compute."
        )
    names = (
        list(layer_names) if layer_names is not None else [f"fc{i + 1}" for i in range(len(outs))]
    )
    rows = max(o.shape[0] for o in outs)
    cols = len(outs)
    titles = []
    for r in range(rows):
        for c in range(cols):
            if r < outs[c].shape[0]:
                lca = "" if neuron_lca is None else f": {float(neuron_lca[c][r]):+.1e}"
                titles.append(f"{names[c]} #{r + 1}{lca}")
            else:
                titles.append("")
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=titles,
        horizontal_spacing=0.04,
        vertical_spacing=min(0.08, 0.5 / rows),
    )
    for c, o in enumerate(outs):
        for r in range(o.shape[0]):
            z = o[r]
            m = float(np.abs(z).max()) or 1.0
            fig.add_trace(
                go.Heatmap(
                    x=xs,
                    y=ys,
                    z=z,
                    zmin=-m,
                    zmax=m,
                    zmid=0,
                    colorscale=CLASS_SCALE,
                    showscale=False,
                    hovertemplate=f"{names[c]} neuron {r + 1}<br>x₁ %{{x:.2f}}, x₂ %{{y:.2f}}"
                    "<br>output %{z:.2f}<extra></extra>",
                ),
                row=r + 1,
                col=c + 1,
            )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    # Colour each subplot title by its neuron's LCA sign (the only green/red in this figure).
    if neuron_lca is not None:
        k = 0
        flat = []
        for r in range(rows):
            for c in range(cols):
                if r < outs[c].shape[0]:
                    flat.append(float(neuron_lca[c][r]))
        for ann in fig.layout.annotations:
            if ann.text and k < len(flat):
                ann.font = {
                    "size": 13,
                    "color": HELPED if flat[k] < 0 else HURT if flat[k] > 0 else STILL,
                }
                k += 1
    base_layout(fig, title, height=height or max(260, 150 * rows + 60))
    for ax in fig.layout:
        if ax.startswith("yaxis"):
            fig.layout[ax].scaleanchor = ax.replace("yaxis", "x")
    fig.update_layout(showlegend=False)
    return fig


def playground_loss_figure(
    steps: Sequence[int],
    train_loss: Sequence[float],
    test_loss: Sequence[float] | None = None,
    *,
    title: str = "Loss over training (lower is better)",
    height: int = 300,
) -> go.Figure:
    """Training and test loss against the step; long sessions draw with WebGL."""
    steps = np.asarray(steps)
    if len(steps) < 2:
        return empty_figure(
            "Press Play or Step:<br>the loss curve starts<br>after the first step.", height=height
        )
    line = go.Scattergl if len(steps) > 2000 else go.Scatter
    fig = go.Figure(
        line(
            x=steps,
            y=np.asarray(train_loss),
            mode="lines",
            name="training loss",
            line={"color": TRAIN_COLOR, "width": 2.5},
        )
    )
    if test_loss is not None:
        fig.add_trace(
            line(
                x=steps,
                y=np.asarray(test_loss),
                mode="lines",
                name="test loss",
                line={"color": TEST_COLOR, "width": 2.5, "dash": "dash"},
            )
        )
    base_layout(fig, title, height=height)
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="loss (cross-entropy)", rangemode="tozero")
    return fig


def accuracy_curves_figure(
    steps: Sequence[int],
    train_acc: Sequence[float],
    test_acc: Sequence[float] | None = None,
    *,
    title: str = "Accuracy over training (higher is better)",
    height: int = 300,
) -> go.Figure:
    steps = np.asarray(steps)
    if len(steps) < 2:
        return empty_figure(
            "Press Play or Step:<br>the accuracy curve starts<br>after the first step.",
            height=height,
        )
    line = go.Scattergl if len(steps) > 2000 else go.Scatter
    fig = go.Figure(
        line(
            x=steps,
            y=100 * np.asarray(train_acc),
            mode="lines",
            name="training accuracy",
            line={"color": TRAIN_COLOR, "width": 2.5},
        )
    )
    if test_acc is not None:
        fig.add_trace(
            line(
                x=steps,
                y=100 * np.asarray(test_acc),
                mode="lines",
                name="test accuracy",
                line={"color": TEST_COLOR, "width": 2.5, "dash": "dash"},
            )
        )
    base_layout(fig, title, height=height)
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="accuracy (%)", range=[0, 101])
    return fig


def layer_lca_bars_figure(
    layer_names: Sequence[str],
    values: Sequence[float],
    *,
    title: str = "How much each layer lowered the loss",
    height: int = 300,
) -> go.Figure:
    """One bar per layer: its total LCA (negative = helped, green; positive = hurt, red)."""
    v = np.asarray(values, dtype=np.float64)
    if not len(v) or not np.any(v):
        return empty_figure("Nothing learned yet:<br>press Play or Step.", height=height)
    fig = go.Figure(
        go.Bar(
            x=list(layer_names),
            y=v,
            marker={"color": [HELPED if a < 0 else HURT if a > 0 else STILL for a in v]},
            hovertemplate="%{x}<br>LCA %{y:+.3e}<extra></extra>",
        )
    )
    base_layout(fig, title, height=height)
    fig.update_xaxes(title="layer")
    fig.update_yaxes(title="LCA (loss change)", zeroline=True, zerolinecolor="#555555")
    return fig
