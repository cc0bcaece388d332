"""Text from a run file shown literally in Plotly figures.

Plotly renders a subset of HTML in titles, tick labels, legend names, hover and annotation
text (``<a href>`` makes a clickable link, ``<b>``, ``<span style>``, ``<br>``...). Layer names,
statuses and config strings come from run files anyone may upload, so before a figure is drawn
every string in it has ``&``, ``<`` and ``>`` escaped (Plotly shows ``&lt;`` as ``<``). The only
markup the figure modules write on purpose, ``<br>`` (a line break) and ``<extra>`` (the hover
box's side label), is put back; so a name containing ``<br>`` breaks the line, and nothing else
in a name is ever markup.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go

__all__ = ["literal_figure", "literal_spec", "plain"]

# Keys whose string values Plotly displays (or matches against displayed categories).
_TEXT_KEYS = frozenset(
    {
        "text",
        "hovertext",
        "name",
        "ticktext",
        "tickvals",
        "hovertemplate",
        "texttemplate",
        "x",
        "y",
        "labels",
        "customdata",
        "categoryarray",
        "title",
        "legendgrouptitle",
    }
)
_KEPT = {"&lt;br&gt;": "<br>", "&lt;extra&gt;": "<extra>", "&lt;/extra&gt;": "</extra>"}


def plain(text: Any) -> str:
    """``text`` as Plotly shows it literally: ``&``, ``<`` and ``>`` escaped."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _restore(text: str) -> str:
    for escaped, tag in _KEPT.items():
        text = text.replace(escaped, tag)
    return text


def _escape(value: Any) -> Any:
    if isinstance(value, str):
        return _restore(plain(value))
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "USO":
            flat = [_escape(v) for v in value.ravel().tolist()]
            return np.array(flat, dtype=object).reshape(value.shape)
        return value
    if isinstance(value, list | tuple):
        return [_escape(v) for v in value]
    if isinstance(value, dict):
        return {k: _escape(v) for k, v in value.items()}
    return value


def _walk(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: (_escape(v) if k in _TEXT_KEYS else _walk(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_walk(v) for v in node]
    return node


def literal_spec(fig: go.Figure) -> dict:
    """``fig`` as the plain JSON data the browser draws (``fig.to_plotly_json()``), with every
    string shown literally (see the module docstring).

    What a page sends: no second figure is built from it, because plotly would validate every
    property again, which costs as much as building the figure (``benchmarks/app.py``).
    Numeric arrays are passed through untouched (no copy).
    """
    return _walk(fig.to_plotly_json())


def literal_figure(fig: go.Figure) -> go.Figure:
    """A copy of ``fig`` whose strings Plotly shows literally (see the module docstring).

    Numeric arrays are passed through untouched (no copy), so a large heatmap costs nothing.
    """
    return go.Figure(literal_spec(fig), skip_invalid=False)
