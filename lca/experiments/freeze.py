"""Experiment ``freeze``: what changes when the last layer is frozen from the start?

The paper (Lan et al. 2019, Fig. 7) froze the last layer and saw learning move to other layers;
it gives no magnitude. We train each net twice from the same seed, once as is and once with the
``freeze`` technique on ``out`` from step 0 (its weights stay at their random initialization),
and put the per-layer LCA and the final loss side by side, all read from the two run files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..store import Reader
from .common import ExperimentContext, Report, fmt, module_groups, pct, sci
from .setups import fc_mnist_digits, paper_setups, resnet20_digits

NAME = "freeze"
TITLE = "Freezing the last layer"
FREEZE = {"name": "freeze", "layers": ["out"], "start": 0}


def per_module(r: Reader) -> dict[str, tuple[float, int]]:
    """module -> (total LCA, parameter count)."""
    totals = r.layer_totals()
    return {m: (float(totals[idx].sum()), c) for m, idx, c in module_groups(r.names, r.shapes)}


def outcome(r: Reader) -> dict[str, float]:
    """Loss before and after (measurement set), final train / test accuracy (last /eval row)."""
    loss = r.steps("loss")
    ev = r.events("eval")
    return {
        "loss0": float(loss[0]),
        "loss_final": float(loss[-1]),
        "train_acc": float(ev["train_acc"][-1]),
        "test_acc": float(ev["test_acc"][-1]),
        "test_loss": float(ev["test_loss"][-1]),
    }


def build(ctx: ExperimentContext) -> Path:
    import plotly.graph_objects as go

    from ..figures.common import base_layout

    rep = Report(ctx, NAME, TITLE)
    rep.text(
        "Each net is trained twice from the same seed: *baseline*, and *frozen* with the "
        "`freeze` technique on the last layer (`out`, weight and bias) from step 0, so it keeps "
        "its random initialization. Per-layer totals are Σ of /layers/lca per module; a frozen "
        "layer has exactly 0. *share of ΔL* = the layer's part of the run's total LCA. Loss = "
        "the measurement-set loss (/steps/loss); accuracies from the last /eval row."
    )
    findings: dict[str, Any] = {}
    pairs = [
        (make(ctx), make(ctx, techniques=[FREEZE])) for make in (fc_mnist_digits, resnet20_digits)
    ]
    # --scale paper: the paper's own nets on 28×28 images, frozen the same way
    pairs += zip(paper_setups(ctx), paper_setups(ctx, techniques=[FREEZE]), strict=True)
    for base_setup, frozen_setup in pairs:
        base = rep.use(ctx.train(base_setup.label, base_setup.config))
        frozen = rep.use(ctx.train(base_setup.label + "-freeze-out", frozen_setup.config))
        with base.open() as r:
            b_mod, b_out = per_module(r), outcome(r)
        with frozen.open() as r:
            f_mod, f_out = per_module(r), outcome(r)
        b_sum = sum(v for v, _ in b_mod.values())
        f_sum = sum(v for v, _ in f_mod.values())
        rows = []
        for m, (bv, c) in b_mod.items():
            fv = f_mod[m][0]
            rows.append(
                [m, f"{c:,}", sci(bv), pct(bv / b_sum), sci(fv), pct(fv / f_sum), sci(fv - bv)]
            )
        rows.append(
            [
                "all",
                f"{sum(c for _, c in b_mod.values()):,}",
                sci(b_sum),
                "100.0",
                sci(f_sum),
                "100.0",
                sci(f_sum - b_sum),
            ]
        )
        rep.heading(f"{base_setup.label}: {base_setup.note}")
        rep.table(
            [
                "layer",
                "params",
                "LCA baseline",
                "share of ΔL baseline %",
                "LCA frozen",
                "share of ΔL frozen %",
                "frozen − baseline",
            ],
            rows,
        )
        rep.table(
            ["run", "loss before", "loss after", "train acc %", "test acc %", "test loss"],
            [
                [
                    lab,
                    fmt(o["loss0"]),
                    fmt(o["loss_final"]),
                    pct(o["train_acc"]),
                    pct(o["test_acc"]),
                    fmt(o["test_loss"]),
                ]
                for lab, o in (("baseline", b_out), ("last layer frozen", f_out))
            ],
        )
        mods = list(b_mod)
        fig = go.Figure(
            [
                go.Bar(
                    x=mods, y=[b_mod[m][0] for m in mods], name="baseline", marker_color="#2c7fb8"
                ),
                go.Bar(
                    x=mods,
                    y=[f_mod[m][0] for m in mods],
                    name="last layer frozen",
                    marker_color="#fdae61",
                ),
            ]
        )
        base_layout(
            fig,
            f"Total LCA per layer, {base_setup.label}: baseline vs last layer "
            "frozen (below 0 = helped)",
            height=440,
        )
        fig.update_layout(barmode="group")
        fig.update_xaxes(title="layer", tickangle=-30 if len(mods) > 6 else 0)
        fig.update_yaxes(title="total LCA (loss units)", exponentformat="e")
        rep.figure(
            fig,
            f"{base_setup.label}-compare",
            f"per-layer LCA, baseline vs frozen, {base_setup.label}",
        )
        moved = {m: f_mod[m][0] - b_mod[m][0] for m in mods if m != "out"}
        most = min(moved, key=lambda m: moved[m]) if moved else None
        findings[base_setup.label] = {
            "baseline": b_out,
            "frozen": f_out,
            "layers": {
                m: {"baseline": b_mod[m][0], "frozen": f_mod[m][0], "params": b_mod[m][1]}
                for m in mods
            },
            "out_share_baseline": b_mod["out"][0] / b_sum if b_sum else None,
            "gained_most": most,
        }
        below_base = b_sum - b_mod["out"][0]
        extra = f_sum - below_base  # < 0: the layers below did more of the decrease
        findings[base_setup.label]["below_out_baseline"] = below_base
        findings[base_setup.label]["below_out_frozen"] = f_sum
        rep.text(
            f"In the baseline `out` allocated {sci(b_mod['out'][0])} of {sci(b_sum)} "
            f"({pct(b_mod['out'][0] / b_sum)}%). With `out` frozen the layers below it "
            f"allocate {sci(f_sum)} against {sci(below_base)} in the baseline: "
            + (
                f"they took over {pct(extra / b_mod['out'][0])}% of what `out` had done"
                if extra < 0 and b_mod["out"][0] < 0
                else "they did not take over its share"
            )
            + f". The layer whose LCA grew most in helping: {most} "
            f"({sci(moved[most]) if most else 'n/a'}). Final loss {fmt(b_out['loss_final'])} → "
            f"{fmt(f_out['loss_final'])}, test accuracy {pct(b_out['test_acc'])}% → "
            f"{pct(f_out['test_acc'])}%."
        )
    rep.finding("runs", findings)
    return rep.write()


def run(
    out_dir: str | Path,
    tiny: bool = False,
    data_dir: str | None = None,
    *,
    runs_dir: str | Path | None = None,
) -> Path:
    """Train (or reuse) the runs and write ``out_dir/freeze.md``; return its path."""
    from . import run_one

    return run_one(NAME, out_dir, tiny=tiny, data_dir=data_dir, runs_dir=runs_dir)
