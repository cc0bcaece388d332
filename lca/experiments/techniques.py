"""Experiment ``techniques``: weight update skipping vs baseline, and three pruning criteria.

1. **WUS** (Safayenikoo & Akturk 2020; our reconstruction, the exact criterion is not public):
   LeNet on digits trained with and without ``wus`` (and ``wus-lr``). Training time per step is
   read from /series/steps/seconds_train, the skip windows from /series/techniques/<name>/skipping,
   accuracy from the /eval events. The paper reports 54% (WUS) / 50% (WUS+LR) training time saved
   on CIFAR-10 on CPU; our nets and runs are far smaller, so the saving is our own measurement.
2. **Pruning at equal sparsity**: magnitude (Zhu & Gupta), L-OBS (Dong et al.) and LCA-guided
   (prune the weights whose cumulative LCA is highest: hurters first; no paper made this
   comparison), one-shot at the same step on the same fc-mnist run, then fine-tuned to the end.
   The loss cost of each prune event is its own LCA segment (/techniques/<name>/event_totals:
   cost, the part on the removed weights, the part on compensating survivors, the helper-removal
   ratio = mean cumulative LCA of the removed weights ÷ that of the survivors).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..store import Reader
from .common import ExperimentContext, Report, fmt, pct, sci
from .setups import fc_mnist_digits, lenet_digits

NAME = "techniques"
TITLE = "Efficiency techniques through LCA: update skipping and pruning"
PRUNERS = ("prune-magnitude", "prune-lobs", "prune-lca")
INACTIVE = {"name": "freeze", "layers": ["out"], "start": 10**9}  # never reached: a no-op
PAPER_WUS_CPU_SAVING = {"wus": 0.54, "wus-lr": 0.50}  # CIFAR-10 on CPU, Safayenikoo & Akturk


def eval_rows(r: Reader) -> dict[str, np.ndarray]:
    return r.events("eval")


def wus_stats(r: Reader, name: str | None) -> dict[str, Any]:
    """Training time and accuracy of one run; for a WUS run also its skipped steps and the
    mean step time with and without skipping (like with like, same run)."""
    kind = r.steps("kind")
    sec = np.asarray(r.series("steps/seconds_train"), dtype=np.float64)[kind == 0]
    ev = eval_rows(r)
    out: dict[str, Any] = {
        "steps": int(len(sec)),
        "train_seconds": float(sec.sum()),
        "ms_step": 1000 * float(sec.mean()),
        "train_acc": float(ev["train_acc"][-1]),
        "test_acc": float(ev["test_acc"][-1]),
        "best_test_acc": float(np.nanmax(ev["test_acc"])),
        "loss_final": float(r.steps("loss")[-1]),
    }
    if name is not None:
        skip = np.asarray(r.series(f"techniques/{name}/skipping"))[kind == 0] != 0
        out["skipped"] = int(skip.sum())
        out["ms_normal"] = 1000 * float(sec[~skip].mean()) if (~skip).any() else math.nan
        out["ms_skipped"] = 1000 * float(sec[skip].mean()) if skip.any() else math.nan
        normal = sec[~skip].mean() if (~skip).any() else math.nan
        out["saving_within_run"] = (
            1 - sec.sum() / (normal * len(sec)) if skip.any() and normal > 0 else 0.0
        )
    return out


def prune_stats(r: Reader, name: str, start: int) -> dict[str, Any]:
    """The prune event (first row of event_totals), accuracy before it and at the end."""
    tot = r.events(f"techniques/{name}/event_totals")
    ev = eval_rows(r)
    at = np.flatnonzero(ev["train_step"] == start)
    row = {k: float(v[0]) for k, v in tot.items()} if len(tot.get("step", [])) else {}
    return {
        **row,
        "events": int(len(tot.get("step", []))),
        "test_acc_before": float(ev["test_acc"][at[0]]) if len(at) else math.nan,
        "test_acc_final": float(ev["test_acc"][-1]),
        "train_acc_final": float(ev["train_acc"][-1]),
        "loss_final": float(r.steps("loss")[-1]),
    }


def _wus(ctx: ExperimentContext, rep: Report) -> dict[str, Any]:
    opts: dict[str, Any] = ctx.size(
        {}, {"warmup": 2, "window": 2, "patience": 1, "threshold": 1.0, "skip_windows": 1}
    )
    runs = {
        "baseline": lenet_digits(ctx, record="layers"),
        # A run with any technique computes its forward pass through torch.func.functional_call;
        # an inactive technique (freeze from a step never reached) takes that same code path
        # without changing training, so it is the like-for-like baseline for step times.
        "baseline-same-path": lenet_digits(ctx, record="layers", techniques=[INACTIVE]),
        "wus": lenet_digits(ctx, record="layers", techniques=[{"name": "wus", **opts}]),
        "wus-lr": lenet_digits(ctx, record="layers", techniques=[{"name": "wus-lr", **opts}]),
    }
    stats: dict[str, Any] = {}
    for key, s in runs.items():
        info = rep.use(
            ctx.train(f"{s.label}-{key}" if key != "baseline" else f"{s.label}-layers", s.config)
        )
        with info.open() as r:
            stats[key] = wus_stats(r, key if key.startswith("wus") else None)
            stats[key]["run"] = info.label
    base = stats["baseline-same-path"]
    rows = []
    for key, x in stats.items():
        saved = 1 - x["train_seconds"] / base["train_seconds"] if key.startswith("wus") else None
        rows.append(
            [
                key,
                x["steps"],
                x.get("skipped", 0),
                fmt(x["train_seconds"], 4),
                fmt(x["ms_step"], 4),
                fmt(x.get("ms_normal"), 4),
                fmt(x.get("ms_skipped"), 4),
                pct(saved) if saved is not None else "—",
                pct(x.get("saving_within_run")) if key.startswith("wus") else "—",
                pct(x["train_acc"]),
                pct(x["test_acc"]),
                fmt(x["loss_final"]),
                x["run"],
            ]
        )
        if saved is not None:
            x["saving_vs_baseline"] = saved
    rep.heading("Weight update skipping vs baseline (LeNet on digits)")
    rep.text(
        "WUS options: the technique's defaults"
        + ("" if not opts else f" shrunk for --tiny ({opts})")
        + ": every `window` steps the "
        "training accuracy is checked; after `warmup` steps, `patience` checks that changed "
        "less than `threshold` start `skip_windows` windows in which Linear/Conv weights do "
        "not update (biases do). *train s* = Σ /series/steps/seconds_train (forward, backward "
        "and optimizer step; no LCA, no accuracy checks). *baseline-same-path* carries an "
        "inactive technique (freeze from step 10⁹), so its forward pass takes the same "
        "`torch.func.functional_call` path as the WUS runs while training identically to "
        "*baseline*; *saved vs baseline* compares with it (another moment on a shared machine: "
        "noisy); *saved within run* compares the run's own skipped and normal steps "
        "(1 − total ÷ (normal step time × steps))."
    )
    rep.table(
        [
            "run",
            "steps",
            "skipped steps",
            "train s",
            "ms/step",
            "ms/normal step",
            "ms/skipped step",
            "saved vs baseline %",
            "saved within run %",
            "train acc %",
            "test acc %",
            "final loss",
            "run file label",
        ],
        rows,
    )
    return stats


def _prune(ctx: ExperimentContext, rep: Report) -> dict[str, Any]:
    sparsities = ctx.size((0.8, 0.95), (0.8,))
    start = ctx.size(250, 8)
    base_setup = fc_mnist_digits(ctx)
    base = rep.use(ctx.train(base_setup.label, base_setup.config))
    with base.open() as r:
        ev = eval_rows(r)
        at = np.flatnonzero(ev["train_step"] == start)
        baseline = {
            "test_acc_at_start": float(ev["test_acc"][at[0]]) if len(at) else math.nan,
            "test_acc_final": float(ev["test_acc"][-1]),
            "loss_final": float(r.steps("loss")[-1]),
        }
    stats: dict[str, Any] = {"baseline": baseline, "start": start, "runs": {}}
    rows = []
    for s in sparsities:
        for name in PRUNERS:
            spec = {"name": name, "sparsity": s, "start": start, "schedule": "oneshot"}
            setup = fc_mnist_digits(ctx, techniques=[spec])
            info = rep.use(ctx.train(f"{setup.label}-{name}-{int(round(100 * s))}", setup.config))
            with info.open() as r:
                x = prune_stats(r, name, start)
            x["run"] = info.label
            stats["runs"][f"{name}@{s}"] = {"method": name, "sparsity": s, **x}
            rows.append(
                [
                    name,
                    pct(s, 0),
                    f"{int(x.get('removed', 0)):,}",
                    fmt(x.get("loss_before")),
                    fmt(x.get("loss_after")),
                    sci(x.get("cost")),
                    sci(x.get("cost_removed")),
                    sci(x.get("cost_compensated")),
                    sci(x.get("error"), 2),
                    fmt(x.get("helper_removal_ratio"), 3),
                    pct(x["test_acc_before"]),
                    pct(x["test_acc_final"]),
                    fmt(x["loss_final"]),
                    info.label,
                ]
            )
    rep.heading("Pruning at equal sparsity (fc-mnist on digits)")
    rep.text(
        f"One-shot pruning of every Linear layer to the same sparsity at step {start} of "
        f"{base_setup.config.steps}, then training continues to the end. Unpruned baseline: test "
        f"accuracy {pct(baseline['test_acc_at_start'])}% at step {start}, "
        f"{pct(baseline['test_acc_final'])}% at the end, final loss "
        f"{fmt(baseline['loss_final'])}. Columns from /techniques/<name>/event_totals: loss "
        "before / after the event (measurement set), *cost* = ΣA of the event's segment, split "
        "into the removed weights and the compensating survivors (L-OBS moves them; the other "
        "methods only zero weights, so their compensation part is 0); *unallocated* = what "
        "Simpson's rule missed on this one large jump; *helper-removal ratio* = "
        "mean cumulative LCA of the removed weights ÷ that of the survivors before the event "
        "(> 1: the removed weights had helped more per weight than those kept; < 0: they had "
        "hurt on balance). Accuracies from /eval."
    )
    rep.table(
        [
            "method",
            "sparsity %",
            "removed",
            "loss before",
            "loss after",
            "cost (ΣA)",
            "on removed",
            "on compensating",
            "unallocated (ΔL − ΣA)",
            "helper-removal ratio",
            "test acc before %",
            "test acc final %",
            "final loss",
            "run",
        ],
        rows,
    )
    return stats


def _finite(x: float | None) -> float:
    return x if x is not None and math.isfinite(x) else math.inf


def _figure(prune: dict[str, Any]) -> Any:
    import plotly.graph_objects as go

    from ..figures.common import base_layout

    fig = go.Figure()
    colors = {"prune-magnitude": "#2c7fb8", "prune-lobs": "#fdae61", "prune-lca": "#7b3294"}
    for name in PRUNERS:
        xs = [v for v in prune["runs"].values() if v["method"] == name]
        fig.add_trace(
            go.Bar(
                x=[f"{100 * v['sparsity']:.0f}%" for v in xs],
                y=[v.get("cost", math.nan) for v in xs],
                name=name,
                marker_color=colors[name],
            )
        )
    base_layout(
        fig, "Loss cost of the prune event (ΣA of its segment; > 0 = loss went up)", height=420
    )
    fig.update_layout(barmode="group")
    fig.update_xaxes(title="sparsity")
    fig.update_yaxes(title="loss cost (loss units)")
    return fig


def build(ctx: ExperimentContext) -> Path:
    rep = Report(ctx, NAME, TITLE)
    wus = _wus(ctx, rep)
    prune = _prune(ctx, rep)
    rep.figure(_figure(prune), "prune-cost", "loss cost of each prune event by method and sparsity")
    rep.finding("wus", wus)
    rep.finding("prune", prune)
    rep.heading("What this shows")
    lines = []
    for key in ("wus", "wus-lr"):
        x = wus[key]
        lines.append(
            f"- {key}: {x.get('skipped', 0)} of {x['steps']} steps skipped weight updates; "
            f"training time saved {pct(x.get('saving_within_run'))}% within the run "
            f"({pct(x.get('saving_vs_baseline'))}% vs the same-path baseline run, noisy; paper "
            f"on CIFAR-10 CPU: {pct(PAPER_WUS_CPU_SAVING[key], 0)}%); test accuracy "
            f"{pct(x['test_acc'])}% vs {pct(wus['baseline']['test_acc'])}% baseline."
        )
    by_s: dict[float, list[dict[str, Any]]] = {}
    for v in prune["runs"].values():
        by_s.setdefault(v["sparsity"], []).append(v)
    for s, vs in by_s.items():
        cheapest = min(vs, key=lambda v: v.get("cost", math.inf))
        dearest = max(vs, key=lambda v: v.get("cost", -math.inf))
        best = max(vs, key=lambda v: v["test_acc_final"])
        low = min(vs, key=lambda v: _finite(v.get("helper_removal_ratio")))
        lines.append(
            f"- {pct(s, 0)}% sparsity: cheapest prune event {cheapest['method']} (cost "
            f"{sci(cheapest.get('cost'))}), dearest {dearest['method']} "
            f"({sci(dearest.get('cost'))}); best final test accuracy {best['method']} "
            f"({pct(best['test_acc_final'])}%); lowest helper-removal ratio {low['method']} "
            f"({fmt(low.get('helper_removal_ratio'), 3)}: the removed weights' past help per "
            "weight relative to the survivors')."
        )
    rep.text("\n".join(lines))
    rep.text(
        "A weight's past LCA says how much it helped so far, not what removing it now costs; "
        "magnitude and L-OBS estimate the latter (L-OBS also moves the survivors to compensate), "
        "which is why the cost column and the helper-removal column can rank the methods "
        "differently."
    )
    return rep.write()


def run(
    out_dir: str | Path,
    tiny: bool = False,
    data_dir: str | None = None,
    *,
    runs_dir: str | Path | None = None,
) -> Path:
    """Train (or reuse) the runs and write ``out_dir/techniques.md``; return its path."""
    from . import run_one

    return run_one(NAME, out_dir, tiny=tiny, data_dir=data_dir, runs_dir=runs_dir)
