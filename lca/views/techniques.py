"""Where each efficiency technique acted in a run, read from its file into plain numpy data.

What a technique records is read from the file itself (series ``techniques/<name>/<field>``, one
value per segment; event tables; fixed arrays such as ``pruned_at/<param>``), so a technique is
recognised by what it wrote, and one this module does not know still shows its series.
``gather`` gives what the Techniques page marks; ``prune_events``, ``prune_split`` and
``pruned_history`` what it says about pruning; ``lca.figures.techniques`` and
``lca.figures.prune`` draw them. Works on live and finished runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lca.segments import modules
from lca.store import Reader

__all__ = [
    "NO_TECHNIQUE",
    "PruneEvent",
    "PruneSplit",
    "RunTechniques",
    "TechniqueView",
    "gather",
    "helper_shares",
    "no_technique_sentence",
    "prune_events",
    "prune_split",
    "pruned_history",
    "technique_names",
    "technique_view",
]

READ_ROWS = 256  # rows of per-weight LCA read at a time


NO_TECHNIQUE = (
    "This run used no efficiency technique. Start one on the Train page (choose a technique "
    "such as prune-magnitude), or from a terminal: "
    "python -m lca train --technique prune-magnitude:sparsity=0.5 --out runs/pruned.h5"
)


def no_technique_sentence() -> str:
    """The one sentence shown for a run without techniques: how to start one."""
    return NO_TECHNIQUE


def _spec_names(spec: Any) -> list[str]:
    if spec is None:
        return []
    if isinstance(spec, str):
        return [spec.partition(":")[0]] if spec else []
    if isinstance(spec, dict):
        return [str(spec["name"])] if spec.get("name") else []
    if isinstance(spec, list | tuple):
        return [n for s in spec for n in _spec_names(s)]
    return []


def technique_names(r: Reader) -> list[str]:
    """Techniques of a run: the config's, then any that wrote under /techniques/ only."""
    names = _spec_names(r.config.get("techniques"))
    for path in [*r.series_layout, *r.event_layout, *r.array_layout]:
        parts = path.split("/")
        if len(parts) >= 3 and parts[0] == "techniques" and parts[1] not in names:
            names.append(parts[1])
    return names


def _spec(r: Reader, name: str) -> dict[str, Any]:
    for s in r.config.get("techniques") or []:
        if isinstance(s, dict) and s.get("name") == name:
            return s
    return {}


def _series(r: Reader, name: str, field_: str) -> np.ndarray | None:
    path = f"techniques/{name}/{field_}"
    if path not in r.series_layout:
        return None
    try:
        return np.asarray(r.series(path))
    except KeyError:
        return None


def _events(r: Reader, name: str, table: str) -> dict[str, np.ndarray] | None:
    path = f"techniques/{name}/{table}"
    if path not in r.event_layout:
        return None
    try:
        return r.events(path)
    except KeyError:
        return None


def _pruned_at(r: Reader, name: str) -> dict[str, np.ndarray]:
    """Tensor name -> step each weight was pruned (−1 never), for a pruning technique."""
    out = {}
    prefix = f"techniques/{name}/pruned_at/"
    for path in r.array_layout:
        if path.startswith(prefix):
            tensor = path[len(prefix):].replace(":", ".")
            try:
                out[tensor] = np.asarray(r.array(path))
            except KeyError:
                continue
    return out


def _frozen_tensors(r: Reader, name: str) -> list[int]:
    spec = _spec(r, name)
    layers = spec.get("layers", ["out"])
    if isinstance(layers, str):
        layers = [p for p in layers.replace("|", "+").split("+") if p]
    chosen = []
    for i, n in enumerate(r.names):
        if any(n == p or n.startswith(str(p) + ".") for p in layers):
            chosen.append(i)
    return chosen


@dataclass
class RunTechniques:
    """Everything the Techniques page marks, as per-segment numpy arrays (T segments)."""

    names: list[str]
    loss: np.ndarray  # (T+1,)
    kind: np.ndarray  # (T,) 0 optimizer step, 1 intervention
    train_step: np.ndarray  # (T,)
    labels: np.ndarray  # (T,) str
    tensor_names: list[str]
    layer_lca: np.ndarray  # (T, L)
    skipping: dict[str, np.ndarray] = field(default_factory=dict)  # technique -> (T,) bool
    skip_rows: list[int] = field(default_factory=list)  # tensors skipping stops (weights)
    prune: dict[str, list[int]] = field(default_factory=dict)  # technique -> event segments
    prune_rows: dict[str, list[int]] = field(default_factory=dict)  # technique -> pruned tensors
    frozen: dict[str, tuple[list[int], np.ndarray]] = field(default_factory=dict)  # rows, (T,)
    scaler_skipped: np.ndarray | None = None  # (T,) bool: AMP steps the scaler skipped

    @property
    def segments(self) -> int:
        return len(self.kind)

    @property
    def skip_mask(self) -> np.ndarray:
        m = np.zeros(self.segments, dtype=bool)
        for v in self.skipping.values():
            m |= v
        return m

    def prune_marks(self) -> list[tuple[int, str]]:
        """(segment, technique) of every prune event, in time order."""
        return sorted((s, n) for n, segs in self.prune.items() for s in segs)

    def heatmap_prune_marks(self) -> list[tuple[int, list[int], str]]:
        """(segment, pruned tensor rows, technique) for the heatmap's crosses."""
        rows_all = list(range(len(self.tensor_names)))
        return sorted(
            (s, self.prune_rows.get(n) or rows_all, n) for n, segs in self.prune.items()
            for s in segs
        )

    def frozen_marks(self) -> list[tuple[list[int], np.ndarray]]:
        return list(self.frozen.values())


def gather(r: Reader) -> RunTechniques:
    """Read where every technique of run ``r`` acted (works on live and finished runs)."""
    t = r.num_steps
    names = technique_names(r)
    kind = np.asarray(r.steps("kind"))
    labels = np.asarray(r.steps("label"), dtype=object)
    out = RunTechniques(
        names=names,
        loss=np.asarray(r.steps("loss"), dtype=np.float64),
        kind=kind,
        train_step=np.asarray(r.steps("train_step")),
        labels=labels,
        tensor_names=list(r.names),
        layer_lca=np.asarray(r.layer_lca(), dtype=np.float64).reshape(t, len(r.names)),
    )
    weights = [i for i, n in enumerate(r.names) if len(r.shapes.get(n, ())) >= 2]
    for name in names:
        skipping = _series(r, name, "skipping")
        if skipping is not None and skipping.ndim == 1:
            out.skipping[name] = (skipping[:t] != 0) & (kind == 0)
            out.skip_rows = weights
        pruned_at = _pruned_at(r, name)
        if name.startswith("prune") or pruned_at:
            out.prune[name] = [int(i) for i in np.flatnonzero((kind == 1) & (labels == name))]
            out.prune_rows[name] = [r.names.index(n) for n in pruned_at if n in r.names]
        frozen = _series(r, name, "frozen")
        if frozen is not None and frozen.ndim == 1:
            out.frozen[name] = (_frozen_tensors(r, name), (frozen[:t] > 0) & (kind == 0))
        skipped = _series(r, name, "skipped")
        if skipped is not None and skipped.ndim == 1 and _series(r, name, "scale") is not None:
            m = (skipped[:t] != 0) & (kind == 0)
            out.scaler_skipped = m if out.scaler_skipped is None else out.scaler_skipped | m
    return out


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
            for col in ("removed", "sparsity_after", "cost", "cost_removed", "cost_compensated",
                        "cost_rest", "helper_removal_ratio", "cum_lca_removed_mean",
                        "cum_lca_survivors_mean"):
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
            a = np.asarray(r.param_lca(tensor, event.segment, event.segment + 1),
                           dtype=np.float64).reshape(pa.shape)
            m = idx[names.index(tensor)]
            rem = pa == event.step
            removed[m] += float(a[rem].sum())
            # The pruned layer's other parameters: surviving weights and the layer's bias.
            others = float(a[~rem].sum())
            others += sum(float(row[j]) for j, n in enumerate(names)
                          if idx[j] == m and n != tensor and n not in pruned_at)
            comp[m] += others
        return PruneSplit(mods, removed, comp, per_module - removed - comp, "weights")
    return PruneSplit(mods, np.zeros(len(mods)), np.zeros(len(mods)), per_module, "layers")


def pruned_history(r: Reader, name: str, data: RunTechniques | None = None
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
    return np.concatenate(removed_vals), (np.concatenate(survivors) if survivors
                                          else np.zeros(0))


@dataclass
class TechniqueView:
    """Everything the Techniques page draws except per-weight histories (``pruned_history``)."""

    data: RunTechniques
    summaries: list[dict[str, str]]  # ``technique_summaries``: computed from the file
    reported: dict[str, dict[str, Any]]  # what each technique reported when the run ended
    events: dict[str, list[PruneEvent]]  # pruning technique -> its prune events
    splits: dict[tuple[str, int], PruneSplit]  # (technique, segment) -> the event's split
    series: dict[str, dict[str, np.ndarray]]  # technique -> field -> its per-segment series
    layer_events: dict[str, dict[str, np.ndarray]]  # pruning technique -> per-layer event rows
    bits: dict[str, np.ndarray]  # quantizing technique -> bits per tensor
    record: str
    status: str
    shapes: dict[str, tuple[int, ...]]


def technique_view(r: Reader) -> TechniqueView:
    """Read where every technique of run ``r`` acted, what it cost and what it recorded."""
    from .summaries import technique_summaries  # the wording module builds on this one

    data = gather(r)
    events = {n: prune_events(r, n, data) for n in data.prune}
    series = {}
    for name in data.names:
        prefix = f"techniques/{name}/"
        series[name] = {p[len(prefix):]: np.asarray(r.series(p)) for p in r.series_layout
                        if p.startswith(prefix)}
    return TechniqueView(
        data=data,
        summaries=technique_summaries(r, data),
        reported=r.technique_summaries(),
        events=events,
        splits={(e.technique, e.segment): prune_split(r, e) for evs in events.values()
                for e in evs},
        series=series,
        layer_events={n: r.events(f"techniques/{n}/events") for n in data.prune
                      if f"techniques/{n}/events" in r.event_layout},
        bits={n: np.asarray(r.array(f"techniques/{n}/bits"), dtype=np.float64)
              for n in data.names if f"techniques/{n}/bits" in r.array_layout},
        record=r.record, status=r.status, shapes=dict(r.shapes),
    )


def helper_shares(layer_events: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]],
                  names: list[str]) -> tuple[float, float, int, int] | None:
    """From a pruning technique's per-layer event rows (any record mode): the share of removed
    weights that had helped, of the kept ones, and how many were removed and kept; None when
    the table lacks them. Survivors are counted at the last event (the weights kept in the end).
    """
    if not layer_events or "helped_removed" not in layer_events:
        return None
    rem = np.asarray(layer_events["removed"], dtype=np.float64)
    pruned = np.asarray(layer_events["pruned"], dtype=np.float64)
    layer = np.asarray(layer_events["layer"], dtype=int)
    numel = np.array([math.prod(shapes[names[i]]) if 0 <= i < len(names) else 0 for i in layer],
                     dtype=np.float64)
    surv = numel - pruned
    hr = np.nan_to_num(np.asarray(layer_events["helped_removed"], dtype=np.float64))
    hs = np.nan_to_num(np.asarray(layer_events["helped_survivors"], dtype=np.float64))
    if rem.sum() <= 0 or surv.sum() <= 0:
        return None
    last = layer_events["step"] == np.max(layer_events["step"])
    return (float((hr * rem).sum() / rem.sum()), float((hs * surv)[last].sum() / surv[last].sum()),
            int(rem.sum()), int(surv[last].sum()))
