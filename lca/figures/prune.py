"""What pruning cost and what it removed, as figures: pure functions of ``lca.views`` data.

The loss cost of each prune event (split into the removed weights, the pruned layers' other
parameters, and the rest), the same split layer by layer for one event, and whether pruning
removed weights that had helped. Red raised the loss, green lowered it, as everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go

from .common import (
    HELPED,
    HURT,
    NOT_HELPED,
    STILL,
    base_layout,
    empty_figure,
)

if TYPE_CHECKING:
    from lca.views import PruneEvent, PruneSplit

__all__ = [
    "helper_removal_figure",
    "helper_share_figure",
    "prune_events_figure",
    "prune_split_figure",
]


MAX_POINTS = 3000  # jittered points drawn per group in the helper-removal figure
_PATTERNS = {"removed": "", "compensated": "/", "rest": "."}
_PART_LABELS = {
    "removed": "removed weights",
    "compensated": "surviving weights of the pruned layers (compensation, bias)",
    "rest": "everything else",
}


def prune_split_figure(
    split: PruneSplit, *, title: str | None = None, height: int = 380
) -> go.Figure:
    """The cost of one prune event per layer: a bar per part (removed / survivors / rest),
    coloured by sign (red = raised the loss, green = lowered it), patterned by part."""
    if not split.layers:
        return empty_figure("This run has no layers to show.")
    fig = go.Figure()
    parts = [("removed", split.removed), ("compensated", split.compensated), ("rest", split.rest)]
    if split.source == "layers":
        parts = [("rest", split.total)]
    for part, values in parts:
        v = np.asarray(values, dtype=np.float64)
        label = (
            "LCA of the layer (no per-weight split)"
            if split.source == "layers"
            else _PART_LABELS[part]
        )
        fig.add_trace(
            go.Bar(
                x=split.layers,
                y=v,
                name=label,
                marker={
                    "color": [HELPED if a < 0 else HURT if a > 0 else STILL for a in v],
                    "pattern": {
                        "shape": _PATTERNS[part] if split.source != "layers" else "",
                        "fgcolor": "white",
                        "solidity": 0.35,
                    },
                    "line": {"color": "#333333", "width": 1},
                },
                hovertemplate=f"%{{x}}<br>{label}<br>LCA %{{y:+.3e}}<extra></extra>",
            )
        )
    base_layout(fig, title or "What the prune event cost, layer by layer", height=height)
    # Stacked by sign: the parts of one layer sit in one column and add up to its cost.
    fig.update_layout(barmode="relative")
    fig.update_xaxes(title="layer")
    fig.update_yaxes(title="LCA of the event (loss change)", zeroline=True, zerolinecolor="#555555")
    return fig


def prune_events_figure(events: Sequence[PruneEvent], *, height: int = 340) -> go.Figure:
    """Every prune event's loss cost (ΣA of its segment), split into removed / compensating /
    rest when the technique recorded it; red bars raised the loss, green lowered it."""
    if not events:
        return empty_figure("No prune event has happened yet in this run.", height=height)
    x = [f"{e.technique}<br>step {e.step}" for e in events]
    split = all(math.isfinite(e.cost_removed) for e in events)
    fig = go.Figure()
    if split:
        for part, attr in (
            ("removed", "cost_removed"),
            ("compensated", "cost_compensated"),
            ("rest", "cost_rest"),
        ):
            v = np.array([getattr(e, attr) for e in events], dtype=np.float64)
            v = np.nan_to_num(v)
            fig.add_trace(
                go.Bar(
                    x=x,
                    y=v,
                    name=_PART_LABELS[part],
                    marker={
                        "color": [HELPED if a < 0 else HURT if a > 0 else STILL for a in v],
                        "pattern": {"shape": _PATTERNS[part], "fgcolor": "white", "solidity": 0.35},
                        "line": {"color": "#333333", "width": 1},
                    },
                    hovertemplate=(
                        f"%{{x}}<br>{_PART_LABELS[part]}<br>LCA %{{y:+.3e}}<extra></extra>"
                    ),
                )
            )
        fig.update_layout(barmode="relative")  # one column per event: its parts add up
    else:
        v = np.array([e.cost for e in events], dtype=np.float64)
        fig.add_trace(
            go.Bar(
                x=x,
                y=v,
                name="loss cost of the event",
                marker={"color": [HELPED if a < 0 else HURT for a in v]},
                hovertemplate="%{x}<br>LCA %{y:+.3e}<extra></extra>",
            )
        )
    base_layout(fig, "The loss cost of each prune event", height=height)
    fig.update_yaxes(title="LCA of the event (loss change)", zeroline=True, zerolinecolor="#555555")
    return fig


def helper_share_figure(
    groups: Sequence[str],
    helped: Sequence[float],
    *,
    hurt: Sequence[float] | None = None,
    counts: Sequence[int] | None = None,
    title: str = "Did pruning remove helpers? Share of weights that had helped so far",
    height: int = 260,
) -> go.Figure:
    """One 100% bar per group: green = share whose cumulative LCA was < 0 (helpers), red = > 0
    (hurters), grey = exactly 0 (never moved). Without ``hurt`` (a technique's event table
    counts only helpers) the rest is one pale bar, "did not help", never red: red means hurt."""
    h = np.clip(np.asarray(helped, dtype=np.float64), 0, 1)
    if not len(h) or not np.all(np.isfinite(h)):
        return empty_figure("No helper statistics recorded for this pruning.", height=height)
    names = list(groups)
    suffix = [f" ({int(c):,})" for c in counts] if counts is not None else [""] * len(names)
    y = [f"{n}{s}" for n, s in zip(names, suffix, strict=True)]
    parts = [("had helped (cumulative LCA < 0)", h, HELPED)]
    if hurt is not None:
        u = np.clip(np.nan_to_num(np.asarray(hurt, dtype=np.float64)), 0, 1 - h)
        parts += [("had hurt (> 0)", u, HURT), ("never moved (= 0)", 1 - h - u, STILL)]
    else:
        parts.append(("did not help (hurt or never moved)", 1 - h, NOT_HELPED))
    fig = go.Figure(
        [
            go.Bar(
                y=y,
                x=100 * v,
                orientation="h",
                name=label,
                marker={"color": color},
                text=[f"{100 * a:.0f}%" if a >= 0.04 else "" for a in v],
                textposition="inside",
                hovertemplate=f"%{{y}}<br>{label}: %{{x:.1f}}%<extra></extra>",
            )
            for label, v, color in parts
        ]
    )
    base_layout(fig, title, height=height)
    fig.update_layout(barmode="stack")
    fig.update_xaxes(title="share of the weights (%)", range=[0, 100])
    fig.update_yaxes(autorange="reversed")
    return fig


def helper_removal_figure(
    removed: np.ndarray,
    survivors: np.ndarray,
    *,
    title: str = "Cumulative LCA of the pruned weights (before pruning) and of the survivors",
    height: int = 400,
    seed: int = 0,
) -> go.Figure:
    """Box plots of each weight's cumulative LCA: pruned (up to its prune event) vs survivors
    (up to the last event), with the weights as dots, green if they had helped, red if hurt."""
    groups = [
        ("pruned weights", np.asarray(removed, dtype=np.float64).ravel()),
        ("survivors", np.asarray(survivors, dtype=np.float64).ravel()),
    ]
    if not any(len(v) for _, v in groups):
        return empty_figure("No weight was pruned yet.", height=height)
    rng = np.random.default_rng(seed)
    fig = go.Figure()
    for i, (label, v) in enumerate(groups):
        if not len(v):
            continue
        boxed = v if len(v) <= 50_000 else rng.choice(v, 50_000, replace=False)
        fig.add_trace(
            go.Box(
                y=boxed,
                x0=i,
                name=label,
                boxpoints=False,
                line={"color": "#333333"},
                fillcolor="rgba(0,0,0,0.04)",
                showlegend=False,
                hoverinfo="y",
            )
        )
        shown = v if len(v) <= MAX_POINTS else rng.choice(v, MAX_POINTS, replace=False)
        jitter = rng.uniform(-0.3, 0.3, len(shown))
        fig.add_trace(
            go.Scatter(
                x=i + jitter,
                y=shown,
                mode="markers",
                showlegend=False,
                marker={
                    "color": [HELPED if a < 0 else HURT if a > 0 else STILL for a in shown],
                    "size": 5,
                    "opacity": 0.55,
                },
                hovertemplate=f"{label}<br>cumulative LCA %{{y:+.3e}}<extra></extra>",
            )
        )
    for color, text in ((HELPED, "had helped (< 0)"), (HURT, "had hurt (> 0)")):
        fig.add_trace(
            go.Scatter(
                x=[None], y=[None], mode="markers", name=text, marker={"color": color, "size": 11}
            )
        )
    base_layout(fig, title, height=height)
    fig.update_xaxes(
        tickvals=[0, 1], ticktext=[g for g, _ in groups], range=[-0.6, 1.6], type="linear"
    )
    # Cumulative LCA is heavy-tailed: zoom on the middle 98% so the bulk is visible.
    both = np.concatenate([v for _, v in groups if len(v)])
    lo, hi = np.percentile(both, [1, 99]) if len(both) > 20 else (both.min(), both.max())
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    pad = 0.08 * (hi - lo) or 1e-6
    fig.update_yaxes(range=[lo - pad, hi + pad])
    fig.update_yaxes(title="cumulative LCA (loss change)", zeroline=True, zerolinecolor="#555555")
    return fig
