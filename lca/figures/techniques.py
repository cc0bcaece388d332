"""Where each efficiency technique acted in a run, and what it took away, as figures.

Two kinds of functions live here:

* readers (``gather``, ``prune_events``, ``prune_split``, ``pruned_history``,
  ``technique_summaries``) turn a run file (``lca.store.Reader``) into plain numpy data: which
  segments were skipped, where prune events happened, which layers were frozen;
* figures (``*_figure``) take that numpy data and return a plotly Figure, with no Streamlit, so
  a notebook draws the same pictures as the Techniques page.

What a technique records is read from the file itself (series ``techniques/<name>/<field>``, one
value per segment; event tables; fixed arrays such as ``pruned_at/<param>``), so a technique is
recognised by what it wrote, and one this module does not know still shows its series.

Colours: green = helped (LCA < 0), red = hurt (LCA > 0), as everywhere. Technique marks use
colours that are neither: blue bands for skipped weight updates, black outlines for frozen
layers, black crosses for prune events, purple for mixed-precision skipped steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go

from lca.downsample import block_sum

from .common import (
    HELPED,
    HURT,
    NOT_HELPED,
    STILL,
    base_layout,
    empty_figure,
    lca_heatmap,
    series_color,
)

__all__ = [
    "FROZEN_COLOR",
    "PRUNE_COLOR",
    "SCALER_COLOR",
    "SKIP_COLOR",
    "PruneEvent",
    "PruneSplit",
    "RunTechniques",
    "amp_scale_figure",
    "bits_figure",
    "gather",
    "helper_removal_figure",
    "helper_share_figure",
    "intervals",
    "module_of",
    "no_technique_sentence",
    "prune_events",
    "prune_events_figure",
    "prune_split",
    "prune_split_figure",
    "pruned_history",
    "reported_rows",
    "series_figure",
    "technique_heatmap_figure",
    "technique_layer_lines_figure",
    "technique_loss_figure",
    "technique_names",
    "technique_summaries",
]

SKIP_COLOR = "rgba(8, 119, 189, 0.16)"  # band: weights not updating
SKIP_LINE = "#0877bd"
FROZEN_COLOR = "#111111"
PRUNE_COLOR = "#111111"
SCALER_COLOR = "#7b3294"  # purple: a step the fp16 loss scaler skipped
MAX_LINES = 10
MAX_HEATMAP_COLS = 1500
READ_ROWS = 256  # rows of per-weight LCA read at a time
MAX_POINTS = 3000  # jittered points drawn per group in the helper-removal figure



NO_TECHNIQUE = (
    "This run used no efficiency technique. Start one on the Train page (choose a technique "
    "such as prune-magnitude), or from a terminal: "
    "python -m lca train --technique prune-magnitude:sparsity=0.5 --out runs/pruned.h5"
)


def no_technique_sentence() -> str:
    """The one sentence shown for a run without techniques: how to start one."""
    return NO_TECHNIQUE


def module_of(tensor: str) -> str:
    """``fc1.weight`` -> ``fc1``: the layer (module) a parameter tensor belongs to."""
    return tensor.rsplit(".", 1)[0] if "." in tensor else tensor


def intervals(mask: np.ndarray) -> list[tuple[int, int]]:
    """Runs of True in a per-segment mask as half-open (start, stop) segment ranges."""
    m = np.asarray(mask, dtype=bool).ravel()
    if not m.any():
        return []
    d = np.diff(np.concatenate([[0], m.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    return [(int(a), int(b)) for a, b in zip(starts, stops, strict=True)]


# ---------------------------------------------------------------------------------------------
# Reading a run.


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


def technique_names(r) -> list[str]:
    """Techniques of a run: the config's, then any that wrote under /techniques/ only."""
    names = _spec_names(r.config.get("techniques"))
    for path in [*r.series_layout, *r.event_layout, *r.array_layout]:
        parts = path.split("/")
        if len(parts) >= 3 and parts[0] == "techniques" and parts[1] not in names:
            names.append(parts[1])
    return names


def _spec(r, name: str) -> dict[str, Any]:
    for s in r.config.get("techniques") or []:
        if isinstance(s, dict) and s.get("name") == name:
            return s
    return {}


def _series(r, name: str, field_: str) -> np.ndarray | None:
    path = f"techniques/{name}/{field_}"
    if path not in r.series_layout:
        return None
    try:
        return np.asarray(r.series(path))
    except KeyError:
        return None


def _events(r, name: str, table: str) -> dict[str, np.ndarray] | None:
    path = f"techniques/{name}/{table}"
    if path not in r.event_layout:
        return None
    try:
        return r.events(path)
    except KeyError:
        return None


def _pruned_at(r, name: str) -> dict[str, np.ndarray]:
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


def _frozen_tensors(r, name: str) -> list[int]:
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


def gather(r) -> RunTechniques:
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


def prune_events(r, name: str, data: RunTechniques | None = None) -> list[PruneEvent]:
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


def _modules(names: Sequence[str]) -> tuple[list[str], np.ndarray]:
    mods: list[str] = []
    index = []
    for n in names:
        m = module_of(n)
        if m not in mods:
            mods.append(m)
        index.append(mods.index(m))
    return mods, np.asarray(index, dtype=int)


def prune_split(r, event: PruneEvent) -> PruneSplit:
    """Split one prune event's cost per layer (module) into removed / compensating / rest."""
    names = list(r.names)
    mods, idx = _modules(names)
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


def pruned_history(r, name: str, data: RunTechniques | None = None
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


# ---------------------------------------------------------------------------------------------
# What each technique saved.


def _fmt_pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:.1f}%"


def _fmt_s(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


def technique_summaries(r, data: RunTechniques | None = None) -> list[dict[str, str]]:
    """One row per technique: what it did, what it saved, and what the file could not say.

    Computed from the run file's series, events and arrays, so it also works on a live run;
    what each technique reported itself when the run ended is ``reported_rows``.
    """
    data = data or gather(r)
    t = data.segments
    steps = data.kind == 0
    n_steps = int(steps.sum())
    sizes = {n: math.prod(s) for n, s in r.shapes.items()}
    total_params = sum(sizes.values()) or 1
    seconds = None
    if "steps/seconds_train" in r.series_layout:
        seconds = np.asarray(r.series("steps/seconds_train"), dtype=np.float64)[:t]
    rows = []
    for name in data.names:
        did, saved, notes = [], [], []
        if name in data.skipping:
            skip = data.skipping[name]
            k = int(skip.sum())
            weights = sum(sizes[data.tensor_names[i]] for i in data.skip_rows)
            did.append(f"skipped weight updates on {k} of {n_steps} steps "
                       f"({_fmt_pct(k / n_steps if n_steps else math.nan)}) in "
                       f"{len(intervals(skip))} windows")
            saved.append(f"{_fmt_pct(k * weights / (n_steps * total_params) if n_steps else 0)} "
                         "of all parameter updates")
            if seconds is not None:
                normal = seconds[steps & ~skip]
                skipped = seconds[steps & skip]
                normal, skipped = normal[np.isfinite(normal)], skipped[np.isfinite(skipped)]
                if len(normal) and len(skipped):
                    mn, ms = float(normal.mean()), float(skipped.mean())
                    total = float(normal.sum() + skipped.sum())
                    frac = 1 - total / (mn * (len(normal) + len(skipped))) if mn > 0 else math.nan
                    saved.append(f"step time {_fmt_s(mn)} normal vs {_fmt_s(ms)} skipping: "
                                 f"{_fmt_pct(frac)} of training time")
                else:
                    notes.append("no step-time comparison (no skipped or no normal steps)")
            else:
                notes.append("step times not recorded")
            lr = _series(r, name, "lr_factor")
            if lr is not None and len(lr):
                ok = lr[:t][steps]
                ok = ok[np.isfinite(ok)]
                if len(ok):
                    did.append(f"learning rate scaled down to ×{ok[-1]:.3g}")
        if name in data.prune:
            events = prune_events(r, name, data)
            sparsity = _series(r, name, "sparsity")
            pruned_at = _pruned_at(r, name)
            if pruned_at:
                pruned = sum(int((a >= 0).sum()) for a in pruned_at.values())
                prunable = sum(a.size for a in pruned_at.values())
                saved.append(f"{_fmt_pct(pruned / prunable)} of the prunable weights "
                             f"({pruned:,} of {prunable:,}) are zero")
            elif sparsity is not None and len(sparsity):
                saved.append(f"sparsity {_fmt_pct(float(sparsity[:t][-1]))}")
            at = ", ".join(str(e.step) for e in events)
            did.append(f"{len(events)} prune event" + ("s" if len(events) != 1 else "")
                       + (f" at step{'s' if len(events) > 1 else ''} {at}" if events else ""))
            costs = [e.cost for e in events if math.isfinite(e.cost)]
            if costs:
                did.append(f"loss cost {math.fsum(costs):+.3g} (Σ of the events' LCA)")
        amp_skipped = _series(r, name, "skipped")
        amp_scale = _series(r, name, "scale")
        if amp_skipped is not None and amp_scale is not None and amp_scale.ndim == 1:
            scale = amp_scale[:t]
            k = int(((amp_skipped[:t] != 0) & steps).sum())
            opt = _spec(r, name).get("dtype", "auto")
            finite = scale[steps & np.isfinite(scale)] if scale.ndim == 1 else np.zeros(0)
            if finite.size and np.all(finite == 1.0):
                did.append(f"training forward in reduced precision ({opt}); no loss scaling "
                           "needed (bf16)")
            else:
                did.append(f"training forward in float16 with loss scaling; final scale "
                           f"{finite[-1]:g}" if finite.size else "reduced-precision forward")
            did.append(f"{k} step" + ("s" if k != 1 else "") + " skipped by the loss scaler")
            notes.append("time and memory savings are not recorded")
        bits_path = f"techniques/{name}/bits"
        if bits_path in r.array_layout:
            bits = np.asarray(r.array(bits_path), dtype=np.float64)
            numel = np.array([sizes[n] for n in data.tensor_names], dtype=np.float64)
            q = np.isfinite(bits)
            stored = float(np.where(q, bits, 32.0) @ numel)
            used = sorted({f"{b:g}" for b in bits[q]})
            did.append(f"{int(q.sum())} tensors at {', '.join(used) or '?'} bits per weight")
            if stored > 0:
                saved.append(f"weights {32 * numel.sum() / stored:.1f}× smaller than float32 "
                             f"({_fmt_pct(float(numel[q].sum() / numel.sum()))} quantized)")
        if name in data.frozen:
            rows_, mask = data.frozen[name]
            frozen = _series(r, name, "frozen")
            count = int(np.nanmax(frozen[:t])) if frozen is not None and t else 0
            layers = ", ".join(sorted({module_of(data.tensor_names[i]) for i in rows_}))
            did.append(f"froze {layers or '?'} for {int(mask.sum())} of {n_steps} steps")
            saved.append(f"{count:,} parameters ({_fmt_pct(count / total_params)}) not updated")
        value = _series(r, name, "value")
        if value is not None and name not in data.frozen and value.ndim == 1:
            v = value[:t][steps]
            v = v[np.isfinite(v)]
            if len(v):
                did.append(f"regularizer Σ‖w‖₁/‖w‖₂ {v[0]:.3g} → {v[-1]:.3g}")
                notes.append("sparsity gained is not recorded per step")
        if not did and not saved:
            fields = sorted({p.split('/')[2] for p in [*r.series_layout, *r.event_layout,
                                                        *r.array_layout]
                             if p.startswith(f"techniques/{name}/")})
            did.append("recorded: " + (", ".join(fields) if fields else "nothing in the file"))
        rows.append({
            "technique": name,
            "what it did": "; ".join(did) or "—",
            "what it saved": "; ".join(saved) or "—",
            "not in the file": "; ".join(notes) or "—",
        })
    return rows


def _reported_value(key: str, value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "—"}[value]
    if isinstance(value, int | float):
        v = float(value)
        if "fraction" in key or "sparsity" in key:
            return _fmt_pct(v)
        if key.startswith("seconds"):
            return _fmt_s(v)
        return f"{int(v):,}" if v.is_integer() and abs(v) < 1e15 else f"{v:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_reported_value(key, v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_reported_value(key, v) for v in value)
    return str(value)


def reported_rows(summaries: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """What each technique reported itself when the run ended (``Reader.technique_summaries``),
    one row per technique and figure, worded for a table: fractions as percentages, seconds
    in ms, per-layer values listed."""
    rows = []
    for name, summary in summaries.items():
        if not isinstance(summary, dict):
            continue
        for key, value in summary.items():
            rows.append({"technique": name, "figure": str(key).replace("_", " "),
                         "value": _reported_value(str(key), value)})
    return rows


# ---------------------------------------------------------------------------------------------
# Figures.


def _add_bands(fig: go.Figure, bands: Sequence[tuple[int, int]], *, offset: float,
               label: str = "weights not updating (skipped)") -> None:
    for i, (s, e) in enumerate(bands):
        fig.add_vrect(x0=s + offset, x1=e + offset, fillcolor=SKIP_COLOR, line_width=0,
                      layer="below")
        if i == 0:
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=label,
                                     marker={"symbol": "square", "size": 14,
                                             "color": "rgba(8,119,189,0.35)"}))


def technique_loss_figure(
    loss: np.ndarray,
    *,
    skip_bands: Sequence[tuple[int, int]] = (),
    prune_marks: Sequence[tuple[int, str]] = (),
    scaler_skipped: np.ndarray | None = None,
    title: str = "Loss over training, with where each technique acted",
    height: int = 380,
) -> go.Figure:
    """Measurement loss L_0..L_T; blue bands where weight updates were skipped, a cross and a
    dotted line at each prune event, purple marks on steps the loss scaler skipped.

    x is the segment index: segment t moves the loss from L_t to L_{t+1}.
    """
    loss = np.asarray(loss, dtype=np.float64)
    if len(loss) < 2:
        return empty_figure("No step recorded yet: the loss timeline appears after step 1.")
    x = np.arange(len(loss))
    line = go.Scattergl if len(loss) > 5000 else go.Scatter
    fig = go.Figure(line(x=x, y=loss, mode="lines", name="loss", line={"color": "#333333",
                                                                        "width": 2.5}))
    _add_bands(fig, skip_bands, offset=0.0)
    if prune_marks:
        segs = np.array([s for s, _ in prune_marks])
        for s in segs:
            fig.add_vline(x=float(s) + 0.5, line={"color": PRUNE_COLOR, "dash": "dot", "width": 1})
        fig.add_trace(go.Scatter(
            x=segs + 1, y=loss[np.minimum(segs + 1, len(loss) - 1)], mode="markers",
            name="prune event", marker={"symbol": "x", "size": 13, "color": PRUNE_COLOR},
            hovertext=[f"{n}: loss {loss[s]:.4f} → {loss[min(s + 1, len(loss) - 1)]:.4f} "
                       f"({loss[min(s + 1, len(loss) - 1)] - loss[s]:+.4f})"
                       for s, n in prune_marks],
            hoverinfo="text",
        ))
    if scaler_skipped is not None and np.any(scaler_skipped):
        segs = np.flatnonzero(scaler_skipped)
        fig.add_trace(go.Scatter(
            x=segs + 1, y=loss[segs + 1], mode="markers", name="step skipped by loss scaler",
            marker={"symbol": "triangle-down", "size": 11, "color": SCALER_COLOR},
        ))
    base_layout(fig, title, height=height)
    fig.update_xaxes(title="segment (one per optimizer step" +
                     (", plus one per prune event)" if prune_marks else ")"))
    fig.update_yaxes(title="loss on the measurement set")
    return fig


def technique_layer_lines_figure(
    layer_lca: np.ndarray,
    tensor_names: Sequence[str],
    *,
    skip_bands: Sequence[tuple[int, int]] = (),
    prune_marks: Sequence[tuple[int, str]] = (),
    title: str = "Each layer's running total of LCA (lower = it helped more)",
    height: int = 400,
) -> go.Figure:
    """Cumulative LCA per layer (module: weights + bias) with the skip bands and prune lines.

    A line falling means the layer is lowering the loss; flat inside a blue band means its
    weights were not updating.
    """
    a = np.asarray(layer_lca, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0:
        return empty_figure("No step recorded yet: the per-layer timeline appears after step 1.")
    mods, idx = _modules(tensor_names)
    # A module takes its first tensor's colour, so conv2 here matches conv2.weight elsewhere.
    first = {int(m): j for j, m in reversed(list(enumerate(idx)))}
    per = np.zeros((a.shape[0], len(mods)))
    for j, m in enumerate(idx):
        per[:, m] += a[:, j]
    cum = np.cumsum(per, axis=0)
    order = np.argsort(-np.abs(cum[-1]), kind="stable")[:MAX_LINES]
    x = np.arange(1, a.shape[0] + 1)
    line = go.Scattergl if a.shape[0] > 5000 else go.Scatter
    fig = go.Figure()
    for m in sorted(order):
        fig.add_trace(line(x=x, y=cum[:, m], mode="lines", name=mods[m],
                           line={"color": series_color(first[m]), "width": 2.2},
                           hovertemplate=f"{mods[m]}<br>after segment %{{x}}: "
                           "Σ LCA %{y:+.4f}<extra></extra>"))
    _add_bands(fig, skip_bands, offset=0.0)
    for s, _ in prune_marks:
        fig.add_vline(x=float(s) + 1, line={"color": PRUNE_COLOR, "dash": "dot", "width": 1})
    base_layout(fig, title if len(mods) <= MAX_LINES else
                f"{title} — the {MAX_LINES} largest of {len(mods)} layers", height=height)
    fig.update_xaxes(title="segment")
    fig.update_yaxes(title="cumulative LCA (loss change)", zeroline=True,
                     zerolinecolor="#555555")
    return fig


def technique_heatmap_figure(
    layer_lca: np.ndarray,
    tensor_names: Sequence[str],
    *,
    skip_bands: Sequence[tuple[int, int]] = (),
    skip_rows: Sequence[int] = (),
    frozen: Sequence[tuple[Sequence[int], np.ndarray]] = (),
    prune_marks: Sequence[tuple[int, Sequence[int], str]] = (),
    scaler_skipped: np.ndarray | None = None,
    max_cols: int = MAX_HEATMAP_COLS,
    title: str = "Where each tensor helped or hurt, step by step, with the techniques marked",
    height: int | None = None,
) -> go.Figure:
    """Tensor × segment LCA heatmap (green helped, red hurt) with the techniques drawn on it.

    Blue dashed boxes: skipped weight updates (on the weight rows only: biases keep training);
    black boxes: frozen tensors; black crosses: prune events on the pruned tensors; purple
    ticks at the top: steps the loss scaler skipped. Long runs are block-summed along time
    (totals kept exact), so a box edge falls on the nearest drawn column.
    """
    a = np.asarray(layer_lca, dtype=np.float64)
    names = list(tensor_names)
    if a.ndim != 2 or a.shape[0] == 0 or not names:
        return empty_figure("No step recorded yet: the heatmap appears after step 1.")
    t = a.shape[0]
    z, starts, _ = block_sum(a, max_cols)
    starts = np.asarray(starts)
    width = t / len(starts)  # segments per drawn column

    def col(seg: float) -> float:
        """Drawn x position of a segment boundary."""
        return seg / width - 0.5

    fig = lca_heatmap(
        z.T, x=np.arange(len(starts)), y=list(range(len(names))), title=title,
        x_title="segment", y_title="", colorbar_title="LCA",
        height=height or max(340, 28 * len(names) + 170),
    )
    base_layout(fig, title, height=fig.layout.height)
    # Round segment numbers (0, 20, 40, … or 0, 500, 1000, …), each at its segment's place.
    raw = max(t / 8, 1.0)
    step = min(m * 10 ** math.floor(math.log10(raw)) for m in (1, 2, 5, 10)
               if m * 10 ** math.floor(math.log10(raw)) >= raw)
    ticks = np.arange(0, t, int(step))
    fig.update_xaxes(tickvals=[col(s + 0.5) for s in ticks], ticktext=[str(s) for s in ticks],
                     title="segment")
    fig.update_yaxes(tickvals=list(range(len(names))), ticktext=names, autorange="reversed",
                     title="")
    fig.data[0].customdata = np.tile(np.asarray(names, dtype=object)[:, None], (1, len(starts)))
    fig.data[0].hovertemplate = ("%{customdata}<br>from segment %{x}<br>LCA %{z:.3e}"
                                 "<extra></extra>")
    legend = set()
    rows = sorted(set(skip_rows))
    for s, e in skip_bands:
        for lo, hi in _row_runs(rows):
            fig.add_shape(type="rect", x0=col(s), x1=col(e), y0=lo - 0.5, y1=hi + 0.5,
                          line={"color": SKIP_LINE, "width": 2, "dash": "dash"},
                          fillcolor="rgba(8,119,189,0.08)")
        legend.add("skip")
    for frows, mask in frozen:
        for s, e in intervals(mask):
            for lo, hi in _row_runs(sorted(frows)):
                fig.add_shape(type="rect", x0=col(s), x1=col(e), y0=lo - 0.5, y1=hi + 0.5,
                              line={"color": FROZEN_COLOR, "width": 2.5},
                              fillcolor="rgba(0,0,0,0.06)")
            legend.add("frozen")
    if prune_marks:
        px, py, text = [], [], []
        for seg, prows, label in prune_marks:
            for row in prows:
                px.append(col(seg + 0.5))
                py.append(row)
                text.append(f"{label}: prune event at segment {seg} on {names[row]}")
        fig.add_trace(go.Scatter(x=px, y=py, mode="markers", name="prune event",
                                 marker={"symbol": "x-thin", "size": 14, "color": PRUNE_COLOR,
                                         "line": {"width": 3, "color": PRUNE_COLOR}},
                                 hovertext=text, hoverinfo="text"))
    if scaler_skipped is not None and np.any(scaler_skipped):
        segs = np.flatnonzero(scaler_skipped)
        fig.add_trace(go.Scatter(x=[col(s + 0.5) for s in segs], y=[-0.75] * len(segs),
                                 mode="markers", name="step skipped by loss scaler",
                                 marker={"symbol": "triangle-down", "size": 10,
                                         "color": SCALER_COLOR},
                                 hovertext=[f"loss scaler skipped segment {s}" for s in segs],
                                 hoverinfo="text"))
    if "skip" in legend:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers",
                                 name="weight updates skipped (blue box)",
                                 marker={"symbol": "square-open", "size": 14, "color": SKIP_LINE}))
    if "frozen" in legend:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="frozen (black box)",
                                 marker={"symbol": "square-open", "size": 14,
                                         "color": FROZEN_COLOR}))
    fig.update_layout(showlegend=True)
    fig.update_yaxes(range=[len(names) - 0.5, -1.2 if scaler_skipped is not None
                            and np.any(scaler_skipped) else -0.5], autorange=False)
    fig.update_xaxes(range=[-0.5, len(starts) - 0.5])
    return fig


def _row_runs(rows: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive row indices grouped into (first, last) runs, to draw one box per run."""
    out: list[tuple[int, int]] = []
    for r in rows:
        if out and r == out[-1][1] + 1:
            out[-1] = (out[-1][0], r)
        else:
            out.append((r, r))
    return out


_PATTERNS = {"removed": "", "compensated": "/", "rest": "."}
_PART_LABELS = {
    "removed": "removed weights",
    "compensated": "surviving weights of the pruned layers (compensation, bias)",
    "rest": "everything else",
}


def prune_split_figure(split: PruneSplit, *, title: str | None = None,
                       height: int = 380) -> go.Figure:
    """The cost of one prune event per layer: a bar per part (removed / survivors / rest),
    coloured by sign (red = raised the loss, green = lowered it), patterned by part."""
    if not split.layers:
        return empty_figure("This run has no layers to show.")
    fig = go.Figure()
    parts = [("removed", split.removed), ("compensated", split.compensated),
             ("rest", split.rest)]
    if split.source == "layers":
        parts = [("rest", split.total)]
    for part, values in parts:
        v = np.asarray(values, dtype=np.float64)
        label = "LCA of the layer (no per-weight split)" if split.source == "layers" \
            else _PART_LABELS[part]
        fig.add_trace(go.Bar(
            x=split.layers, y=v, name=label,
            marker={"color": [HELPED if a < 0 else HURT if a > 0 else STILL for a in v],
                    "pattern": {"shape": _PATTERNS[part] if split.source != "layers" else "",
                                "fgcolor": "white", "solidity": 0.35},
                    "line": {"color": "#333333", "width": 1}},
            hovertemplate=f"%{{x}}<br>{label}<br>LCA %{{y:+.3e}}<extra></extra>",
        ))
    base_layout(fig, title or "What the prune event cost, layer by layer", height=height)
    # Stacked by sign: the parts of one layer sit in one column and add up to its cost.
    fig.update_layout(barmode="relative")
    fig.update_xaxes(title="layer")
    fig.update_yaxes(title="LCA of the event (loss change)", zeroline=True,
                     zerolinecolor="#555555")
    return fig


def prune_events_figure(events: Sequence[PruneEvent], *, height: int = 340) -> go.Figure:
    """Every prune event's loss cost (ΣA of its segment), split into removed / compensating /
    rest when the technique recorded it; red bars raised the loss, green lowered it."""
    if not events:
        return empty_figure("No prune event has happened yet in this run.", height=height)
    x = [f"{e.technique}<br>step {e.step}" for e in events]
    split = all(math.isfinite(e.cost_removed) for e in events)
    fig = go.Figure()
    if split:
        for part, attr in (("removed", "cost_removed"), ("compensated", "cost_compensated"),
                           ("rest", "cost_rest")):
            v = np.array([getattr(e, attr) for e in events], dtype=np.float64)
            v = np.nan_to_num(v)
            fig.add_trace(go.Bar(
                x=x, y=v, name=_PART_LABELS[part],
                marker={"color": [HELPED if a < 0 else HURT if a > 0 else STILL for a in v],
                        "pattern": {"shape": _PATTERNS[part], "fgcolor": "white",
                                    "solidity": 0.35},
                        "line": {"color": "#333333", "width": 1}},
                hovertemplate=f"%{{x}}<br>{_PART_LABELS[part]}<br>LCA %{{y:+.3e}}<extra></extra>",
            ))
        fig.update_layout(barmode="relative")  # one column per event: its parts add up
    else:
        v = np.array([e.cost for e in events], dtype=np.float64)
        fig.add_trace(go.Bar(x=x, y=v, name="loss cost of the event",
                             marker={"color": [HELPED if a < 0 else HURT for a in v]},
                             hovertemplate="%{x}<br>LCA %{y:+.3e}<extra></extra>"))
    base_layout(fig, "The loss cost of each prune event", height=height)
    fig.update_yaxes(title="LCA of the event (loss change)", zeroline=True,
                     zerolinecolor="#555555")
    return fig


def helper_share_figure(
    groups: Sequence[str], helped: Sequence[float], *, hurt: Sequence[float] | None = None,
    counts: Sequence[int] | None = None,
    title: str = "Did pruning remove helpers? Share of weights that had helped so far",
    height: int = 260,
) -> go.Figure:
    """One 100% bar per group: green = share whose cumulative LCA was < 0 (helpers), red = > 0
    (hurters), grey = exactly 0 (never moved). Without ``hurt`` (a technique's event table
    counts only helpers) the rest is one pale bar, "did not help", never red: red means hurt."""
    h = np.clip(np.asarray(helped, dtype=np.float64), 0, 1)
    if not len(h) or not np.all(np.isfinite(h)):
        return empty_figure("No helper statistics recorded for this pruning.", height=height)
    names = list(groups)
    suffix = [f" ({int(c):,})" for c in counts] if counts is not None else [""] * len(names)
    y = [f"{n}{s}" for n, s in zip(names, suffix, strict=True)]
    parts = [("had helped (cumulative LCA < 0)", h, HELPED)]
    if hurt is not None:
        u = np.clip(np.nan_to_num(np.asarray(hurt, dtype=np.float64)), 0, 1 - h)
        parts += [("had hurt (> 0)", u, HURT), ("never moved (= 0)", 1 - h - u, STILL)]
    else:
        parts.append(("did not help (hurt or never moved)", 1 - h, NOT_HELPED))
    fig = go.Figure([
        go.Bar(y=y, x=100 * v, orientation="h", name=label, marker={"color": color},
               text=[f"{100 * a:.0f}%" if a >= 0.04 else "" for a in v],
               textposition="inside",
               hovertemplate=f"%{{y}}<br>{label}: %{{x:.1f}}%<extra></extra>")
        for label, v, color in parts
    ])
    base_layout(fig, title, height=height)
    fig.update_layout(barmode="stack")
    fig.update_xaxes(title="share of the weights (%)", range=[0, 100])
    fig.update_yaxes(autorange="reversed")
    return fig


def helper_removal_figure(
    removed: np.ndarray, survivors: np.ndarray, *,
    title: str = "Cumulative LCA of the pruned weights (before pruning) and of the survivors",
    height: int = 400, seed: int = 0,
) -> go.Figure:
    """Box plots of each weight's cumulative LCA: pruned (up to its prune event) vs survivors
    (up to the last event), with the weights as dots, green if they had helped, red if hurt."""
    groups = [("pruned weights", np.asarray(removed, dtype=np.float64).ravel()),
              ("survivors", np.asarray(survivors, dtype=np.float64).ravel())]
    if not any(len(v) for _, v in groups):
        return empty_figure("No weight was pruned yet.", height=height)
    rng = np.random.default_rng(seed)
    fig = go.Figure()
    for i, (label, v) in enumerate(groups):
        if not len(v):
            continue
        boxed = v if len(v) <= 50_000 else rng.choice(v, 50_000, replace=False)
        fig.add_trace(go.Box(y=boxed, x0=i, name=label, boxpoints=False,
                             line={"color": "#333333"}, fillcolor="rgba(0,0,0,0.04)",
                             showlegend=False, hoverinfo="y"))
        shown = v if len(v) <= MAX_POINTS else rng.choice(v, MAX_POINTS, replace=False)
        jitter = rng.uniform(-0.3, 0.3, len(shown))
        fig.add_trace(go.Scatter(
            x=i + jitter, y=shown, mode="markers", showlegend=False,
            marker={"color": [HELPED if a < 0 else HURT if a > 0 else STILL for a in shown],
                    "size": 5, "opacity": 0.55},
            hovertemplate=f"{label}<br>cumulative LCA %{{y:+.3e}}<extra></extra>",
        ))
    for color, text in ((HELPED, "had helped (< 0)"), (HURT, "had hurt (> 0)")):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=text,
                                 marker={"color": color, "size": 11}))
    base_layout(fig, title, height=height)
    fig.update_xaxes(tickvals=[0, 1], ticktext=[g for g, _ in groups], range=[-0.6, 1.6],
                     type="linear")
    # Cumulative LCA is heavy-tailed: zoom on the middle 98% so the bulk is visible.
    both = np.concatenate([v for _, v in groups if len(v)])
    lo, hi = np.percentile(both, [1, 99]) if len(both) > 20 else (both.min(), both.max())
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    pad = 0.08 * (hi - lo) or 1e-6
    fig.update_yaxes(range=[lo - pad, hi + pad])
    fig.update_yaxes(title="cumulative LCA (loss change)", zeroline=True,
                     zerolinecolor="#555555")
    return fig


def amp_scale_figure(scale: np.ndarray, skipped: np.ndarray | None = None, *,
                     title: str = "Mixed precision: the loss scale, and the steps it skipped",
                     height: int = 320) -> go.Figure:
    """The GradScaler's loss scale per step (log axis) with purple marks where it skipped."""
    s = np.asarray(scale, dtype=np.float64)
    if not len(s) or not np.any(np.isfinite(s)):
        return empty_figure("No loss scale recorded yet.", height=height)
    x = np.arange(len(s))
    fig = go.Figure(go.Scatter(x=x, y=s, mode="lines", name="loss scale",
                               line={"color": "#333333", "width": 2.5}))
    if skipped is not None and np.any(skipped):
        k = np.flatnonzero(np.asarray(skipped, dtype=bool))
        fig.add_trace(go.Scatter(x=k, y=s[k], mode="markers", name="step skipped (inf/NaN "
                                 "gradients)", marker={"symbol": "triangle-down", "size": 12,
                                                       "color": SCALER_COLOR}))
    base_layout(fig, title, height=height)
    fig.update_xaxes(title="segment")
    fig.update_yaxes(title="loss scale", type="log")
    return fig


def bits_figure(tensor_names: Sequence[str], bits: np.ndarray, *,
                title: str = "Bits per weight in the forward pass, by tensor",
                height: int = 320) -> go.Figure:
    """Bits per weight of each tensor: quantized tensors in blue, float32 ones in grey."""
    b = np.asarray(bits, dtype=np.float64)
    if not len(b):
        return empty_figure("No bit widths recorded.", height=height)
    q = np.isfinite(b)
    shown = np.where(q, b, 32.0)
    fig = go.Figure(go.Bar(
        x=list(tensor_names), y=shown,
        marker={"color": ["#0877bd" if v else "#bdbdbd" for v in q]},
        text=[f"{v:g}" for v in shown], textposition="outside",
        hovertemplate="%{x}<br>%{y:g} bits per weight<extra></extra>", showlegend=False,
    ))
    base_layout(fig, title, height=height)
    fig.update_xaxes(title="tensor (grey = left in float32)")
    fig.update_yaxes(title="bits per weight", range=[0, 36])
    return fig


def series_figure(values: np.ndarray, *, title: str, y_title: str,
                  height: int = 300, kind: np.ndarray | None = None) -> go.Figure:
    """Any technique series against the segment (intervention rows left out when ``kind`` is
    given), in a neutral colour."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or not len(v) or not np.any(np.isfinite(v)):
        return empty_figure(f"{title}: nothing recorded yet.", height=height)
    x = np.arange(len(v))
    if kind is not None:
        keep = np.asarray(kind)[: len(v)] == 0
        x, v = x[keep], v[keep]
    line = go.Scattergl if len(v) > 5000 else go.Scatter
    fig = go.Figure(line(x=x, y=v, mode="lines", line={"color": "#0877bd", "width": 2.5},
                         showlegend=False))
    base_layout(fig, title, height=height)
    fig.update_xaxes(title="segment")
    fig.update_yaxes(title=y_title)
    return fig
