"""What a pruning technique did, read from a run file: its events, their cost, what it removed.

``prune_events`` lists the events with what the technique recorded about each; ``prune_split``
splits one event's loss cost per layer into the removed weights, the pruned layers' other
parameters and the rest; ``pruned_history`` gives each weight's cumulative LCA before it was
pruned (record full); ``helper_shares`` the technique's own helper counts. Drawn by
``lca.figures.prune``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lca.segments import modules
from lca.store import Reader

from .records import RunTechniques, _events, _pruned_at, gather

__all__ = [
    "PruneEvent",
    "PruneSplit",
    "helper_shares",
    "prune_events",
    "prune_split",
    "pruned_history",
]

READ_ROWS = 256  # rows of per-weight LCA read at a time


@dataclass
class PruneEvent:
    """One prune event: its segment, the optimizer step, and what the technique recorded."""

    technique: str
    segment: int
    step: int
    removed: float = math.nan
    sparsity_after: float = math.nan
    cost: float = math.nan  # ΣA of the event's segment (its loss cost)
    cost_removed: float = math.nan
    cost_compensated: float = math.nan
    cost_rest: float = math.nan
    helper_removal_ratio: float = math.nan
    cum_lca_removed_mean: float = math.nan
    cum_lca_survivors_mean: float = math.nan

    @property
    def title(self) -> str:
        return f"{self.technique} at step {self.step}"


def prune_events(r: Reader, name: str, data: RunTechniques | None = None) -> list[PruneEvent]:
    """The prune events of technique ``name``: from its ``event_totals`` table when present,
    else from the run's intervention segments labelled with its name."""
    data = data or gather(r)
    segs = data.prune.get(name, [])
    lca = np.asarray(r.steps("lca"))
    events = []
    for s in segs:
        events.append(PruneEvent(name, s, int(data.train_step[s]), cost=float(lca[s])))
    totals = _events(r, name, "event_totals")
    if totals and len(totals.get("segment", [])):
        by_seg = {e.segment: e for e in events}
        for i, seg in enumerate(totals["segment"]):
            if not math.isfinite(seg):
                continue
            e = by_seg.get(int(seg))
            if e is None:
                continue
            for col in (
                "removed",
                "sparsity_after",
                "cost",
                "cost_removed",
                "cost_compensated",
                "cost_rest",
                "helper_removal_ratio",
                "cum_lca_removed_mean",
                "cum_lca_survivors_mean",
            ):
                if col in totals:
                    setattr(e, col, float(totals[col][i]))
    return events


@dataclass
class PruneSplit:
    """The loss cost of one prune event per layer, split three ways.

    ``removed``: LCA of the weights the event removed; ``compensated``: of the pruned layers'
    other parameters that moved (L-OBS survivors, biases); ``rest``: everything else.
    ``source`` says how it was computed: "events" (the technique's own table), "weights"
    (per-weight LCA of a run recorded full) or "layers" (only per-layer totals: no split).
    """

    layers: list[str]
    removed: np.ndarray
    compensated: np.ndarray
    rest: np.ndarray
    source: str

    @property
    def total(self) -> np.ndarray:
        return self.removed + self.compensated + self.rest


def prune_split(r: Reader, event: PruneEvent) -> PruneSplit:
    """Split one prune event's cost per layer (module) into removed / compensating / rest."""
    names = list(r.names)
    mods, idx = modules(names)
    row = np.asarray(r.layer_lca(event.segment, event.segment + 1), dtype=np.float64).reshape(-1)
    per_module = np.zeros(len(mods))
    np.add.at(per_module, idx, row)
    removed = np.zeros(len(mods))
    comp = np.zeros(len(mods))
    table = _events(r, event.technique, "events")
    if table and len(table.get("step", [])) and "cost_removed" in table:
        sel = np.flatnonzero(table["step"] == event.step)
        if len(sel):
            for i in sel:
                li = int(table["layer"][i])
                if 0 <= li < len(names):
                    m = idx[li]
                    removed[m] += float(table["cost_removed"][i])
                    comp[m] += float(table["cost_compensated"][i])
            return PruneSplit(mods, removed, comp, per_module - removed - comp, "events")
    pruned_at = _pruned_at(r, event.technique)
    if r.record == "full" and pruned_at:
        for tensor, pa in pruned_at.items():
            if tensor not in names:
                continue
            a = np.asarray(
                r.param_lca(tensor, event.segment, event.segment + 1), dtype=np.float64
            ).reshape(pa.shape)
            m = idx[names.index(tensor)]
            rem = pa == event.step
            removed[m] += float(a[rem].sum())
            # The pruned layer's other parameters: surviving weights and the layer's bias.
            others = float(a[~rem].sum())
            others += sum(
                float(row[j])
                for j, n in enumerate(names)
                if idx[j] == m and n != tensor and n not in pruned_at
            )
            comp[m] += others
        return PruneSplit(mods, removed, comp, per_module - removed - comp, "weights")
    return PruneSplit(mods, np.zeros(len(mods)), np.zeros(len(mods)), per_module, "layers")


def pruned_history(
    r: Reader, name: str, data: RunTechniques | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Cumulative LCA of every pruned weight up to its prune event, and of every survivor up to
    the last event (needs record full and the ``pruned_at`` arrays; else None)."""
    if r.record != "full":
        return None
    pruned_at = _pruned_at(r, name)
    events = prune_events(r, name, data)
    if not pruned_at or not events:
        return None
    seg_of = {e.step: e.segment for e in events}
    last = max(seg_of.values())
    removed_vals: list[np.ndarray] = []
    survivors: list[np.ndarray] = []
    for tensor, pa in pruned_at.items():
        if tensor not in r.names:
            continue
        cum = np.zeros(pa.shape, dtype=np.float64)
        pos = 0
        for step, seg in sorted(seg_of.items(), key=lambda kv: kv[1]):
            for lo in range(pos, seg, READ_ROWS):
                block = r.param_lca(tensor, lo, min(seg, lo + READ_ROWS))
                cum += np.asarray(block, dtype=np.float64).sum(axis=0).reshape(pa.shape)
            pos = seg
            removed_vals.append(cum[pa == step].ravel().copy())
            if seg == last:
                survivors.append(cum[pa < 0].ravel().copy())
    if not removed_vals:
        return None
    return np.concatenate(removed_vals), (np.concatenate(survivors) if survivors else np.zeros(0))


def helper_shares(
    layer_events: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]], names: list[str]
) -> tuple[float, float, int, int] | None:
    """From a pruning technique's per-layer event rows (any record mode): the share of removed
    weights that had helped, of the kept ones, and how many were removed and kept; None when
    the table lacks them. Survivors are counted at the last event (the weights kept in the end).
    """
    if not layer_events or "helped_removed" not in layer_events:
        return None
    rem = np.asarray(layer_events["removed"], dtype=np.float64)
    pruned = np.asarray(layer_events["pruned"], dtype=np.float64)
    layer = np.asarray(layer_events["layer"], dtype=int)
    numel = np.array(
        [math.prod(shapes[names[i]]) if 0 <= i < len(names) else 0 for i in layer], dtype=np.float64
    )
    surv = numel - pruned
    hr = np.nan_to_num(np.asarray(layer_events["helped_removed"], dtype=np.float64))
    hs = np.nan_to_num(np.asarray(layer_events["helped_survivors"], dtype=np.float64))
    if rem.sum() <= 0 or surv.sum() <= 0:
        return None
    last = layer_events["step"] == np.max(layer_events["step"])
    return (
        float((hr * rem).sum() / rem.sum()),
        float((hs * surv)[last].sum() / surv[last].sum()),
        int(rem.sum()),
        int(surv[last].sum()),
    )
