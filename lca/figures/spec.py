"""Figures written as the plain data plotly.js draws, wrapped without plotly's validation.

Building a figure through plotly's object model (``go.Figure().add_trace(...)``,
``update_layout``, ``make_subplots``) checks every property against its schema on every
assignment: 15-70 ms a figure, most of a page's first render on a big run
(``benchmarks/app.py``), against ~3 ms for the same figure given as data. The figures of the
Neurons & weights page are written this way; ``figure`` wraps the data in a ``go.Figure`` that
reads like any other (``fig.data[0].z``, ``fig.layout.title.text``), and the tests validate
each one once through plotly (``validated``), so a misspelt property still fails a test.

``titled_layout`` gives exactly the layout ``lca.figures.axes.titled_layout`` sets (a test
compares the two), so these figures look like every other.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import plotly.graph_objects as go

from .common import _WHITE, TITLE_LINE_PX, wrap_title

__all__ = ["figure", "subplot_axes", "titled_layout", "validated"]


def figure(data: list[dict[str, Any]], layout: dict[str, Any]) -> go.Figure:
    """A ``go.Figure`` of ``data`` (trace dicts with their ``type``) and ``layout``, wrapped
    without validating them (the caller writes plotly's JSON; tests check it with
    ``validated``). The plotly_white template is added, as ``base_layout`` does."""
    return go.Figure(
        {"data": data, "layout": {"template": copy.deepcopy(_WHITE), **layout}}, _validate=False
    )


def validated(fig: go.Figure) -> go.Figure:
    """``fig`` rebuilt through plotly's validation: raises ValueError on any property plotly.js
    does not know (for tests)."""
    return go.Figure(fig.to_plotly_json(), skip_invalid=False)


def titled_layout(title: str | None, *, height: int = 380, legend: bool = False) -> dict:
    """What ``axes.titled_layout`` (``base_layout`` and its title block) sets on a figure, as
    data. ``legend``: whether the figure shows a legend (more than one named trace, or the
    layout's ``showlegend`` set), which leaves a line for it under the title."""
    layout: dict[str, Any] = {
        "height": height,
        "margin": {"l": 60, "r": 20, "t": 40, "b": 50},
        "font": {"size": 14},
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.01, "x": 0},
    }
    if not title:
        layout["title"] = {}  # as base_layout's title=None leaves it: no title
        return layout
    text, lines = wrap_title(title)
    top = (95 if legend else 60) + TITLE_LINE_PX * (lines - 1)
    layout["title"] = {
        "text": text,
        "y": 1 - 12 / (height + top - 50),
        "yref": "container",
        "yanchor": "top",
        "pad": {"t": 14},
        "x": 0.01,
        "xanchor": "left",
        "font": {"size": 18},
    }
    layout["margin"]["t"] = top
    layout["height"] = height + top - 50
    return layout


@functools.cache
def _grid(rows: int, row_heights: tuple[float, ...], spacing: float) -> dict:
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=rows,
        cols=1,
        shared_xaxes=True,
        row_heights=list(row_heights) if rows > 1 else None,
        vertical_spacing=spacing,
    )
    layout = fig.to_plotly_json()["layout"]
    return {k: v for k, v in layout.items() if k.startswith(("xaxis", "yaxis"))}


def subplot_axes(
    rows: int, row_heights: tuple[float, ...] = (), spacing: float = 0.06
) -> dict[str, dict]:
    """The axes ``make_subplots(rows, 1, shared_xaxes=True, ...)`` lays out (domains, anchors,
    shared x), worked out by plotly once per shape; a fresh copy to add titles to."""
    return copy.deepcopy(_grid(rows, tuple(row_heights), spacing))
