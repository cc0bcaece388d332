"""Where a run's recorded segments sit on the step axis, and which layer a tensor belongs to.

Pure numpy, shared by the reading layer (``lca.views``) and the figures (``lca.figures``), so
both number steps and group tensors the same way. A run file holds one row (segment) per
optimizer step, plus one per intervention (kind 1, e.g. a prune event) between two steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["intervals", "module_of", "modules", "step_axis", "step_positions"]


def step_positions(kind: np.ndarray) -> np.ndarray:
    """Where each recorded segment sits on a training-step axis.

    Optimizer steps are numbered 1, 2, …; an intervention (kind 1, e.g. a prune event) made
    after k steps sits at k + 0.5, between the steps around it. Row numbers would run ahead of
    the optimizer by one per intervention; these stay the optimizer's own step numbers.
    """
    k = np.asarray(kind)
    return np.cumsum(k == 0).astype(np.float64) + np.where(k == 1, 0.5, 0.0)


def step_axis(kind: np.ndarray | None, t: int) -> np.ndarray:
    """``step_positions`` of the first ``t`` rows, or 1..t where the kinds are not known."""
    if kind is None or len(kind) < t:
        return np.arange(1, t + 1, dtype=np.float64)
    return step_positions(np.asarray(kind)[:t])


def intervals(mask: np.ndarray) -> list[tuple[int, int]]:
    """Runs of True in a per-segment mask as half-open (start, stop) segment ranges."""
    m = np.asarray(mask, dtype=bool).ravel()
    if not m.any():
        return []
    d = np.diff(np.concatenate([[0], m.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    return [(int(a), int(b)) for a, b in zip(starts, stops, strict=True)]


def module_of(tensor: str) -> str:
    """``fc1.weight`` -> ``fc1``: the layer (module) a parameter tensor belongs to."""
    return tensor.rsplit(".", 1)[0] if "." in tensor else tensor


def modules(names: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The modules of ``names`` in first-seen order, and each tensor's index into them."""
    mods: list[str] = []
    index = []
    for n in names:
        m = module_of(n)
        if m not in mods:
            mods.append(m)
        index.append(mods.index(m))
    return mods, np.asarray(index, dtype=int)
