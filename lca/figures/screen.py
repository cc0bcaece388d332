"""A figure's numbers at the precision a screen shows, so a browser gets half the bytes.

Plotly sends numpy arrays as typed arrays in their own dtype: float64 costs 8 bytes a value
(10.7 in base64) for digits no chart, colour scale or 4-significant-digit hover label can show.
Every page's chart goes through ``screen_spec`` on its way out (``pages.shared.prepare``), so
the big heatmaps and long curves of a class's pages cost half as much to send, parse and draw.
The stored data and every computation stay float64; only the drawing is rounded.

An array is kept as it is when float32 would change what is drawn: values beyond float32's
range (they would become infinite) or so small they would fall out of its normal range (shown
as 0). Integers are left alone (plotly already sends them in the smallest integer type).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

__all__ = ["screen_array", "screen_spec"]

_F32 = np.finfo(np.float32)


def screen_array(a: np.ndarray) -> np.ndarray:
    """``a`` as float32 when it is float64 and float32 draws the same, else ``a`` itself."""
    if a.dtype != np.float64 or a.size == 0:
        return a
    magnitude = np.abs(a[np.isfinite(a)])
    nonzero = magnitude[magnitude > 0]
    if nonzero.size and (nonzero.max() > _F32.max or nonzero.min() < _F32.smallest_normal):
        return a
    return a.astype(np.float32)


def _typed(node: dict) -> dict:
    """A typed array plotly already encoded (``{"dtype": "f8", "bdata": base64, "shape"}``,
    what a validated figure holds) at screen precision."""
    a = screen_array(np.frombuffer(base64.b64decode(node["bdata"]), dtype=np.float64))
    if a.dtype == np.float64:
        return node
    return {**node, "dtype": "f4", "bdata": base64.b64encode(a.tobytes()).decode("ascii")}


def screen_spec(node: Any) -> Any:
    """A copy of a figure's JSON data (``fig.to_plotly_json()``) with its float64 arrays
    (numpy arrays, or typed arrays plotly already encoded) made float32 where that draws the
    same (``screen_array``); lists, strings and numbers as they are. The input is not modified
    (figures are shared between sessions)."""
    if isinstance(node, np.ndarray):
        return screen_array(node)
    if isinstance(node, dict) and node.get("dtype") == "f8" and isinstance(node.get("bdata"), str):
        return _typed(node)
    if isinstance(node, dict):
        return {k: screen_spec(v) for k, v in node.items()}
    if isinstance(node, list):
        return [screen_spec(v) for v in node]
    return node
