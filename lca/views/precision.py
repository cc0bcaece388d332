"""What the low-precision techniques record beyond series: the ``fixed-point`` technique's bits
per tensor and class (``/techniques/<name>/bits_<class>``), for the Techniques page."""

from __future__ import annotations

import numpy as np

from ..store import Reader

__all__ = ["precision_view"]


def precision_view(r: Reader) -> dict[str, dict[str, np.ndarray]]:
    """technique -> class -> bits per tensor (NaN where the tensor has none), or {}."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for path in r.array_layout:
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "techniques" and parts[2].startswith("bits_"):
            out.setdefault(parts[1], {})[parts[2][len("bits_") :]] = np.asarray(
                r.array(path), dtype=np.float64
            )
    return out
