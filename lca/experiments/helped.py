"""Experiment ``helped``: how many parameters help on a step, and how often does each one help?

The paper (Lan et al. 2019, §3): barely over 50% of parameters help on any iteration; each
parameter helps about half of the iterations; the histogram of all LCA values is heavy-tailed,
peaked at 0, with slightly more mass below 0. We measure the same on the paper's fc-mnist and
LeNet nets, on the bundled 8×8 digits (the nets adapt: fc-mnist becomes 64-100-50-10, LeNet's
dense layer sees 40×2×2), and on MNIST when the data folder has it.

Two denominators matter and both are reported: "of all parameters" counts weights that never
move (on digits the always-blank border pixels give their first-layer weights a zero gradient,
so they sit at A = 0 on every step), "of the moving ones" leaves them out.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..store import Reader
from ..views.heldout import generalization_view, rounding_mask
from .common import ExperimentContext, Report, fmt, pct, sci
from .setups import fc_mnist_digits, lenet_digits, mnist_setups, paper_setups

NAME = "helped"
TITLE = "How many parameters help, and how often"
HIST_VALUES = 3_000_000  # LCA values drawn in the histogram figure (seeded sample of steps)


def step_stats(r: Reader) -> dict[str, float]:
    """Per-step shares (optimizer steps only), from /steps/helped and /steps/hurt."""
    kind = r.steps("kind")
    helped = r.steps("helped")[kind == 0]
    hurt = r.steps("hurt")[kind == 0]
    moved = helped + hurt
    with np.errstate(invalid="ignore", divide="ignore"):
        of_moved = np.where(moved > 0, helped / moved, np.nan)
    return {
        "steps": int(len(helped)),
        "helped_mean": float(helped.mean()),
        "helped_min": float(helped.min()),
        "helped_max": float(helped.max()),
        "hurt_mean": float(hurt.mean()),
        "still_mean": float((1 - moved).mean()),
        "helped_of_moved_mean": float(np.nanmean(of_moved)),
        "steps_majority_helped": float((helped > hurt).mean()),
        # The second half alone: early steps, where most parameters move downhill together,
        # weigh much more in our short runs than in the paper's long ones.
        "helped_of_moved_late": float(np.nanmean(of_moved[len(of_moved) // 2 :])),
    }


def heldout_stats(r: Reader) -> dict[str, float] | None:
    """For a run with LCA of the held-out loss (``measure_val``): the mean share of parameters
    that helped it per optimizer step, and of the weights that moved, the share that helped
    the training loss over the run but hurt the held-out one; None without it."""
    if not r.has_val:
        return None
    kind = r.steps("kind")
    g = generalization_view(r)
    counted = int((g.helped_both + g.train_only + g.val_only + g.hurt_both).sum())
    return {
        "val_helped_mean": float(np.mean(r.val_steps("helped")[kind == 0])),
        "helped_both": int(g.helped_both.sum()) / counted if counted else math.nan,
        "train_only": int(g.train_only.sum()) / counted if counted else math.nan,
        "val_only": int(g.val_only.sum()) / counted if counted else math.nan,
        "val_conservation_error": g.val_conservation_error,
    }


def param_stats(r: Reader) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Per-parameter fraction of steps helped (/params/<name>/helped_steps over T), for the
    parameters that moved at all (total LCA ≠ 0) and whose gradient is not structurally zero
    (``lca.views.rounding_tensors``: their A is rounding noise with a random sign, so they would
    count as helped on half the steps); returns (stats, helped_steps, totals), the rounding-level
    parameters' totals set to 0 so figures leave them out too."""
    t = r.num_steps
    noise = rounding_mask(r)
    hs = np.concatenate([np.asarray(r.param_helped_steps(n)).ravel() for n in r.names])
    tot = np.concatenate(
        [
            np.zeros(math.prod(r.shapes[n])) if z else np.asarray(r.param_totals(n)).ravel()
            for n, z in zip(r.names, noise, strict=True)
        ]
    )
    structural = int(sum(math.prod(r.shapes[n]) for n, z in zip(r.names, noise, strict=True) if z))
    moved = tot != 0
    frac = hs[moved] / t
    out = {
        "params": int(hs.size),
        "never_moved": int((~moved).sum()) - structural,
        "structural_zero": structural,
        "frac_mean": float(frac.mean()) if frac.size else math.nan,
        "frac_median": float(np.median(frac)) if frac.size else math.nan,
        "frac_p10": float(np.quantile(frac, 0.1)) if frac.size else math.nan,
        "frac_p90": float(np.quantile(frac, 0.9)) if frac.size else math.nan,
        "frac_40_60": float(((frac >= 0.4) & (frac <= 0.6)).mean()) if frac.size else math.nan,
        "hurt_overall": float((tot[moved] > 0).mean()) if moved.any() else math.nan,
    }
    return out, hs, tot


def value_stats(r: Reader, sample: int = HIST_VALUES) -> tuple[dict[str, float], np.ndarray, int]:
    """The distribution of every LCA value A_{t,i} (record=full runs): shares < 0, = 0, > 0,
    excess kurtosis of the non-zero values (heavy tails: ≫ 0), and their sums. Also returns a
    seeded sample of whole steps (for the histogram figure) and how many steps it holds."""
    t = r.num_steps
    kind = r.steps("kind")
    steps = np.flatnonzero(kind == 0)
    per_step = max(1, r.num_params)
    k = min(len(steps), max(1, sample // per_step))
    rng = np.random.default_rng(0)
    chosen = np.sort(rng.choice(steps, size=k, replace=False)) if k < len(steps) else steps
    neg = pos = zero = 0
    s1 = s2 = s3 = s4 = 0.0
    sum_neg = sum_pos = 0.0
    n_nz = 0
    drawn = []
    for name in r.names:
        raw = np.asarray(r.param_lca(name, 0, t)).reshape(t, -1)
        drawn.append(raw[chosen].ravel())
        a = raw[kind == 0].astype(np.float64)
        neg += int((a < 0).sum())
        pos += int((a > 0).sum())
        zero += int((a == 0).sum())
        nz = a[a != 0]
        n_nz += nz.size
        s1 += float(nz.sum())
        s2 += float((nz**2).sum())
        s3 += float((nz**3).sum())
        s4 += float((nz**4).sum())
        sum_neg += float(nz[nz < 0].sum())
        sum_pos += float(nz[nz > 0].sum())
    total = neg + pos + zero
    mean = s1 / n_nz if n_nz else math.nan
    var = s2 / n_nz - mean**2 if n_nz else math.nan
    m4 = (s4 - 4 * mean * s3 + 6 * mean**2 * s2) / n_nz - 3 * mean**4 if n_nz else math.nan
    out = {
        "values": total,
        "share_neg": neg / total,
        "share_pos": pos / total,
        "share_zero": zero / total,
        "neg_of_nonzero": neg / (neg + pos) if neg + pos else math.nan,
        "excess_kurtosis": m4 / var**2 - 3 if var and var > 0 else math.nan,
        "sum_neg": sum_neg,
        "sum_pos": sum_pos,
    }
    return out, np.concatenate(drawn), len(chosen)


def _side(x: float, target: float = 0.5, near: float = 0.03) -> str:
    if not math.isfinite(x):
        return "n/a"
    if abs(x - target) <= near:
        return "close to"
    return "above" if x > target else "below"


def _compare(f: dict[str, Any]) -> str:
    """One paragraph comparing a run with the paper, worded from its numbers."""
    st, ps, vs = f["step"], f["param"], f["values"]
    late, whole = st["helped_of_moved_late"], st["helped_of_moved_mean"]
    gain = abs(whole - 0.5) - abs(late - 0.5)
    closer = "closer to" if gain > 0.02 else "further from" if gain < -0.02 else "about as far from"
    text = (
        f"- Against the paper ({f['label']}): per step {pct(st['helped_mean'])}% of all "
        f'parameters helped, {_side(st["helped_mean"])} the paper\'s "barely over 50%"; of the '
        f"parameters that moved, {pct(st['helped_of_moved_mean'])}% helped on average and "
        f"{pct(st['helped_of_moved_late'])}% over the second half of the steps "
        f"({closer} one half once the early steps are left out). A moving parameter helped on "
        f"a median {pct(ps['frac_median'])}% of the steps, {_side(ps['frac_median'])} the "
        'paper\'s "about half".'
    )
    if vs:
        text += (
            f" Of the non-zero LCA values {pct(vs['neg_of_nonzero'], 2)}% are < 0 (paper: "
            f'"slightly more mass < 0"), with excess kurtosis {fmt(vs["excess_kurtosis"], 3)}'
            + (
                " (heavy tails around a sharp peak at 0, as in the paper)."
                if vs["excess_kurtosis"] and vs["excess_kurtosis"] > 3
                else " (not the paper's heavy tails)."
            )
        )
    return text


def _setup_facts(s: Any, info: Any) -> dict[str, Any]:
    """What a reader of the per-scale table needs to know about a run (and its scale)."""
    with info.open() as r:
        loss = r.steps("loss")
        size = r.measure_size
    return {
        "note": s.note,
        "dataset": s.config.dataset,
        "model": s.config.model,
        "steps": s.config.steps,
        "measure_size": size,
        "method": s.config.method,
        "record": s.config.record,
        "loss0": float(loss[0]),
        "loss_final": float(loss[-1]),
    }


def build(ctx: ExperimentContext) -> Path:
    from .. import figures as F

    rep = Report(ctx, NAME, TITLE)
    setups = [fc_mnist_digits(ctx), lenet_digits(ctx), *mnist_setups(ctx), *paper_setups(ctx)]
    rep.text(
        "Paper (Lan et al. 2019): barely over 50% of parameters help on any iteration; each "
        "parameter helps on about half of the iterations; the histogram of all LCA values is "
        "heavy-tailed and peaked at 0 with slightly more mass below 0. Here the paper's fc-mnist "
        "and LeNet are trained on the bundled 8×8 digits, where they adapt to the input "
        "(fc-mnist becomes 64-100-50-10 with 12,060 parameters instead of 84,060; LeNet's dense "
        "layer sees 40×2×2 features, 88,970 parameters instead of 808,970)"
        + (
            ", and on 28×28 images (an MNIST subset with --data-dir; the paper's protocol with "
            "--scale paper)."
            if len(setups) > 2
            else "; no MNIST folder was given (--data-dir), so there are no MNIST rows."
        )
    )
    step_rows, param_rows, value_rows, heldout_rows = [], [], [], []
    findings: dict[str, Any] = {}
    for s in setups:
        info = rep.use(ctx.train(s.label, s.config))
        with info.open() as r:
            st = step_stats(r)
            ps, hs, tot = param_stats(r)
            t = r.num_steps
            vs = values = None
            used = 0
            if r.record == "full":
                vs, values, used = value_stats(r)
            helped, hurt, kind = r.steps("helped"), r.steps("hurt"), r.steps("kind")
            ho = heldout_stats(r)
        if ho is not None:
            heldout_rows.append(
                [
                    s.label,
                    pct(st["helped_mean"]),
                    pct(ho["val_helped_mean"]),
                    pct(ho["helped_both"]),
                    pct(ho["train_only"]),
                    pct(ho["val_only"]),
                    sci(ho["val_conservation_error"]),
                ]
            )
        findings[s.label] = {
            "label": s.label,
            "step": st,
            "param": ps,
            "values": vs,
            **({"heldout": ho} if ho is not None else {}),
        }
        findings[s.label]["setup"] = _setup_facts(s, info)  # RESULTS.md's column per scale
        step_rows.append(
            [
                s.label,
                st["steps"],
                pct(st["helped_mean"]),
                pct(st["helped_min"]),
                pct(st["helped_max"]),
                pct(st["hurt_mean"]),
                pct(st["still_mean"]),
                pct(st["helped_of_moved_mean"]),
                pct(st["helped_of_moved_late"]),
                pct(st["steps_majority_helped"]),
            ]
        )
        param_rows.append(
            [
                s.label,
                f"{ps['params']:,}",
                f"{ps['never_moved']:,}",
                f"{ps['structural_zero']:,}",
                pct(ps["frac_mean"]),
                pct(ps["frac_median"]),
                pct(ps["frac_p10"]),
                pct(ps["frac_p90"]),
                pct(ps["frac_40_60"]),
                pct(ps["hurt_overall"]),
            ]
        )
        if vs is not None:
            value_rows.append(
                [
                    s.label,
                    f"{vs['values']:,}",
                    pct(vs["share_neg"]),
                    pct(vs["share_zero"]),
                    pct(vs["share_pos"]),
                    pct(vs["neg_of_nonzero"], 2),
                    fmt(vs["excess_kurtosis"], 4),
                    sci(vs["sum_neg"]),
                    sci(vs["sum_pos"]),
                ]
            )
            rep.figure(
                F.lca_histogram(
                    values,
                    log=True,
                    steps_used=used,
                    steps_total=t,
                    title=f"All LCA values, {s.label} (log count)",
                ),
                f"{s.label}-histogram",
                f"histogram of all LCA values, {s.label}",
            )
        rep.figure(
            F.helped_fractions(
                helped,
                hurt,
                kind=kind,
                title=f"Share of parameters that helped per step, {s.label}",
            ),
            f"{s.label}-per-step",
            f"% helped / still / hurt on each step, {s.label}",
        )
        rep.figure(
            F.helped_fraction_histogram(
                hs, t, totals=tot, title=f"How often each parameter helped, {s.label}"
            ),
            f"{s.label}-per-param",
            f"fraction of steps each parameter helped, {s.label}",
        )
    rep.heading("Per step: share of parameters that helped")
    rep.table(
        [
            "run",
            "steps",
            "helped % (mean)",
            "min %",
            "max %",
            "hurt % (mean)",
            "did not move % (mean)",
            "helped % of moving (mean)",
            "helped % of moving (2nd half of steps)",
            "steps where helpers outnumber hurters %",
        ],
        step_rows,
    )
    rep.text(
        "From /steps/helped and /steps/hurt (fraction of *all* parameters with A < 0 and "
        "A > 0 on each optimizer step). *helped % of moving* = helped / (helped + hurt)."
    )
    rep.heading("Per parameter: fraction of steps on which it helped")
    rep.table(
        [
            "run",
            "params",
            "never moved",
            "structurally zero (left out)",
            "mean %",
            "median %",
            "10th pct %",
            "90th pct %",
            "params helping on 40-60% of steps, %",
            "params whose total LCA > 0 (hurt overall), %",
        ],
        param_rows,
    )
    rep.text(
        "From /params/<tensor>/helped_steps ÷ T, over the parameters that moved at all (total "
        "LCA ≠ 0); *never moved* counts those left out (e.g. first-layer weights of pixels that "
        "are blank in every training image); *structurally zero* counts the weights of "
        "tensors whose LCA is rounding noise on every step (e.g. a convolution's bias right "
        "before BatchNorm: |Σ A| ≤ √eps × the step's largest layer sum on every step), also "
        "left out, since their random signs would count as helped half the time."
    )
    if value_rows:
        rep.heading("All LCA values (every parameter on every step)")
        rep.table(
            [
                "run",
                "values",
                "< 0 %",
                "= 0 %",
                "> 0 %",
                "< 0 among non-zero %",
                "excess kurtosis (non-zero)",
                "sum of < 0",
                "sum of > 0",
            ],
            value_rows,
        )
        rep.text(
            "From /params/<tensor>/lca (record = full). Excess kurtosis 0 is a normal "
            "distribution; large values mean a sharp peak at 0 with heavy tails."
        )
    if heldout_rows:
        rep.heading("The held-out loss (runs with LCA of the validation split)")
        rep.table(
            [
                "run",
                "helped training % (mean per step)",
                "helped held-out % (mean per step)",
                "moving weights that helped both %",
                "helped training, hurt held-out %",
                "hurt training, helped held-out %",
                "held-out Σ(ΔL − ΣA)",
            ],
            heldout_rows,
        )
        rep.text(
            "From /series/lca_val (the same path measured on the held-out split, "
            "`--measure-val`); per weight from the run totals /params/<tensor>/total and "
            "/lca_val/total, structurally-zero tensors left out."
        )
    rep.finding("runs", findings)
    rep.heading("What this shows")
    rep.text("\n".join(_compare(f) for f in findings.values() if f))
    return rep.write()


def run(
    out_dir: str | Path,
    tiny: bool = False,
    data_dir: str | None = None,
    *,
    runs_dir: str | Path | None = None,
) -> Path:
    """Train (or reuse) the runs and write ``out_dir/helped.md``; return its path."""
    from . import run_one

    return run_one(NAME, out_dir, tiny=tiny, data_dir=data_dir, runs_dir=runs_dir)
