"""Experiment ``methods``: backprop vs DFA vs BDFA vs weight symmetry, seen through LCA.

Four runs per dataset from one seed and config, only the training method differs: plain
backpropagation, direct feedback alignment (``dfa``), binary DFA (``bdfa``) and weight symmetry
(``symmetry``, variant ``tri`` on the square hidden layer). LCA always uses the true gradient,
so it scores each method's updates the same way. Every number is read from the run files:
accuracy from the last /eval row, % helped = share of parameters whose total LCA is < 0
(``param_totals``; tensors with a structurally zero gradient left out, ``rounding_mask``, as
everywhere else in the app), alignment = the DFA runs' recorded cosine between their update and
the true gradient (mean over the first and last fifth of the steps), parameters saved = the symmetry
run's own summary.

Sizes: an MLP 64-64 on the bundled 8×8 digits, and on a 2,000-image Fashion-MNIST subset when
``/usr/share/datasets/fashion-mnist`` (or ``--data-dir``) has it: a few minutes on 2 shared cores.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..config import RunConfig
from ..store import Reader
from ..views.heldout import rounding_mask
from .common import ExperimentContext, Report, dataset_available, fmt, pct

NAME = "methods"
TITLE = "Training methods: backprop, DFA, BDFA and weight symmetry"
SYSTEM_DATA = "/usr/share/datasets"  # where Fashion-MNIST is looked for when --data-dir is unset
METHODS: dict[str, list[dict[str, Any]]] = {
    "backprop": [],
    "dfa": [{"name": "dfa"}],
    "bdfa": [{"name": "bdfa"}],
    "symmetry": [{"name": "symmetry", "variant": "tri"}],
}


def configs(ctx: ExperimentContext) -> list[tuple[str, dict[str, Any]]]:
    """(dataset label, base config values) for the datasets this machine has."""
    base = {
        "model": "mlp",
        "model_options": {"hidden": [64, 64]},
        "steps": ctx.size(300, 8),
        "optimizer": "sgd",
        "lr": 0.05,
        "batch_size": 64,
        "seed": 0,
        "method": "rk4",
        "record": "units",
        "device": "cpu",
        "eval_every": ctx.size(25, 4),
        "measure_size": ctx.size(500, 64),
    }
    out = [("digits", {**base, "dataset": "digits"})]
    data_dir = ctx.data_dir or (None if ctx.tiny else SYSTEM_DATA)  # tests: bundled data only
    if dataset_available("fashion-mnist", data_dir):
        out.append(
            (
                "fashion-mnist",
                {
                    **base,
                    "dataset": "fashion-mnist",
                    "data_dir": data_dir,
                    "subset": ctx.size(2000, 200),
                },
            )
        )
    return out


def measure(r: Reader) -> dict[str, Any]:
    """What the table shows for one run, all from its file.

    Helped shares count only the weights whose LCA is not rounding noise: a tensor with a
    structurally zero gradient (``rounding_mask``) has a random sign, so it is left out of both
    sides of the fraction, as the tracker, the pages and the ``helped`` experiment do.
    """
    ev = r.events("eval")
    noise = rounding_mask(r)
    totals = np.concatenate(
        [np.ravel(r.param_totals(n)) for n, z in zip(r.names, noise, strict=True) if not z]
    )
    params = sum(math.prod(r.shapes[n]) for n in r.names)
    out: dict[str, Any] = {
        "test_acc": float(ev["test_acc"][-1]),
        "train_acc": float(ev["train_acc"][-1]),
        "loss_final": float(r.steps("loss")[-1]),
        "helped": float((totals < 0).mean()) if totals.size else math.nan,
        "params": int(params),
        "structural_zero": int(params - totals.size),
    }
    summaries = r.technique_summaries()
    for name in ("dfa", "bdfa"):
        if f"techniques/{name}/alignment" in r.series_layout:
            a = np.asarray(r.series(f"techniques/{name}/alignment"), dtype=np.float64)
            k = max(1, len(a) // 5)
            out["alignment_first"] = float(np.nanmean(a[:k]))
            out["alignment_last"] = float(np.nanmean(a[-k:]))
    out["params_saved"] = int(summaries.get("symmetry", {}).get("params_saved", 0))
    # symmetry's mirrored entries never move (LCA exactly 0): helped among the learned ones
    learned = totals.size - out["params_saved"]
    out["helped_free"] = float((totals < 0).sum() / learned) if learned > 0 else math.nan
    return out


def build(ctx: ExperimentContext) -> Path:
    rep = Report(ctx, NAME, TITLE)
    rep.text(
        "Each dataset is trained four times from the same seed and config; only the training "
        "method differs. *DFA*/*BDFA*: the hidden layers learn from a fixed random (Gaussian / "
        "±1) projection of the output error, the output layer by backprop. *symmetry*: every "
        "square layer (`fc1` and `fc2` on 8×8 digits, `fc2` on Fashion-MNIST) uses "
        "Ŵ = triu(U) + triu(U,1)ᵀ. LCA is measured with the "
        "true gradient in every run. *helped %* = share of all parameters whose total LCA is "
        "< 0 (tensors with a structurally zero gradient, whose LCA is rounding noise, left out), "
        "*of learned* leaves out symmetry's mirrored entries too (never used, LCA exactly 0); "
        "*alignment* = cosine between the DFA update and the true gradient of each hidden "
        "layer, averaged over layers and the first / last fifth of the steps."
    )
    findings: dict[str, Any] = {}
    for label, values in configs(ctx):
        rows, found = [], {}
        for method, techs in METHODS.items():
            cfg = RunConfig.from_dict({**values, "techniques": techs})
            info = rep.use(ctx.train(f"{label}-{method}", cfg))
            with info.open() as r:
                m = measure(r)
            found[method] = m
            rows.append(
                [
                    method,
                    pct(m["test_acc"]),
                    fmt(m["loss_final"]),
                    pct(m["helped"]),
                    pct(m["helped_free"]),
                    fmt(m.get("alignment_first"), 3),
                    fmt(m.get("alignment_last"), 3),
                    f"{m['params_saved']:,} of {m['params']:,}",
                ]
            )
        rep.heading(f"{label}: MLP 64-64, {values['steps']} steps")
        rep.table(
            [
                "method",
                "test acc %",
                "final loss",
                "helped %",
                "helped % of learned",
                "alignment first",
                "alignment last",
                "params saved",
            ],
            rows,
        )
        findings[label] = found
    rep.text(
        "Size: 300 SGD steps per run, a 500-example measurement set and (Fashion-MNIST) a "
        "2,000-image training subset keep all eight runs to a few minutes on 2 shared CPU "
        "cores; longer runs were not measured here."
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
    """Train (or reuse) the runs and write ``out_dir/methods.md``; return its path."""
    from . import run_one

    return run_one(NAME, out_dir, tiny=tiny, data_dir=data_dir, runs_dir=runs_dir)
