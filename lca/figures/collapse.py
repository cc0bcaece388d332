"""Neural collapse beside the classifier's LCA: does the last layer still learn once collapsed?"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .axes import thin
from .common import HELPED, HURT, base_layout, empty_figure, series_color

__all__ = ["COLLAPSE_LABELS", "collapse_figure"]

# Column of the run file's collapse table -> what the legend calls it.
COLLAPSE_LABELS = {
    "nc1": "NC1 within-class spread",
    "nc2_equinorm": "NC2 unequal norms",
    "nc2_equiangle": "NC2 unequal angles",
    "nc2_max_angle": "NC2 off the simplex angle",
    "nc3": "NC3 classifier ≠ means",
    "nc4": "NC4 ≠ nearest class mean",
}
FLOOR = 1e-6  # a measure of exactly 0 is drawn here on the log axis (its hover says 0)


def collapse_figure(
    steps: np.ndarray,
    measures: Mapping[str, np.ndarray],
    positions: np.ndarray,
    lca_cumulative: np.ndarray,
    *,
    classifier: str = "last layer",
    height: int = 560,
) -> go.Figure:
    """Top: the classifier's running LCA (green when it has lowered the loss overall, red when
    raised). Bottom: the neural-collapse measures at each evaluation on a log axis; each is 0
    at full collapse, so falling lines = collapsing."""
    steps = np.asarray(steps, dtype=np.float64)
    if len(steps) == 0 and len(lca_cumulative) == 0:
        return empty_figure("No evaluation has recorded neural-collapse measures yet.")
    fig = make_subplots(
        rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.4, 0.6]
    )
    c = np.asarray(lca_cumulative, dtype=np.float64)
    if len(c):
        idx = thin(len(c), 2000)
        color = HELPED if c[-1] < 0 else HURT
        fig.add_trace(
            go.Scatter(
                x=np.asarray(positions)[idx],
                y=c[idx],
                mode="lines",
                name=f"{classifier} LCA",
                line={"color": color, "width": 2},
                hovertemplate="after step %{x}: %{y:.4e}<extra>cumulative LCA</extra>",
            ),
            row=1,
            col=1,
        )
        fig.add_hline(y=0, line={"color": "black", "width": 1}, row=1, col=1)
    for j, (col, label) in enumerate(COLLAPSE_LABELS.items()):
        if col not in measures:
            continue
        v = np.asarray(measures[col], dtype=np.float64)
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=np.maximum(v, FLOOR),
                customdata=v,
                # Markers show where each measurement is while there are few; on a long run
                # they would be thousands of SVG nodes for a line that shows the same.
                mode="lines+markers" if len(steps) <= 200 else "lines",
                name=label,
                line={"color": series_color(j), "width": 2},
                hovertemplate=f"{label}<br>step %{{x}}: %{{customdata:.3e}}<extra></extra>",
            ),
            row=2,
            col=1,
        )
    base_layout(
        fig, f"Neural collapse of {classifier}'s input features, beside its LCA", height=height
    )
    fig.update_layout(
        legend={"orientation": "v", "y": 1, "x": 1.02, "yanchor": "top"}, margin={"r": 230}
    )
    fig.update_yaxes(title="cumulative LCA", exponentformat="e", row=1, col=1)
    fig.update_yaxes(title="distance from collapse", type="log", exponentformat="e", row=2, col=1)
    fig.update_xaxes(title="training step", row=2, col=1)
    return fig
