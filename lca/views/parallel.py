"""What a Stanza or data-parallel run exchanged between its processes, read from its run file.

``lca train --stanza K`` and ``--data-parallel K`` (lca/stanza.py) record the bytes every rank
sent and received on every optimizer step, measured, and the run's layout as JSON (docs/FORMAT.md
"Stanza and data parallel"). ``parallel_view`` turns them into what the pages draw: bytes per
step summed over the ranks, the mean per step, and a label such as "Stanza, K=2 conv ranks +
1 FC rank, τ=0". Records that do not have the documented shapes are not drawn; the view then
carries one sentence that says so (``problem``), never an exception.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lca.store import Reader, human_bytes

__all__ = [
    "MODES",
    "ParallelView",
    "parallel_baseline",
    "parallel_rows",
    "parallel_sentence",
    "parallel_view",
]

MODES = ("stanza", "data-parallel")


@dataclass
class ParallelView:
    """A Stanza or data-parallel run's exchange. ``sent``/``received``: (S,) bytes per optimizer
    step summed over the ranks, NaN on a step some rank did not complete (−1 in the file)."""

    name: str
    mode: str = ""
    k: int = 0
    staleness: int = 0
    world: int = 0
    roles: list[str] = field(default_factory=list)
    sent: np.ndarray = field(default_factory=lambda: np.zeros(0))
    received: np.ndarray = field(default_factory=lambda: np.zeros(0))
    problem: str = ""  # one sentence when the records were not usable, else ""

    @property
    def fc_ranks(self) -> int:
        return sum(r == "fc" for r in self.roles) or (1 if self.mode == "stanza" else 0)

    @property
    def label(self) -> str:
        """ "Stanza, K=2 conv ranks + 1 FC rank, τ=0" or "Data parallel, K=2 replicas"."""
        if self.mode == "stanza":
            fc = self.fc_ranks
            return (
                f"Stanza, K={self.k} conv rank{'s' if self.k != 1 else ''} + {fc} FC "
                f"rank{'s' if fc != 1 else ''}, τ={self.staleness}"
            )
        return f"Data parallel, K={self.k} replica{'s' if self.k != 1 else ''}"

    @property
    def short_label(self) -> str:
        """For a legend: "Stanza K=2, τ=0" or "data parallel K=2"."""
        if self.mode == "stanza":
            return f"Stanza K={self.k}, τ={self.staleness}"
        return f"data parallel K={self.k}"

    @property
    def completed_steps(self) -> int:
        return int(np.isfinite(self.sent).sum())

    @property
    def sent_per_step(self) -> float | None:
        """Mean bytes sent per completed step, summed over the ranks (None: no step recorded)."""
        done = self.sent[np.isfinite(self.sent)]
        return float(done.mean()) if len(done) else None

    @property
    def received_per_step(self) -> float | None:
        done = self.received[np.isfinite(self.received)]
        return float(done.mean()) if len(done) else None


def _int(value: Any, default: int = 0) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return int(value)
    return default


def _per_step(counts: np.ndarray) -> np.ndarray:
    """(S, W) counts -> (S,) sums over the ranks, NaN where any rank has −1 (not completed)."""
    c = counts.astype(np.float64)
    total = c.sum(axis=1)
    total[(c < 0).any(axis=1)] = np.nan
    return total


def parallel_view(r: Reader) -> ParallelView | None:
    """The run's exchange, or None for a run trained in one process (no /parallel records)."""
    raw = r.parallel()
    if raw is None:
        return None
    name = r.path.name
    info = raw["info"]
    view = ParallelView(name=name)
    mode = info.get("mode")
    k = _int(info.get("k"))
    if mode not in MODES or k < 1:
        view.problem = (
            f"{name!r} has /parallel records without a readable mode and K, so its bytes "
            "exchanged are not shown; record the run again with lca train --stanza K or "
            "--data-parallel K."
        )
        return view
    roles = info.get("roles")
    view.mode, view.k = mode, k
    view.staleness = max(_int(info.get("staleness")), 0)
    view.world = _int(info.get("world"), k + 1 if mode == "stanza" else k)
    view.roles = [str(x) for x in roles] if isinstance(roles, list) else []
    sent, received = raw["bytes_sent"], raw["bytes_received"]
    steps = _int(r.config.get("steps"), -1)
    arrays = [a for a in (sent, received) if a is not None]
    shapes = [a.shape for a in arrays]
    good = (
        len(arrays) == 2
        and all(a.ndim == 2 and a.dtype.kind in "iu" for a in arrays)
        and shapes[0] == shapes[1]
        and shapes[0][1] == view.world
        and (steps < 0 or shapes[0][0] == steps)
    )
    if not good:
        found = " and ".join(str(tuple(s)) for s in shapes) or "missing arrays"
        view.problem = (
            f"{name!r} has /parallel byte counts of shape {found} where "
            f"({'steps' if steps < 0 else steps} steps, {view.world} ranks) of integers is "
            "expected, so its bytes exchanged are not shown; record the run again with "
            "lca train --stanza K or --data-parallel K."
        )
        return view
    view.sent, view.received = _per_step(sent), _per_step(received)
    return view


def parallel_sentence(v: ParallelView) -> str:
    """The run's one line: "Stanza, K=2 conv ranks + 1 FC rank, τ=0: 329 kB sent per step"."""
    if v.problem:
        return v.problem
    per_step = v.sent_per_step
    if per_step is None:
        return f"{v.label}: no step's bytes recorded (the run did not complete)."
    return f"{v.label}: {human_bytes(per_step)} sent per step (all ranks, measured)."


def parallel_baseline(views: Sequence[ParallelView]) -> ParallelView | None:
    """The first usable data-parallel run with bytes recorded: what the others are measured
    against (None when there is none)."""
    return next(
        (v for v in views if not v.problem and v.mode == "data-parallel" and v.sent_per_step),
        None,
    )


def parallel_rows(views: Sequence[ParallelView]) -> list[dict[str, Any]]:
    """One table row per run: mode, ranks, staleness, bytes sent per step and, when one of the
    runs is data parallel with bytes recorded, each run's bytes as a multiple of the first
    such run's (the baseline Stanza is measured against)."""
    usable = [v for v in views if not v.problem]
    base = parallel_baseline(usable)
    rows = []
    for v in usable:
        per_step = v.sent_per_step
        row: dict[str, Any] = {
            "run": v.name,
            "mode": v.label,
            "ranks": v.world,
            "staleness τ": v.staleness if v.mode == "stanza" else None,
            "bytes sent per step": per_step,
            "bytes received per step": v.received_per_step,
            "steps recorded": v.completed_steps,
        }
        if base is not None:
            row["× data parallel"] = (
                None if per_step is None else per_step / float(base.sent_per_step or 1)
            )
        rows.append(row)
    return rows
