"""What each technique did and saved, worded as table rows, from a run file or its own report.

``technique_summaries`` computes it from the file's series, events and arrays (so it also works
on a live run); ``reported_rows`` words what each technique reported itself when the run ended
(``Reader.technique_summaries``). The Techniques page shows both as tables.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lca.segments import intervals, module_of
from lca.store import Reader

from .prune import prune_events
from .records import RunTechniques, _pruned_at, _series, _spec, gather

__all__ = ["reported_rows", "technique_summaries"]


def _fmt_pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:.1f}%"


def _fmt_s(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


def technique_summaries(r: Reader, data: RunTechniques | None = None) -> list[dict[str, str]]:
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
            did.append(
                f"skipped weight updates on {k} of {n_steps} steps "
                f"({_fmt_pct(k / n_steps if n_steps else math.nan)}) in "
                f"{len(intervals(skip))} windows"
            )
            saved.append(
                f"{_fmt_pct(k * weights / (n_steps * total_params) if n_steps else 0)} "
                "of all parameter updates"
            )
            if seconds is not None:
                normal = seconds[steps & ~skip]
                skipped = seconds[steps & skip]
                normal, skipped = normal[np.isfinite(normal)], skipped[np.isfinite(skipped)]
                if len(normal) and len(skipped):
                    mn, ms = float(normal.mean()), float(skipped.mean())
                    total = float(normal.sum() + skipped.sum())
                    frac = 1 - total / (mn * (len(normal) + len(skipped))) if mn > 0 else math.nan
                    saved.append(
                        f"step time {_fmt_s(mn)} normal vs {_fmt_s(ms)} skipping: "
                        f"{_fmt_pct(frac)} of training time"
                    )
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
                saved.append(
                    f"{_fmt_pct(pruned / prunable)} of the prunable weights "
                    f"({pruned:,} of {prunable:,}) are zero"
                )
            elif sparsity is not None and len(sparsity):
                saved.append(f"sparsity {_fmt_pct(float(sparsity[:t][-1]))}")
            at = ", ".join(str(e.step) for e in events)
            did.append(
                f"{len(events)} prune event"
                + ("s" if len(events) != 1 else "")
                + (f" at step{'s' if len(events) > 1 else ''} {at}" if events else "")
            )
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
                did.append(
                    f"training forward in reduced precision ({opt}); no loss scaling needed (bf16)"
                )
            else:
                did.append(
                    f"training forward in float16 with loss scaling; final scale {finite[-1]:g}"
                    if finite.size
                    else "reduced-precision forward"
                )
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
                saved.append(
                    f"weights {32 * numel.sum() / stored:.1f}× smaller than float32 "
                    f"({_fmt_pct(float(numel[q].sum() / numel.sum()))} quantized)"
                )
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
            fields = sorted(
                {
                    p.split("/")[2]
                    for p in [*r.series_layout, *r.event_layout, *r.array_layout]
                    if p.startswith(f"techniques/{name}/")
                }
            )
            did.append("recorded: " + (", ".join(fields) if fields else "nothing in the file"))
        rows.append(
            {
                "technique": name,
                "what it did": "; ".join(did) or "—",
                "what it saved": "; ".join(saved) or "—",
                "not in the file": "; ".join(notes) or "—",
            }
        )
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
            rows.append(
                {
                    "technique": name,
                    "figure": str(key).replace("_", " "),
                    "value": _reported_value(str(key), value),
                }
            )
    return rows
