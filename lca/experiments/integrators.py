"""Experiment ``integrators``: how exact and how costly is each LCA integrator?

The LCA paper published no error table for its integrators (REFERENCE §1), so this one is ours.
The same training trajectory (same seed and config; only the LCA method differs, and LCA never
feeds back into training) is allocated by every method in ``lca.METHODS``, plus Simpson with a
float64 measurement to show how much of Simpson's residual is float32 round-off. Everything is read
back from the run files: the per-step residual ΔL − ΣA (/steps/error), the measured loss
(/steps/loss), the gradient evaluations (/steps/evaluations), the splits of the adaptive rule
(/steps/splits) and the LCA time (/steps/seconds_lca).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..integrate import DEFAULT_TOLERANCE, METHODS, is_adaptive
from ..store import Reader
from .common import ExperimentContext, Report, fmt, pct, sci
from .setups import integrator_setup

NAME = "integrators"
TITLE = "LCA integrators: error and cost per step"
MODELS = ("mlp", "cnn-small")
TIGHT = 1e-4  # a second rk4-adaptive row: does splitting the step into panels cut the error?
_COLORS = ["#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#393b79"]


def errors(r: Reader) -> dict[str, float]:
    """The error and cost statistics of one run, all from the file (optimizer steps only).

    Per-step relative error |ΔL − ΣA| / |ΔL| is taken over steps whose |ΔL| > 0; the whole-run
    error is |Σ_t (ΔL_t − ΣA_t)| / |L_T − L_0| (errors of opposite sign cancel there).
    """
    loss = r.steps("loss").astype(np.float64)
    err = r.steps("error").astype(np.float64)
    kind = r.steps("kind")
    d_loss = np.diff(loss)
    keep = kind == 0
    err, d_loss = err[keep], d_loss[keep]
    nz = d_loss != 0
    rel = np.abs(err[nz]) / np.abs(d_loss[nz])
    change = float(loss[-1] - loss[0])
    return {
        "steps": int(keep.sum()),
        "mean_rel": float(rel.mean()) if rel.size else math.nan,
        "median_rel": float(np.median(rel)) if rel.size else math.nan,
        "worst_rel": float(rel.max()) if rel.size else math.nan,
        "mean_abs": float(np.abs(err).mean()) if err.size else math.nan,
        "worst_abs": float(np.abs(err).max()) if err.size else math.nan,
        "whole_run": abs(math.fsum(err.tolist())) / abs(change) if change else math.nan,
        "evaluations": float(r.steps("evaluations")[keep].mean()),
        "splits": float(r.steps("splits")[keep].mean()),
        "ms_lca": 1000 * float(r.steps("seconds_lca")[keep].mean()),
        "ms_train": 1000 * float(np.asarray(r.series("steps/seconds_train"))[keep].mean()),
        # Examples the LCA of one step evaluates (2 new gradients over the measurement set)
        # per example of the training step: the compute ratio if cost were per example.
        "example_ratio": 2 * r.measure_size / max(1, int(r.config.get("batch_size", 1))),
        "loss0": float(loss[0]),
        "loss_final": float(loss[-1]),
    }


def build(ctx: ExperimentContext) -> Path:
    rep = Report(ctx, NAME, TITLE)
    variants: list[tuple[str, str, float]] = [(m, "float32", DEFAULT_TOLERANCE) for m in METHODS]
    variants += [
        ("rk4-adaptive", "float32", TIGHT),
        ("rk4-paper", "float32", TIGHT),
        ("rk4", "float64", DEFAULT_TOLERANCE),
    ]
    rep.text(
        "Each model is trained once per row with the same seed and config; only the LCA "
        "integrator (and, in the last row, the measurement precision) changes, so every row "
        "allocates the same sequence of optimizer steps. Columns: *mean / worst rel.* = mean and "
        "largest per-step |ΔL − ΣA| / |ΔL| over the optimizer steps (steps with ΔL = 0 left "
        "out); *mean abs.* = mean |ΔL − ΣA| in loss units; *whole run* = |Σ_t(ΔL_t − ΣA_t)| / "
        "|L_T − L_0|; *evals/step* = new full measurement-set gradient evaluations per step "
        "(/steps/evaluations; the start gradient is reused from the previous step); *splits* = "
        "mean Simpson panels of rk4-adaptive (1, 4, 8, 16, 32) and of the paper's rule rk4-paper "
        "(1, 2, 4, 8, 16), tolerance in loss units; *LCA ms/step* = "
        "/steps/seconds_lca and *LCA ÷ train time* = that over /series/steps/seconds_train (the "
        "paper's released code spent ~400–480× a training step on LCA; one CPU thread on a shared "
        "machine here: indicative only). Relative numbers are in percent."
    )
    headers = [
        "model",
        "method",
        "dtype",
        "tolerance",
        "mean rel. %",
        "median rel. %",
        "worst rel. %",
        "mean abs.",
        "whole run %",
        "evals/step",
        "splits",
        "LCA ms/step",
        "LCA ÷ train time",
        "run",
    ]
    findings: dict[str, dict[str, Any]] = {}
    for model in MODELS:
        rows = []
        curves: dict[str, np.ndarray] = {}
        losses: dict[str, np.ndarray] = {}
        for method, dtype, tol in variants:
            s = integrator_setup(ctx, model, method, dtype, tol)
            info = rep.use(ctx.train(s.label, s.config))
            with info.open() as r:
                e = errors(r)
                kind = r.steps("kind")
                name = f"{method} ({dtype}" + (
                    f", tol {tol:g})" if tol != DEFAULT_TOLERANCE else ")"
                )
                curves[name] = np.abs(r.steps("error")[kind == 0])
                losses[name] = r.steps("loss")
            key = method if dtype == "float32" else f"{method}-{dtype}"
            if tol != DEFAULT_TOLERANCE:
                key += f"-tol{tol:g}"
            findings.setdefault(model, {})[key] = e
            rows.append(
                [
                    model,
                    method,
                    dtype,
                    fmt(tol, 1) if is_adaptive(method) else "—",
                    pct(e["mean_rel"], 3),
                    pct(e["median_rel"], 3),
                    pct(e["worst_rel"], 3),
                    sci(e["mean_abs"], 2).lstrip("+"),
                    pct(e["whole_run"], 4),
                    fmt(e["evaluations"], 4),
                    fmt(e["splits"], 4),
                    fmt(e["ms_lca"], 3),
                    fmt(e["ms_lca"] / e["ms_train"], 3),
                    info.label,
                ]
            )
        rep.heading(f"{model} on digits")
        rep.table(headers, rows)
        f32 = [v for k, v in losses.items() if "float32" in k]
        spread = max(float(np.max(np.abs(v - f32[0]))) for v in f32)
        rep.text(
            f"Same trajectory check: the measured loss curves L_0..L_T of the float32 rows "
            f"differ by at most {spread:.3g} (0 means bit-identical: the integrator never "
            "changes training)."
        )
        findings[model]["_loss_spread_f32"] = spread
        rep.figure(
            _figure(curves, model),
            f"{model}-error",
            f"|ΔL − ΣA| per step for every integrator, {model} (log scale)",
        )
    rep.finding("models", findings)
    best = {
        m: min(
            (k for k in findings[m] if not k.startswith("_")),
            key=lambda k: findings[m][k]["mean_abs"],
        )
        for m in MODELS
    }
    rep.finding("most_exact", best)
    rep.heading("What this shows")
    rep.text("\n".join(_summary(m, findings[m], best[m]) for m in MODELS))
    rep.text(
        "Reading the table: first order (euler) misses the curvature of the loss along the step; "
        "trapezoid is exact for a quadratic loss and Simpson / Gauss-2 for a quartic one, so "
        "their residual is what is left of higher-order terms, of the kinks ReLU puts in the "
        "loss along a step, and of round-off (the float64 row isolates round-off). The per-step "
        "relative error is large wherever ΔL itself is nearly 0, so its *mean* and *worst* "
        "values are dominated by such steps and the *median* is the typical step; the whole-run "
        "error tells whether the layer and parameter totals add up to the loss change."
    )
    return rep.write()


def _summary(model: str, f: dict[str, Any], best: str) -> str:
    """One bullet per model, worded from its numbers."""
    rk4, f64 = f["rk4"], f["rk4-float64"]
    tight = f.get(f"rk4-adaptive-tol{TIGHT:g}")
    paper_tight = f.get(f"rk4-paper-tol{TIGHT:g}")
    roundoff = abs(f64["mean_abs"] - rk4["mean_abs"]) <= 0.05 * rk4["mean_abs"]
    text = (
        f"- {model}: median per-step relative error euler {pct(f['euler']['median_rel'], 3)}%, "
        f"trapezoid {pct(f['trapezoid']['median_rel'], 3)}%, Simpson (rk4) "
        f"{pct(rk4['median_rel'], 3)}%; whole run: euler {pct(f['euler']['whole_run'], 3)}%, "
        f"rk4 {pct(rk4['whole_run'], 3)}%. Measuring in float64 changes rk4's mean |ΔL − ΣA| "
        f"from {sci(rk4['mean_abs'], 2).lstrip('+')} to {sci(f64['mean_abs'], 2).lstrip('+')}"
        + (
            ", so float32 round-off is not what limits it."
            if roundoff
            else ", so part of it is float32 round-off."
        )
        + " rk4-adaptive at tolerance 1e-3 used on average "
        f"{fmt(f['rk4-adaptive']['splits'], 3)} Simpson panels per step"
        + (
            " (no step exceeded the tolerance, so it equals rk4)"
            if f["rk4-adaptive"]["splits"] == 1
            else ""
        )
    )
    if tight:
        text += (
            f"; at tolerance {TIGHT:.0e} it used {fmt(tight['splits'], 3)} panels and "
            f"{fmt(tight['evaluations'], 3)} gradient evaluations per step and brought the mean "
            f"|ΔL − ΣA| to {sci(tight['mean_abs'], 2).lstrip('+')}"
        )
    if paper_tight:
        text += (
            f"; the paper's rule (rk4-paper) at {TIGHT:.0e} used "
            f"{fmt(paper_tight['splits'], 3)} panels and {fmt(paper_tight['evaluations'], 3)} "
            f"evaluations per step for a mean |ΔL − ΣA| of "
            f"{sci(paper_tight['mean_abs'], 2).lstrip('+')}"
        )
    return text + (
        f". Smallest mean |ΔL − ΣA|: {best}. Simpson costs {fmt(rk4['evaluations'], 3)} new "
        f"gradient evaluations per step (euler {fmt(f['euler']['evaluations'], 3)}) and its LCA "
        f"took {fmt(rk4['ms_lca'] / rk4['ms_train'], 3)}× the time of the training step (the "
        "paper's released code: ~400–480×)."
    )


def _figure(curves: dict[str, np.ndarray], model: str) -> Any:
    import plotly.graph_objects as go

    from ..figures.common import base_layout

    fig = go.Figure()
    for i, (name, y) in enumerate(curves.items()):
        y = np.where(y > 0, y, np.nan)  # exact zeros cannot be drawn on a log axis
        fig.add_trace(
            go.Scatter(
                x=np.arange(1, len(y) + 1),
                y=y,
                mode="lines",
                name=name,
                line={"color": _COLORS[i % len(_COLORS)], "width": 1.5},
            )
        )
    base_layout(fig, f"Integration error per step, {model} on digits", height=460)
    fig.update_xaxes(title="training step")
    fig.update_yaxes(title="|ΔL − ΣA| (loss units)", type="log", exponentformat="e")
    return fig


def run(
    out_dir: str | Path,
    tiny: bool = False,
    data_dir: str | None = None,
    *,
    runs_dir: str | Path | None = None,
) -> Path:
    """Train the runs (or reuse them from ``runs_dir``, default ``out_dir/runs``) and write
    ``out_dir/integrators.md``; return its path."""
    from . import run_one

    return run_one(NAME, out_dir, tiny=tiny, data_dir=data_dir, runs_dir=runs_dir)
