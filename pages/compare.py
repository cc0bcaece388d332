"""Compare page: two or more runs side by side.

Which runs: st.session_state["compare_runs"] when the Runs page set it, else a multiselect of
every run (bound to the URL, so a comparison can be shared). Loss curves overlaid, aligned by
training step or by wall-clock time; per-layer totals side by side and each run's difference
from the first one. Runs with different architectures are compared on the layers whose names
match, and the page says so. Reads only per-step scalars and per-layer sums.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import streamlit as st

from lca import export, runs, views
from lca import figures as F
from lca.store import RunFileError
from pages import through_app
from pages.shared import (
    LIVE_SECONDS,
    RUN_KEY,
    download_csv,
    literal,
    live_fragment,
    plot,
    read_view,
)

through_app()  # a bare page run on a fresh server: rerun through app.py

COMPARE_KEY = "compare_runs"  # set by the Runs page
PICK_KEY = "compare"  # the multiselect, bound to ?compare=
MAX_DIFFERENCES = 4


@dataclass
class Unreadable:
    """A run that cannot be compared, and the one sentence that says why."""

    name: str
    error: str
    status: str = ""


def read_run(name: str) -> views.CompareView | Unreadable:
    """One run's loss, step/wall axes, per-layer totals and summary (cached per file version)."""
    try:
        view = read_view(views.compare_view, runs.resolve(name))
        return replace(view, name=name)
    except (RunFileError, OSError, runs.RunNameError, KeyError, ValueError) as e:
        return Unreadable(name, str(e).splitlines()[0] if str(e) else f"{name} cannot be read.")


def _status(name: str) -> str | None:
    try:
        return read_view(views.run_view, runs.resolve(name)).status
    except (RunFileError, OSError, runs.RunNameError, KeyError, ValueError):
        return None


def summary_table(data: list[views.CompareView]) -> None:
    rows = []
    for d in data:
        s = d.summary
        rows.append(
            {
                "run": d.name,
                "status": d.status,
                "dataset": s.get("dataset"),
                "model": s.get("model"),
                "techniques": ", ".join(s.get("techniques") or []) or "—",
                "steps": s.get("steps"),
                "parameters": s.get("num_params"),
                "final loss": s.get("loss_final"),
                "test accuracy %": None if s.get("test_acc") is None else 100 * s["test_acc"],
                "helping per step %": None
                if s.get("mean_helped") is None
                else 100 * s["mean_helped"],
                "seconds": s.get("duration_s"),
            }
        )
    st.dataframe(
        rows,
        hide_index=True,
        column_config={
            "final loss": st.column_config.NumberColumn(format="%.4f"),
            "test accuracy %": st.column_config.NumberColumn(format="%.1f"),
            "helping per step %": st.column_config.NumberColumn(format="%.1f"),
            "seconds": st.column_config.NumberColumn(format="%.1f"),
        },
    )
    download_csv(lambda: export.rows_csv(rows), "compare-runs", key="compare_csv_runs")


def read_parallel(name: str) -> views.ParallelView | None:
    """A Stanza or data-parallel run's bytes exchanged; None for a run trained in one process
    (or one that cannot be read: the page has said why above)."""
    try:
        view = read_view(views.parallel_view, runs.resolve(name))
    except (RunFileError, OSError, runs.RunNameError, KeyError, ValueError):
        return None
    return None if view is None else replace(view, name=name)


def parallel_section(data: list[views.CompareView]) -> None:
    """Stanza against data parallel: bytes sent per step (measured) and a table, shown only
    when a compared run was trained in several processes. The loss curves and per-layer LCA
    of those runs are the page's other charts."""
    found = [v for v in (read_parallel(d.name) for d in data) if v is not None]
    if not found:
        return
    st.subheader("Bytes exchanged between processes")
    for v in found:
        if v.problem:
            st.warning(literal(v.problem))
    usable = [v for v in found if not v.problem]
    if not usable:
        return
    plot(
        F.parallel_bytes([(f"{v.name} · {v.short_label}", v.sent) for v in usable]),
        key="compare_parallel_bytes",
    )
    rows = views.parallel_rows(usable)
    base = views.parallel_baseline(usable)
    st.dataframe(
        rows,
        hide_index=True,
        column_config={
            "bytes sent per step": st.column_config.NumberColumn(format="%.0f"),
            "bytes received per step": st.column_config.NumberColumn(format="%.0f"),
            "× data parallel": st.column_config.NumberColumn(format="%.2f"),
        },
    )
    download_csv(lambda: export.rows_csv(rows), "compare-bytes", key="compare_csv_parallel")
    st.caption(
        "Measured, not estimated: every rank adds up the bytes of each tensor it sends or "
        "receives while training (Stanza: features, labels and their gradients, and the conv "
        "ranks' gradient all-reduce; data parallel: the all-reduce of every gradient, counted "
        "once sent and once received). The weights sent to the writing rank for LCA are not "
        "counted."
        + (
            " '× data parallel' divides each run's bytes sent per step by those of "
            f"{literal(base.name)}."
            if base is not None
            else " Compare with a --data-parallel K run to see the ratio."
        )
    )


def render(chosen: list[str]) -> bool:
    """Draw the comparison; return whether any of the runs is still running."""
    read = [read_run(n) for n in chosen]
    for d in read:
        if isinstance(d, Unreadable):
            st.warning(literal(d.error))
    data = [d for d in read if isinstance(d, views.CompareView)]
    if len(data) < 2:
        st.info("Pick at least two readable runs to compare.")
        return any(d.status == "running" for d in data)
    summary_table(data)

    c1, c2, c3 = st.columns(3)
    align = c1.radio(
        "Align the runs by",
        ["training step", "wall-clock time"],
        horizontal=True,
        key="compare_align",
        bind="query-params",
    )
    log_y = c2.toggle("Log scale for the loss", key="compare_log", bind="query-params")
    per_param = c3.toggle(
        "Per parameter",
        key="compare_per_param",
        bind="query-params",
        help="Divide each layer's total by its number of parameters.",
    )
    by_time = align == "wall-clock time"
    curves = []
    for d in data:
        n = len(d.loss) - 1
        if by_time:
            x = np.concatenate([[0.0], d.wall[:n]])
        else:
            x = np.concatenate([[0.0], d.train_step[:n].astype(np.float64)])
        curves.append((d.name, x, d.loss))
    plot(
        F.compare_loss(
            curves,
            x_title="seconds since the run started" if by_time else "training step",
            log_y=log_y,
        ),
        key="compare_loss",
    )
    st.caption(
        "Each line is one run's loss on its own measurement set"
        + (
            " against the seconds since it started (training and LCA together)."
            if by_time
            else " after each optimizer step."
        )
    )
    parallel_section(data)

    first = data[0].names
    common = [n for n in first if all(n in d.names for d in data[1:])]
    all_names = {n for d in data for n in d.names}
    if not common:
        st.info(
            "These runs share no layer names (different architectures), so their layers "
            "cannot be compared; only the loss curves are shown."
        )
        return any(d.status == "running" for d in data)
    if len(common) < len(all_names) or any(d.names != first for d in data):
        st.info(
            f"The runs have different architectures: only the {len(common)} layers whose "
            f"names match in all of them are compared ({len(all_names) - len(common)} "
            "left out)."
        )
    elif any(d.sizes != data[0].sizes for d in data):
        st.info(
            "The runs have the same layer names but different layer sizes; switch on "
            "'Per parameter' to compare them fairly."
        )
    totals = {d.name: np.array([d.totals[d.names.index(n)] for n in common]) for d in data}
    counts = {d.name: np.array([d.sizes[n] for n in common]) for d in data}
    plot(F.compare_layers(common, totals, counts=counts, per_param=per_param), key="compare_layers")
    download_csv(
        lambda: export.series_csv(
            {
                "layer": common,
                **{f"{n} total LCA": totals[n] for n in totals},
                **{f"{n} parameters": counts[n] for n in counts},
            }
        ),
        "compare-layer-totals",
        key="compare_csv_layers",
    )
    st.caption(
        "Each layer's total LCA in each run (one colour per run). Bars below 0: the "
        "layer lowered the loss over the run."
    )
    a = data[0]
    for b in data[1 : 1 + MAX_DIFFERENCES]:
        plot(
            F.compare_layer_difference(
                common,
                totals[a.name],
                totals[b.name],
                a.name,
                b.name,
                counts_a=counts[a.name],
                counts_b=counts[b.name],
                per_param=per_param,
            ),
            key=f"compare_diff_{b.name}",
        )
    st.caption(
        f"Run B − run A (A = {literal(a.name)}, the first run picked): :blue[blue] "
        "where B's "
        "layer lowered the loss more (or raised it less) than A's, :orange[orange] where "
        "it did less. Blue and orange, not green and red: a layer can help in both runs "
        "and still help less in B."
    )
    if len(data) > 1 + MAX_DIFFERENCES:
        st.caption(f"Differences are drawn for the first {MAX_DIFFERENCES} runs after A.")
    return any(d.status == "running" for d in data)


def main() -> None:
    st.title("Compare runs")
    try:
        names = [r.name for r in runs.list_runs()]
    except OSError as e:
        st.error(f"The runs folder cannot be read ({e.strerror or e}); check LCA_RUNS_DIR.")
        return
    if len(names) < 2:
        st.info(
            "Comparing needs at least two runs in the runs folder; train another one on "
            "the Train page."
        )
        return
    preset = [n for n in st.session_state.get(COMPARE_KEY) or [] if n in names]
    current = st.session_state.get(RUN_KEY)  # the sidebar's run, compared with the newest other
    newest = [current] if current in names else []
    default = preset if len(preset) >= 2 else (newest + [n for n in names if n != current])[:2]
    linked = [n for v in st.query_params.get_all(PICK_KEY) for n in v.split(",") if n]
    missing = [n for n in linked if n not in names]
    if missing:  # a shared link names runs this folder lacks: the picker drops them quietly
        st.warning(
            f"{literal(', '.join(repr(n) for n in missing[:5]))} "
            f"{'is' if len(missing) == 1 else 'are'} not in the runs folder (deleted, "
            "renamed or never copied here), so the comparison leaves "
            f"{'it' if len(missing) == 1 else 'them'} out."
        )
    chosen = st.multiselect(
        "Runs to compare",
        names,
        default=default,
        key=PICK_KEY,
        bind="query-params",
        placeholder="Pick two or more runs",
    )
    if len(chosen) < 2:
        st.info("Pick at least two runs to compare.")
        return
    if any(_status(n) == "running" for n in chosen):

        @live_fragment(LIVE_SECONDS)
        def live() -> None:
            if not render(chosen):
                st.rerun()

        live()
    else:
        render(chosen)


main()
