"""Figure of the Compare page for Stanza and data-parallel runs: bytes exchanged per step. Pure.

One line per run: the bytes all its ranks sent on each optimizer step (measured, docs/FORMAT.md
"Stanza and data parallel"), labelled with the run's mode, K and τ. Runs are told apart by the
neutral series colours: green and red keep meaning helped and hurt.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from .axes import curve, thin, titled_layout
from .common import empty_figure, series_color

__all__ = ["parallel_bytes"]


def parallel_bytes(
    runs: Sequence[tuple[str, np.ndarray]],
    *,
    title: str = "Bytes sent per step, all ranks together",
    height: int = 380,
) -> go.Figure:
    """``runs`` = [(label, bytes sent on each step summed over ranks (NaN: not completed))]."""
    fig = go.Figure()
    for j, (label, sent) in enumerate(runs):
        y = np.asarray(sent, dtype=np.float64)
        steps = np.flatnonzero(np.isfinite(y))
        if not len(steps):
            continue
        idx = thin(len(steps))
        fig.add_trace(
            curve(
                x=steps[idx] + 1,
                y=y[steps][idx],
                mode="lines+markers" if len(steps) <= 50 else "lines",
                name=label,
                line={"color": series_color(j), "width": 2.5},
                marker={"color": series_color(j)},
                hovertemplate=f"{label}<br>step %{{x}}: %{{y:,.0f}} bytes<extra></extra>",
            )
        )
    if not fig.data:
        return empty_figure("None of these runs recorded the bytes of a completed step.")
    fig.update_layout(showlegend=True)  # the legend names the mode, K and τ, even for one run
    titled_layout(fig, title, height=height)
    fig.update_xaxes(title="optimizer step")
    fig.update_yaxes(title="bytes sent (all ranks)", rangemode="tozero")
    return fig
