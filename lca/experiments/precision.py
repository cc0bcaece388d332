"""Experiment ``precision``: what does rounding cost, per layer and bit-width? (SEED-TECHNIQUES
§7.5, the rounding residual leg.)

Per-tensor fixed-point training (``fixed-point``, Sakr & Shanbhag 2019) with
``rounding_segment``: every step's float update is one LCA segment and the rounding of the
weights onto the accumulator grid another (an intervention labelled ``fixed-point``), so the LCA
of the second leg is the loss the rounding cost, weight by weight. Four runs from one seed:
analytic precisions vs uniform 8 bits, each with stochastic and with nearest rounding of the
accumulator, beside a float32 baseline. Everything is read back from the run files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..store import Reader
from .common import ExperimentContext, Report, fmt, module_groups, pct, sci
from .setups import _digits

NAME = "precision"
TITLE = "Precision: the loss cost of rounding, per layer and bit-width"
VARIANTS = [  # label, fixed-point options
    ("analytic, stochastic", {"assign": "analytic", "rounding": "stochastic"}),
    ("analytic, nearest", {"assign": "analytic", "rounding": "nearest"}),
    ("uniform 8 bits, stochastic", {"assign": "uniform", "bits": 8, "rounding": "stochastic"}),
    ("uniform 8 bits, nearest", {"assign": "uniform", "bits": 8, "rounding": "nearest"}),
]


def rounding_cost(r: Reader) -> dict[str, Any]:
    """Per module: LCA of the rounding segments, of the update segments, and the bits."""
    kind = r.steps("kind")
    lca = np.asarray(r.layer_lca(), dtype=np.float64)  # (T, L)
    rounding = lca[kind == 1].sum(0)
    update = lca[kind == 0].sum(0)
    acc = (
        r.array("techniques/fixed-point/bits_accumulator")
        if r.has("techniques/fixed-point/bits_accumulator")
        else None
    )
    wbits = (
        r.array("techniques/fixed-point/bits_weights")
        if r.has("techniques/fixed-point/bits_weights")
        else None
    )
    out: dict[str, Any] = {}
    for m, idx, count in module_groups(r.names, r.shapes):
        w = [i for i in idx if r.names[i].endswith("weight")]
        out[m] = {
            "params": count,
            "rounding": float(rounding[idx].sum()),
            "update": float(update[idx].sum()),
            "bits_acc": float(acc[w[0]]) if acc is not None and w else None,
            "bits_w": float(wbits[w[0]]) if wbits is not None and w else None,
        }
    return out


def outcome(r: Reader) -> dict[str, float]:
    loss = r.steps("loss")
    ev = r.events("eval")
    lost = (
        r.series("techniques/fixed-point/updates_lost")
        if r.has("/series/techniques/fixed-point/updates_lost")
        else np.array([])
    )
    lost = np.asarray(lost, dtype=np.float64)
    return {
        "loss0": float(loss[0]),
        "loss_final": float(loss[-1]),
        "test_acc": float(ev["test_acc"][-1]),
        "updates_lost": float(np.nanmean(lost)) if np.isfinite(lost).any() else None,
    }


def build(ctx: ExperimentContext) -> Path:
    rep = Report(ctx, NAME, TITLE)
    rep.text(
        "MLP 64-32-32-10 on 8×8 digits, SGD with momentum 0.9, lr 0.05, batch 64, one seed. "
        "Each fixed-point run quantizes weights, activations, activation gradients, weight "
        "gradients and the weight accumulator per tensor; with `rounding_segment` the "
        "accumulator rounding of each step is its own LCA segment, so *rounding LCA* (Σ over "
        "those segments) is the loss the rounding cost (> 0 = hurt) and *update LCA* the loss "
        "the float updates bought. The split is exact for the total; it changes only how a "
        "step's LCA is divided between the two legs. *updates lost* = mean fraction of the "
        "weights an update moved that the rounding put back. Bits: accumulator / forward "
        "weights per layer."
    )
    base_cfg = _digits(
        ctx, "mlp", steps=300, tiny_steps=8, record="layers", model_options={"hidden": [32, 32]}
    )
    base = rep.use(ctx.train("digits-mlp32-float", base_cfg))
    with base.open() as r:
        b_out = outcome(r)
    rows_out = [
        ["float32", "32 / 32", fmt(b_out["loss_final"]), pct(b_out["test_acc"]), "–", "–", "–"]
    ]
    findings: dict[str, Any] = {"float": b_out, "runs": {}}
    layer_rows = []
    for label, opts in VARIANTS:
        spec = {"name": "fixed-point", "rounding_segment": True, **opts}
        cfg = _digits(
            ctx,
            "mlp",
            steps=300,
            tiny_steps=8,
            record="layers",
            model_options={"hidden": [32, 32]},
            techniques=[spec],
        )
        info = rep.use(
            ctx.train("digits-mlp32-fx-" + label.replace(" ", "-").replace(",", ""), cfg)
        )
        with info.open() as r:
            out, cost = outcome(r), rounding_cost(r)
        total_round = sum(v["rounding"] for v in cost.values())
        total_update = sum(v["update"] for v in cost.values())
        bits = ", ".join(
            f"{m} {v['bits_acc']:g}/{v['bits_w']:g}"
            for m, v in cost.items()
            if v["bits_acc"] is not None
        )
        rows_out.append(
            [
                label,
                bits,
                fmt(out["loss_final"]),
                pct(out["test_acc"]),
                sci(total_update),
                sci(total_round),
                pct(out["updates_lost"]),
            ]
        )
        for m, v in cost.items():
            layer_rows.append(
                [
                    label,
                    m,
                    f"{v['params']:,}",
                    "–" if v["bits_acc"] is None else f"{v['bits_acc']:g}",
                    "–" if v["bits_w"] is None else f"{v['bits_w']:g}",
                    sci(v["update"]),
                    sci(v["rounding"]),
                ]
            )
        findings["runs"][label] = {
            **out,
            "rounding_lca": total_round,
            "update_lca": total_update,
            "layers": cost,
        }
    rep.heading("Runs")
    rep.table(
        [
            "run",
            "bits acc/weights per layer",
            "final loss",
            "test acc %",
            "update LCA",
            "rounding LCA",
            "updates lost %",
        ],
        rows_out,
    )
    rep.heading("Per layer")
    rep.table(
        ["run", "layer", "params", "acc bits", "weight bits", "update LCA", "rounding LCA"],
        layer_rows,
    )
    runs = findings["runs"]
    if runs:
        sr = runs["uniform 8 bits, stochastic"]
        nr = runs["uniform 8 bits, nearest"]
        an = runs["analytic, stochastic"]
        rep.text(
            f"With 8-bit accumulators, nearest rounding put back {pct(nr['updates_lost'])}% of "
            f"the weight moves (final loss {fmt(nr['loss_final'])}) and stochastic rounding "
            f"{pct(sr['updates_lost'])}% (final loss {fmt(sr['loss_final'])}); the rounding "
            f"legs' LCA was {sci(nr['rounding_lca'])} and {sci(sr['rounding_lca'])} (below 0 = "
            "the rounding lowered the loss: a stochastic rounding that goes up a grid step "
            "completes many small updates at once). The analytic "
            f"precisions (stochastic) reached {fmt(an['loss_final'])} against float32's "
            f"{fmt(b_out['loss_final'])}, with a rounding cost of {sci(an['rounding_lca'])}. "
            "Where the accumulator and the forward weights share one grid (uniform 8 bits) and "
            "rounding is to nearest, the forward pass already used the rounded weights, so the "
            "rounding leg moves no effective weight and its LCA is exactly 0: there the cost of "
            "rounding is the updates that never arrive (updates lost), not a rounding segment."
        )
    rep.finding("precision", findings)
    return rep.write()


def run(
    out_dir: str | Path,
    tiny: bool = False,
    data_dir: str | None = None,
    *,
    runs_dir: str | Path | None = None,
) -> Path:
    """Train (or reuse) the runs and write ``out_dir/precision.md``; return its path."""
    from . import run_one

    return run_one(NAME, out_dir, tiny=tiny, data_dir=data_dir, runs_dir=runs_dir)
