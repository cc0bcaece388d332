"""Experiment ``layers``: which layers help, and is it in proportion to their size?

The paper (Lan et al. 2019): on MNIST, every layer of the fully connected net and of LeNet helps
overall, roughly in proportion to its number of parameters; on CIFAR-10, ResNet-20's **first and
last layers hurt overall** (positive total LCA), and two last-layer weights oscillate with LCA
alternating in sign. We report per-layer (per-module: weight + bias) totals, their share of the
total, LCA per parameter and the share of parameters, for fc-mnist and LeNet on digits and a
narrow ResNet-20 on digits (CIFAR-10 / MNIST when the data folder has them). What we find is
reported as found, including where it differs from the paper.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..store import Reader
from .common import ExperimentContext, Report, fmt, module_groups, pct, sci
from .setups import (
    cifar_setups,
    fc_mnist_digits,
    lenet_digits,
    mnist_setups,
    paper_setups,
    resnet20_digits,
)

NAME = "layers"
TITLE = "Which layers help: per-layer LCA totals"


def layer_table(r: Reader) -> list[dict[str, Any]]:
    """Per module: parameters, total LCA (Σ over steps and its tensors, from /layers/lca), share
    of the network's total, LCA per parameter, share of the parameters."""
    totals = r.layer_totals()
    groups = module_groups(r.names, r.shapes)
    grand = float(totals.sum())
    n_all = sum(c for _, _, c in groups)
    return [
        {
            "module": m,
            "params": c,
            "total": float(totals[idx].sum()),
            "share": float(totals[idx].sum()) / grand if grand else math.nan,
            "per_param": float(totals[idx].sum()) / c if c else math.nan,
            "param_share": c / n_all if n_all else math.nan,
        }
        for m, idx, c in groups
    ]


def size_correlation(rows: list[dict[str, Any]]) -> float:
    """Pearson r between the share of parameters and the share of the loss decrease."""
    x = np.array([r["param_share"] for r in rows])
    y = np.array([r["share"] for r in rows])
    if len(rows) < 3 or x.std() == 0 or y.std() == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def oscillation(r: Reader, name: str = "out.weight") -> dict[str, Any] | None:
    """The two weights of ``name`` that moved most (largest Σ|A|): their net LCA and how often
    their LCA changed sign from one step to the next; plus that rate for the whole tensor and for
    the whole network. Needs per-weight LCA over time (record = full)."""
    if r.record != "full" or name not in r.names:
        return None
    t = r.num_steps
    kind = r.steps("kind")

    def flips(a: np.ndarray) -> np.ndarray:
        s = np.sign(a)
        both = (s[1:] != 0) & (s[:-1] != 0)
        changed = (s[1:] != s[:-1]) & both
        with np.errstate(invalid="ignore", divide="ignore"):
            return changed.sum(axis=0) / both.sum(axis=0)

    a = np.asarray(r.param_lca(name, 0, t), dtype=np.float64).reshape(t, -1)[kind == 0]
    turnover = np.abs(a).sum(axis=0)
    top = np.argsort(-turnover, kind="stable")[:2]
    rate = flips(a)
    net_rates = []
    for n in r.names:
        b = np.asarray(r.param_lca(n, 0, t), dtype=np.float64).reshape(t, -1)[kind == 0]
        net_rates.append(flips(b))
    allr = np.concatenate(net_rates)
    shape = r.shapes[name]
    return {
        "tensor": name,
        "weights": [
            {
                "index": [int(i) for i in np.unravel_index(int(k), shape)],
                "net": float(a[:, k].sum()),
                "abs_sum": float(turnover[k]),
                "flip_rate": float(rate[k]),
            }
            for k in top
        ],
        "tensor_flip_rate": float(np.nanmean(rate)),
        "network_flip_rate": float(np.nanmean(allr)),
    }


def build(ctx: ExperimentContext) -> Path:
    from .. import figures as F

    rep = Report(ctx, NAME, TITLE)
    setups = [
        fc_mnist_digits(ctx),
        lenet_digits(ctx),
        resnet20_digits(ctx),
        *mnist_setups(ctx),
        *paper_setups(ctx),
        *cifar_setups(ctx),
    ]
    rep.text(
        "Paper: on MNIST every layer of the FC net and of LeNet helps, roughly in proportion to "
        "its size; on CIFAR-10 ResNet-20's first and last layers hurt overall, and two "
        "last-layer weights oscillate (net LCA +3.41e-3 and −3.03e-3). Totals are Σ over all "
        "steps of /layers/lca, grouped per module (weight + bias; BatchNorm γ/β are their own "
        "module). *share* = the module's part of the network's total (which is L_T − L_0 up to "
        "the integration error); negative total = the layer helped."
        + (
            ""
            if any(s.config.dataset == "cifar10" for s in setups)
            else " No CIFAR-10 folder was given (--data-dir), so ResNet-20 runs on 8×8 digits at "
            "width 4 and for a few hundred steps instead of width 16 for 4,500 steps on "
            "CIFAR-10: a much easier problem, so the comparison with the paper is loose."
        )
    )
    findings: dict[str, Any] = {}
    for s in setups:
        info = rep.use(ctx.train(s.label, s.config))
        with info.open() as r:
            rows = layer_table(r)
            osc = oscillation(r) if s.config.model == "resnet20" else None
            loss = r.steps("loss")
            cum = r.layer_lca(cumulative=True)
            names = list(r.names)
        corr = size_correlation(rows)
        helped = [x["module"] for x in rows if x["total"] < 0]
        hurt = [x["module"] for x in rows if x["total"] > 0]
        findings[s.label] = {
            "layers": rows,
            "size_correlation": corr,
            "helped": helped,
            "hurt": hurt,
            "loss0": float(loss[0]),
            "loss_final": float(loss[-1]),
            "oscillation": osc,
            "first": rows[0],
            "last": rows[-1],
        }
        rep.heading(f"{s.label}: {s.note}")
        rep.table(
            [
                "layer",
                "params",
                "share of params %",
                "total LCA",
                "share of total LCA %",
                "LCA per param",
                "verdict",
            ],
            [
                [
                    x["module"],
                    f"{x['params']:,}",
                    pct(x["param_share"]),
                    sci(x["total"]),
                    pct(x["share"]),
                    sci(x["per_param"]),
                    "helped" if x["total"] < 0 else "hurt" if x["total"] > 0 else "did not move",
                ]
                for x in rows
            ],
        )
        rep.text(
            f"Loss {fmt(float(loss[0]))} → {fmt(float(loss[-1]))}. {len(helped)} of {len(rows)} "
            f"layers helped overall; hurt: {', '.join(hurt) or 'none'}. Pearson r between share "
            f"of parameters and share of total LCA: {fmt(corr, 3)}."
        )
        if osc is not None:
            w = osc["weights"]
            rep.text(
                "Most active weights of the last layer (largest Σ|A|): "
                + "; ".join(
                    f"out.weight{tuple(x['index'])}: net {sci(x['net'])}, Σ|A| "
                    f"{sci(x['abs_sum']).lstrip('+')}, sign changes on "
                    f"{pct(x['flip_rate'])}% of consecutive steps"
                    for x in w
                )
                + f". Mean sign-change rate: out.weight {pct(osc['tensor_flip_rate'])}%, "
                f"whole network {pct(osc['network_flip_rate'])}%."
            )
        mods = [x["module"] for x in rows]
        rep.figure(
            F.layer_totals(
                mods,
                np.array([x["total"] for x in rows]),
                [x["params"] for x in rows],
                title=f"Total LCA per layer, {s.label}",
            ),
            f"{s.label}-totals",
            f"total LCA per layer, {s.label}",
        )
        if s.config.model == "resnet20":
            rep.figure(
                F.cumulative_layers(cum, names, title=f"Cumulative LCA per tensor, {s.label}"),
                f"{s.label}-cumulative",
                f"cumulative LCA per tensor over training, {s.label}",
            )
    rep.finding("runs", findings)
    rep.heading("What this shows")
    lines = []
    for label, f in findings.items():
        first, last = f["first"], f["last"]
        lines.append(
            f"- {label}: {len(f['helped'])} of {len(f['layers'])} layers helped; first layer "
            f"{first['module']} {sci(first['total'])} ({'hurt' if first['total'] > 0 else 'helped'}"
            f"), last layer {last['module']} {sci(last['total'])} "
            f"({'hurt' if last['total'] > 0 else 'helped'}); r(size share, LCA share) = "
            f"{fmt(f['size_correlation'], 3)}."
        )
    rep.text("\n".join(lines))
    return rep.write()


def run(
    out_dir: str | Path,
    tiny: bool = False,
    data_dir: str | None = None,
    *,
    runs_dir: str | Path | None = None,
) -> Path:
    """Train (or reuse) the runs and write ``out_dir/layers.md``; return its path."""
    from . import run_one

    return run_one(NAME, out_dir, tiny=tiny, data_dir=data_dir, runs_dir=runs_dir)
