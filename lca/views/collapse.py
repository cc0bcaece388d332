"""The neural-collapse table of a run, with its classifier's LCA, for the Layers page."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lca.collapse import COLLAPSE_COLUMNS, COLLAPSE_TABLE
from lca.segments import step_positions
from lca.store import Reader

__all__ = ["CollapseView", "collapse_view"]


@dataclass
class CollapseView:
    """NC1–NC4 at each evaluation step, and the classifier's running LCA on every step.

    ``classifier`` is the last layer (the prefix of the model's last parameter tensor, which is
    the classifier for every built-in model); ``tensors`` its tensors; ``lca_cumulative`` their
    summed LCA from step 1, at ``positions`` on the step axis. ``measures`` is empty for a run
    recorded before the collapse table existed (or a model without a final linear layer).
    """

    steps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    measures: dict[str, np.ndarray] = field(default_factory=dict)
    classifier: str = ""
    tensors: list[str] = field(default_factory=list)
    positions: np.ndarray = field(default_factory=lambda: np.zeros(0))
    lca_cumulative: np.ndarray = field(default_factory=lambda: np.zeros(0))


def collapse_view(r: Reader) -> CollapseView:
    """What the Layers page's neural-collapse section draws (works while the run is going)."""
    view = CollapseView()
    if COLLAPSE_TABLE in r.event_layout:
        table = r.events(COLLAPSE_TABLE)
        view.steps = np.asarray(table["train_step"])
        view.measures = {c: np.asarray(table[c]) for c in COLLAPSE_COLUMNS[1:]}
    names = list(r.names)
    if names:
        view.classifier = names[-1].rpartition(".")[0]
        view.tensors = [n for n in names if n.rpartition(".")[0] == view.classifier]
        t = r.num_steps
        if t:
            cols = [names.index(n) for n in view.tensors]
            layer = np.asarray(r.layer_lca(0, t), dtype=np.float64)[:, cols].sum(axis=1)
            view.lca_cumulative = np.cumsum(layer)
            view.positions = step_positions(np.asarray(r.steps("kind", 0, t)))
    return view
