"""Neurons & weights page: which units and which single weights helped or hurt, and how often.

Unit × step heatmaps (record "units" or "full"), the first layer's weights drawn as pictures of
the input (image data), the distribution of every LCA value (record "full"), how often each
parameter helped (the paper: about half of the steps), and the top helping and hurting weights
with the trace of a chosen one. Per-weight totals and helped counts are kept in every record
mode, so the last two work on any run; heavy reads are cached per file state (path, T, mtime).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from lca import export, views
from lca import figures as F
from lca.store import Reader
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

IMAGE_UNITS = 64  # first-layer images shown before "show all"
# Cells of the unit × step heatmap (block sums beyond, the cap stated in its title): about two
# screen pixels per step column for 64 units, fewer columns for wider layers (~170 kB sent).
UNIT_CELLS = 32_000
TOP_K = 10


def units_section(path: Path, v: views.NeuronsView, pos: np.ndarray, figures: RunFigures) -> None:
    st.subheader("Neurons over time")
    if v.record == "layers":
        st.info(
            "Per-neuron views need a run recorded with record 'units' or 'full'; this run "
            "was recorded 'layers' (one sum per layer)."
        )
        return
    groups = [g[0] for g in v.units]
    sizes = {g[0]: g[1] for g in v.units}
    group = st.selectbox(
        "Layer",
        groups,
        index=0,
        key="neuron_layer",
        bind="query-params",
        format_func=lambda g: f"{g} ({sizes[g]:,} units)",
    )
    if group is None:
        return

    def units() -> np.ndarray:  # read only when the figure or the CSV is made
        return read_view(views.unit_rows, path, group, 0, v.num_steps, large=True)

    def heatmap():
        z = units()
        return F.unit_heatmap(
            z,
            positions=pos[: len(z)],
            max_cells=UNIT_CELLS,
            title=f"LCA of each unit of {group} on each step (green = helped, red = hurt)",
        )

    plot(figures("unit_heatmap", heatmap, group, v.num_steps), key="neurons_units")

    def units_csv() -> str:
        z = units()
        return export.step_matrix_csv(
            pos[: len(z)], z, [f"{group} unit {i}" for i in range(z.shape[1])]
        )

    download_csv(
        units_csv,
        f"{group}-unit-lca-per-step",
        key="neurons_csv_units",
    )
    st.caption(
        "One row per neuron (or channel): the LCA of its incoming weights and bias on "
        "each step. Long runs are summed over blocks of steps (exact sums)."
    )


def images_section(v: views.NeuronsView, totals: dict, figures: RunFigures) -> None:
    if v.first_weight is None:
        return
    name, shape = v.first_weight
    image_shape = v.image_shape
    if len(shape) == 2 and image_shape is None:
        st.caption(
            f"First-layer weights are drawn as pictures for image data (digits, MNIST, "
            f"Fashion-MNIST, CIFAR-10); this run uses {literal(v.dataset or 'other data')}."
        )
        return
    st.subheader("What the first layer learned to look at")
    n = shape[0]
    show_all = n > IMAGE_UNITS and st.toggle(
        f"Show all {n:,} units", key="neurons_all_units", bind="query-params"
    )
    units = n if show_all else IMAGE_UNITS
    plot(
        figures(
            "first_layer_images",
            lambda: F.first_layer_images(totals[name], image_shape, max_units=units),
            units,
        ),
        key="neurons_images",
    )
    what = (
        "one small image per neuron: each pixel is the total LCA of the weight from that "
        "input pixel"
        if len(shape) == 2
        else "one small image per kernel (channels summed): each pixel is the total LCA of "
        "that kernel weight"
    )
    st.caption(
        f"{literal(name)}: {what}. :green[Green]: that weight lowered the loss over "
        "training; "
        ":red[red]: raised it."
    )


def values_section(path: Path, v: views.NeuronsView, figures: RunFigures) -> None:
    st.subheader("All LCA values")
    if v.record != "full":
        st.info(
            f"The distribution of every weight's LCA on every step needs a run recorded "
            f"with record 'full'; this run was recorded '{literal(v.record)}'."
        )
        return
    log = st.toggle(
        "Log scale (shows the rare large values)", key="neurons_hist_log", bind="query-params"
    )

    def histogram():
        # Read here, not through read_view's data cache: the figure is cached per file version
        # already, and the sample (4 million values, 16 MB) pickled into that cache on every
        # new version cost more than reading it again when the other scale is asked for.
        with Reader(path) as r:
            values, used = views.value_sample(r)
        return F.lca_histogram(values, log=log, steps_used=used, steps_total=v.num_steps)

    plot(figures("lca_histogram", histogram, log, v.num_steps), key="neurons_histogram")
    st.caption(
        "How big one weight's share of one step's loss change usually is. The LCA paper "
        "found a heavy-tailed peak at 0 with slightly more mass on the :green[helped] "
        "(negative) side than the :red[hurt] side."
    )


def helped_section(
    totals: dict, helped: dict, rows: int, figures: RunFigures, left_out=None
) -> None:
    st.subheader("How often does a weight help?")
    if rows == 0:
        st.info("Per-weight counts are written with each flush of the file; none yet.")
        return

    def histogram():  # left_out comes from the file too: fixed by its version
        hs = np.concatenate([np.ravel(helped[n]) for n in helped])
        tot = np.concatenate([np.ravel(totals[n]) for n in totals])
        return F.helped_fraction_histogram(hs, rows, totals=tot, left_out=left_out)

    plot(figures("helped_fraction", histogram, rows), key="neurons_helped_fraction")
    st.caption(
        "For each weight, the share of steps on which it lowered the loss: **green** "
        "bars helped on most steps; grey ones on fewer than half (on the other steps they "
        "hurt or did not move). The LCA paper found this peaked near 50%: a typical "
        "weight helps on about half of the steps and hurts on the other half. Weights "
        "that stopped moving (pruned, frozen, skipped, low-bit) pile up at low values."
    )


def top_section(
    path: Path,
    v: views.NeuronsView,
    totals: dict,
    helped: dict,
    rows: int,
    pos: np.ndarray,
    figures: RunFigures,
) -> None:
    st.subheader("The weights that helped and hurt the most")
    table = F.top_parameters(totals, helped, rows, k=TOP_K)
    if not table:
        st.info("No weight has moved yet.")
        return
    config = {"total LCA": st.column_config.NumberColumn(format="%.3e")}
    order = ["parameter", "total LCA", "% steps helped"]
    left, right = st.columns(2)
    for col, side, head in (
        (left, "helped", ":green[**Top helpers**] (most negative total)"),
        (right, "hurt", ":red[**Top hurters**] (most positive total)"),
    ):
        rows_ = [row for row in table if row["side"] == side]
        col.markdown(head)
        if rows_:
            col.dataframe(rows_, hide_index=True, column_order=order, column_config=config)
        else:
            col.caption("None: no weight has a total of this sign.")
    st.caption(f"Total LCA over the {rows:,} steps the per-weight totals cover; negative = helped.")
    labels = [row["parameter"] for row in table]
    choice = st.selectbox(
        "Trace one of them over the steps",
        labels,
        index=0,
        key="neurons_trace",
        bind="query-params",
    )
    if choice is None:
        return
    row = table[labels.index(choice)]
    if v.record != "full":
        st.info(
            f"A weight's LCA step by step needs a run recorded with record 'full'; this run "
            f"was recorded '{literal(v.record)}' (only its total, above, is kept)."
        )
        return

    def trace():
        values = read_view(views.param_rows, path, row["tensor"], 0, len(pos), row["index"])
        return F.param_trace(values, label=choice, positions=pos[: len(values)])

    plot(
        figures("param_trace", trace, row["tensor"], row["index"], choice, len(pos)),
        key="neurons_trace_chart",
    )
    st.caption(
        "Top: this weight's LCA on each step (:green[green] helped, :red[red] hurt); "
        "bottom: its running total. Weight and gradient values are not stored in run "
        "files yet, so only the LCA trace can be shown."
    )


def render(path: Path) -> bool:
    figures = RunFigures(path)  # this version of the file: figures shared by every session
    v: views.NeuronsView | None = view_or_explain(views.neurons_view, path)
    if v is None:
        return False
    st.caption(
        f"**{literal(path.name)}** · {literal(v.status)} · {steps_phrase(v.kind)} · "
        f"{v.num_params:,} parameters in {len(v.units)} layers · record "
        f"{literal(v.record)}"
    )
    if v.num_steps == 0:
        st.info("This run has not recorded a step yet; the charts appear after the first step.")
        return v.running
    pos = v.positions  # where each row sits on the step axis
    units_section(path, v, pos, figures)
    stats: views.WeightStats = read_view(views.weight_stats, path)
    images_section(v, stats.totals, figures)
    values_section(path, v, figures)
    helped_section(stats.totals, stats.helped, stats.rows, figures, stats.left_out())
    top_section(path, v, stats.totals, stats.helped, stats.rows, pos, figures)
    return v.running


def main() -> None:
    st.title("Neurons & weights: who did the learning")
    show_run(render)


main()
