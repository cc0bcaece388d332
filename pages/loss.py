"""Loss page: does LCA add up, and how did training go?

The first chart is the visual proof of the method: the measured loss and the loss rebuilt from
L_0 plus the running sum of every parameter's LCA lie on top of each other when the allocation
is exact. Then the per-step error (and the adaptive method's panels), the training minibatch loss
and accuracy, and the share of parameters that helped / did not move / hurt on each step.
Reads only per-step scalars, so it is cheap even for huge runs; live runs re-draw every 2 s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from lca import conservation, export, views
from lca import figures as F
from lca.store import RunFileError
from pages import through_app
from pages.shared import (
    RunFigures,
    download_csv,
    literal,
    plot,
    read_view,
    show_run,
    steps_phrase,
    view_or_explain,
)

through_app()  # a bare page run on a fresh server: rerun through app.py

LARGE_ERROR = 0.01  # conservation error, as a share of the loss change, worth a hint


def _fmt(v: float | None, spec: str, missing: str = "—") -> str:
    return missing if v is None or not np.isfinite(v) else format(v, spec)


def metrics(s: dict) -> None:
    """Final loss, test accuracy, conservation error, mean % helped."""
    c1, c2, c3, c4 = st.columns(4)
    change = s["loss_final"] - s["loss0"]
    c1.metric(
        "Final loss",
        _fmt(s["loss_final"], ".4f"),
        delta=f"{change:+.4f} since step 0",
        delta_color="inverse",
        help="Loss on the fixed measurement set after the last recorded step.",
    )
    c2.metric(
        "Test accuracy",
        _fmt(None if s["test_acc"] is None else 100 * s["test_acc"], ".1f")
        + ("%" if s["test_acc"] is not None else ""),
        help="Accuracy on the held-out test split at the last evaluation.",
    )
    rel = s["relative_error"]
    c3.metric(
        "Conservation error",
        _fmt(s["conservation_error"], ".1e"),
        delta=None if rel is None else f"{100 * rel:.3g}% of the loss change",
        delta_color="off",
        delta_arrow="off",
        help="Sum over steps of ΔL − ΣLCA: how much of the loss change LCA did not "
        "allocate (0 = every bit of it was allocated).",
    )
    if (
        rel is not None
        and abs(rel) > LARGE_ERROR
        and s.get("method") not in ("rk4-adaptive", "rk4-paper")
    ):
        st.info(
            f"LCA left {100 * abs(rel):.2g}% of the loss change unallocated: the "
            f"integrator ({literal(s.get('method') or '?')}) was not accurate on some "
            "steps, usually "
            "the first, large ones. Record with method rk4-adaptive, which splits such "
            "steps until the error is small, or with a smaller learning rate.",
            icon=":material/info:",
        )
    mh = s["mean_helped"]
    c4.metric(
        "Parameters helping per step",
        _fmt(None if mh is None else 100 * mh, ".1f") + ("%" if mh is not None else ""),
        help="Mean share of parameters with LCA < 0 on a step (the LCA paper: barely over 50%).",
    )


def structural_zero_note(path: Path) -> str:
    """A sentence on the weights left out of helped fractions, or "" when there are none."""
    try:
        names, count = read_view(views.structural_zeros, path)
    except (RunFileError, OSError):
        return ""
    if not names:
        return ""
    shown = ", ".join(names[:4]) + (", …" if len(names) > 4 else "")
    return (
        f" {count:,} weights ({literal(shown)}) count as neither: their gradient is "
        "structurally zero (e.g. a convolution's bias right before BatchNorm), so their LCA "
        "is rounding noise with a random sign."
    )


def accuracy_section(path: Path, method: str | None = None) -> None:
    """The per-parameter error estimate (runs recorded with error_every), beside conservation."""
    e: views.ParamErrorView | None = view_or_explain(views.param_error_view, path)
    if e is None or not e.recorded:
        return
    c1, c2, c3 = st.columns(3)
    c1.metric(
        "Per-weight error (median)",
        f"{100 * e.median_rel:.2g}%",
        help="‖A₁ − A₂‖ / ‖A₂‖ between Simpson with 1 and with 2 panels, on the sampled steps.",
    )
    c2.metric(
        "Per-weight error (worst)",
        f"{100 * e.worst_rel:.2g}%",
        delta=f"step {e.worst_step}",
        delta_color="off",
        delta_arrow="off",
    )
    c3.metric(
        "Signs that agree (worst step)",
        f"{100 * e.worst_signs:.4g}%",
        delta=f"median {100 * e.median_signs:.4g}%",
        delta_color="off",
        delta_arrow="off",
        help="Share of moving weights whose LCA has the same sign with 1 and 2 panels.",
    )
    st.caption(
        f"How far each weight's LCA (not only their sum) may be off: on {len(e.rel):,} sampled "
        "steps, LCA with one and with two Simpson panels differ by this much, and a weight "
        "whose sign flips between them cannot be called helped or hurt. To refine steps until "
        "it is small: method rk4-paper with 'Refine on' parameters (--adapt-on parameters)."
        + (
            " These figures are for one panel; steps this adaptive method split further are "
            "closer than that."
            if method in ("rk4-adaptive", "rk4-paper")
            else ""
        )
    )


def interventions_table(v: views.LossView) -> None:
    rows = np.flatnonzero(v.kind == 1)
    if not len(rows):
        return
    loss = v.loss
    table = [
        {
            "step": int(i + 1),
            "what": v.labels[i] or "intervention",
            "loss change": float(loss[i + 1] - loss[i]),
            "sum of LCA": float(v.lca[i]),
        }
        for i in rows[:200]
    ]
    with st.expander(
        f"{len(rows)} intervention segment(s): a technique moved weights outside "
        "the optimizer (e.g. a prune event)"
    ):
        st.dataframe(table, hide_index=True)
        download_csv(lambda: export.rows_csv(table), "interventions", key="loss_csv_events")


def render(path: Path) -> bool:
    """Draw the page from the file as it is now; return whether the run is still running."""
    figures = RunFigures(path)  # this version of the file: figures shared by every session
    v: views.LossView | None = view_or_explain(views.loss_view, path)
    if v is None:
        return False
    kind = v.kind
    st.caption(
        f"**{literal(path.name)}** · {literal(v.status)} · {steps_phrase(kind)} "
        f"recorded · {v.num_params:,} parameters · method {literal(v.method)} · "
        f"record {literal(v.record)}"
    )
    parallel = view_or_explain(views.parallel_view, path)  # Stanza / data parallel: one line
    if parallel is not None:
        st.caption(literal(views.parallel_sentence(parallel)))
    if v.num_steps == 0:
        st.info("This run has not recorded a step yet; the charts appear after the first step.")
        return v.running
    metrics(v.summary)
    steps_only = v.error[: len(v.kind)][v.kind[: len(v.error)] == 0]
    over = conservation.advice(steps_only, v.method, option="method")
    if over:
        st.warning(over[0].upper() + over[1:], icon=":material/warning:")
    log_y = st.toggle("Log scale for the loss", key="loss_log", bind="query-params")
    plot(
        figures(
            "loss_conservation",
            lambda: F.loss_conservation(v.loss, v.lca, kind=kind, log_y=log_y),
            log_y,
        ),
        key="loss_conservation",
    )
    t = min(len(v.lca), len(v.loss) - 1)
    download_csv(
        lambda: export.series_csv(
            {
                "step": F.step_axis(kind, t),
                "loss before": v.loss[:t],
                "loss after": v.loss[1 : t + 1],
                "sum of LCA": v.lca[:t],
                "loss change - sum of LCA": v.error[:t],
            }
        ),
        "loss-and-lca-per-step",
        key="loss_csv_steps",
    )
    st.caption(
        "Thick grey: the loss measured after each step. Dashed blue: the starting loss "
        "plus the running sum of every parameter's LCA. When LCA splits each step's loss "
        "change exactly, the two curves coincide; a visible gap would be integration error."
        + (" Purple ✕: interventions such as pruning." if (kind == 1).any() else "")
    )
    plot(
        figures(
            "step_error", lambda: F.step_error(v.error, v.splits, kind=kind, tolerance=v.tolerance)
        ),
        key="loss_error",
    )
    note = ""
    if v.tolerance is not None:
        note = (
            " Blue: how many Simpson panels the adaptive method needed on each step; "
            if (v.splits > 1).any()
            else " The adaptive method never needed more than one Simpson panel; "
        )
        note += "dotted lines: its tolerance."
    st.caption(
        "How far each step's allocation is from the measured loss change (ΔL − ΣLCA, "
        "in loss units; 0 = exact)." + note
    )
    accuracy_section(path, v.method)
    plot(
        figures("training_curves", lambda: F.training_curves(v.train_loss, v.evals, kind=kind)),
        key="loss_training",
    )
    st.caption(
        "Grey: the loss of each training minibatch (noisy). Orange and blue: "
        "accuracy on the training and test splits at each evaluation."
    )
    plot(
        figures("helped_fractions", lambda: F.helped_fractions(v.helped, v.hurt, kind=kind)),
        key="loss_helped",
    )
    st.caption(
        ":green[Green]: share of parameters that lowered the loss on that step (LCA < 0); "
        "grey: did not move; :red[red]: raised it. The dashed line is 50%: the LCA paper "
        "found barely more than half of the parameters help on any step."
        + structural_zero_note(path)
    )
    interventions_table(v)
    return v.running


def main() -> None:
    st.title("Loss: does LCA add up?")
    show_run(render)


main()
