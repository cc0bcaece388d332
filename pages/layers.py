"""Layers page: which layers did the learning, when, and did they learn together?

Total LCA per layer (absolute or per parameter), a layer × step heatmap whose cells are clickable
(the click drills into that layer and range of steps), each layer's cumulative LCA, and the
synchronization test of lca/synchrony.py (do layers' LCA peaks fall on the same steps more often
than chance?). Reads the per-layer table (T × L, small) and, in a drill-down, one unit group.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np
import streamlit as st

from lca import export, views
from lca import figures as F
from lca.synchrony import SynchronyError, synchrony
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
    view_version,
)

through_app()  # a bare page run on a fresh server: rerun through app.py

HEATMAP_KEY = "layers_heatmap"
DRILL_LAYER = "drill_layer"
DRILL_STEPS = "drill_steps"
MIN_DRILL = 40  # steps shown around a clicked cell
DRILL_SET = "_drill_set"  # the click callback just set the drill-down widgets


@st.cache_data(max_entries=16, show_spinner=False)
def _synchrony(path: str, stamp: tuple[int, int], top: float, window: int) -> dict:
    """The synchrony test on optimizer steps only (cached per file version and settings)."""
    del stamp  # part of the cache key only
    v: views.LayersView = read_view(views.layers_view, Path(path))
    series = v.layer_lca[v.kind == 0]
    names = v.names
    try:
        res = synchrony(series, top_fraction=top, window=window)
    except SynchronyError as e:
        return {"error": str(e)}
    return {
        "result": res,
        "names": [names[i] for i in res.layers],
        "left_out": [n for i, n in enumerate(names) if i not in set(res.layers.tolist())],
    }


def _cell(point: dict) -> tuple[int, int, int] | None:
    """(layer index, first step, last step) from a clicked marker's customdata, or None.

    The browser sends customdata as a list, or as {"0": .., "1": ..} for a typed array."""
    cd = point.get("customdata") if isinstance(point, dict) else None
    if isinstance(cd, dict):
        cd = [cd.get(str(i), cd.get(i)) for i in range(3)]
    try:
        layer, first, last = (int(float(v)) for v in list(cd)[:3])
    except (TypeError, ValueError):
        return None
    return layer, first, last


def _on_cell_click(names: list[str], t: int) -> None:
    """A heatmap cell was clicked: select that layer and step range for the drill-down (at
    least MIN_DRILL steps around the cell, so a one-step cell still shows its neighbourhood)."""
    event = st.session_state.get(HEATMAP_KEY) or {}
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return
    for p in points:
        cell = _cell(p)
        if cell is None or not 0 <= cell[0] < len(names):
            continue
        first, last = sorted((cell[1], cell[2]))
        if last - first + 1 < MIN_DRILL:
            first = max(1, (first + last) // 2 - MIN_DRILL // 2)
            last = min(max(t, 1), first + MIN_DRILL - 1)
            first = max(1, last - MIN_DRILL + 1)
        st.session_state[DRILL_LAYER] = names[cell[0]]
        st.session_state[DRILL_STEPS] = (first, last)
        st.session_state[DRILL_SET] = True
        return


def _rows(pos: np.ndarray, first: int, last: int) -> tuple[int, int]:
    """The rows [s, e) whose step positions lie in steps first..last (an intervention between
    two steps of the range comes with them; one before step 1 with a range from step 1)."""
    s = 0 if first <= 1 else int(np.searchsorted(pos, first, side="left"))
    return s, int(np.searchsorted(pos, last, side="right"))


def p_phrase(p: float) -> str:
    """A p-value as people write it: "p < 0.001" rather than "p = 0.000999"."""
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.2g}" if p < 0.1 else f"p = {p:.2f}"


def drill_down(path: Path, v: views.LayersView, pos: np.ndarray) -> None:
    """One layer over a range of steps: per-step values and, if recorded, its units × steps."""
    st.subheader("Look closer: one layer over a range of steps")
    c1, c2 = st.columns([1, 2])
    layer = c1.selectbox(
        "Layer",
        v.names,
        index=None,
        key=DRILL_LAYER,
        bind="query-params",
        placeholder="Click a heatmap cell or pick a layer",
    )
    # While a run grows, the slider spans the steps it will have, so its range (part of the
    # widget's identity) stays put and a clicked selection survives the 2-second refreshes.
    steps = int(np.floor(pos[-1])) if len(pos) else 0  # optimizer steps recorded
    span = max(steps, int(v.config.get("steps") or -1)) if v.running else steps
    if span >= 2:
        set_here = st.session_state.pop(DRILL_SET, False)
        cur = st.session_state.get(DRILL_STEPS)
        if isinstance(cur, list | tuple) and len(cur) == 2:
            lo, hi = sorted(int(v) for v in cur)
            fixed = (max(1, min(lo, span)), max(1, min(hi, span)))
            if fixed != tuple(cur):
                st.session_state[DRILL_STEPS] = fixed
                set_here = True
        # A value set through session state (a click) must not be paired with a default.
        first, last = c2.slider(
            "Steps", 1, span, None if set_here else (1, span), key=DRILL_STEPS, bind="query-params"
        )
        first, last = min(first, steps), min(last, steps)
    else:
        first, last = 1, max(steps, 1)
    if layer is None:
        st.caption(
            "Click a cell of the heatmap above (or pick a layer here) to see that layer "
            "step by step."
        )
        return
    s, e = _rows(pos, first, last)
    if e <= s:
        st.info("No step of this run falls in that range yet.")
        return
    values = v.layer_lca[s:e, v.names.index(layer)]
    plot(
        F.param_trace(
            values,
            label=f"{layer} ({v.sizes[layer]:,} parameters)",
            positions=pos[s:e],
            title=f"LCA of {layer} on each step {first}–{last} (green = helped, red = hurt)",
        ),
        key="layers_drill_trace",
    )
    st.caption(
        "Top: the layer's LCA on each step (or block of steps for long ranges); "
        "bottom: its running total over the range."
    )
    group = next((g for g in v.units if layer in g[2]), None)
    if v.record == "layers":
        st.info(
            "Per-unit detail needs a run recorded with record 'units' or 'full'; this run "
            "was recorded 'layers'."
        )
        return
    if group is None:
        return
    gname, size, params = group
    if v.record == "full" and v.sizes[layer] <= 4096 and len(v.shapes[layer]) <= 1:
        z = read_view(views.param_rows, path, layer, s, e, large=True).reshape(e - s, -1)
        what = f"each element of {layer}"
    else:
        z = read_view(views.unit_rows, path, gname, s, e, large=True)
        what = (
            f"each unit of {gname} (its {' and '.join(p.split('.')[-1] for p in params)} together)"
            if len(params) > 1
            else f"each unit of {gname}"
        )
    plot(
        F.unit_heatmap(z, positions=pos[s:e], title=f"LCA of {what}, steps {first}–{last}"),
        key="layers_drill_units",
    )
    download_csv(
        lambda: export.step_matrix_csv(
            pos[s:e], z, [f"{gname} unit {i}" for i in range(z.shape[1])]
        ),
        f"{layer}-units-steps-{first}-{last}",
        key="layers_csv_units",
    )
    st.caption(
        f"{size:,} units (neurons or channels) × steps; green cells: the unit's incoming "
        "weights lowered the loss on that step, red: raised it."
    )


def sync_section(path: Path, figures: RunFigures) -> None:
    st.subheader("Do the layers learn at the same moments?")
    c1, c2 = st.columns(2)
    top = c1.slider(
        "Peak steps: each layer's top % of steps by |LCA|",
        1,
        20,
        5,
        key="sync_top",
        bind="query-params",
    )
    detrend = c2.toggle(
        "Remove the shared trend",  # short: the whole sentence was cut in a 1024-px column
        value=True,
        key="sync_detrend",
        bind="query-params",
        help="Compare each step with the layer's recent level (a 25-step window). All "
        "layers learn most at the start; without this, that shared trend alone makes "
        "peaks coincide.",
    )
    window = 25 if detrend else 0
    version = view_version(path, "synchrony", top, window)
    out = _synchrony(str(path), version, top / 100.0, window)
    if "error" in out:
        st.info(literal(out["error"]))
        return
    res, names = out["result"], out["names"]
    c1, c2, c3 = st.columns(3)
    c1.metric(
        "Shared peak steps (this run)",
        f"{100 * res.observed:.1f}%",
        help="C: on average, the % of one layer's peak steps that are also peak steps "
        "of another layer.",
    )
    c2.metric(
        "By chance",
        f"{100 * res.null_mean:.1f}% ± {100 * res.null_sd:.1f}%",
        help=f"C when each layer's peaks are shifted in time at random ({res.shifts} shifts).",
    )
    z = "∞" if math.isinf(res.z) else f"{res.z:.1f}"
    c3.metric(
        "z-score",
        z,
        delta=p_phrase(res.p),
        delta_color="off",
        help="How many standard deviations the shared peaks lie above what chance gives "
        "(0 = just chance; above 3 = very unlikely by chance). p: the share of "
        "random shifts at least as synchronized.",
    )
    verdict = (
        "peak together far more often than chance: learning is synchronized across layers"
        if res.p < 0.01 and res.z > 0
        else "do not peak together more often than chance would give"
    )
    st.markdown(f"The layers **{verdict}**.")
    plot(
        figures("peak_raster", lambda: F.peak_raster(res.peaks, names), top, window),
        key="layers_peaks",
    )
    st.caption(
        "Each tick is a step on which that layer had one of its biggest LCA steps. "
        "Vertical stacks of ticks are moments when many layers learned at once."
    )
    plot(figures("synchrony", lambda: F.synchrony_figure(res), top, window), key="layers_sync")
    st.caption(
        "Grey: how often peaks would coincide if the layers were unrelated (each "
        "layer's peak pattern shifted in time at random); blue line: this run."
    )
    with st.expander("How is this measured?"):
        st.markdown(
            f"- Per layer, the **peak steps** are its {res.peaks_per_layer} steps "
            f"({top}% of {res.num_steps} optimizer steps) with the largest |LCA|"
            + (
                ", each divided by the layer's average |LCA| over the surrounding 25 steps"
                if detrend
                else ""
            )
            + ".\n"
            "- **C** = for every pair of layers, the fraction of peak steps they share, "
            "averaged over all pairs (100% = all layers peak on the same steps).\n"
            f"- **Chance**: each layer's peak steps are shifted in time by its own random "
            f"amount (wrapping around), {res.shifts} times; this keeps each layer's pattern "
            "and destroys only the alignment between layers. z = (C − mean) / sd; p = share "
            "of shifts with C at least as high.\n"
            "- Interventions (e.g. prune events) are left out. The LCA paper reports "
            "synchronized learning but not its measure; this one is ours."
            + (
                f"\n- Left out (never moved enough): {literal(', '.join(out['left_out']))}."
                if out["left_out"]
                else ""
            )
        )


def render(path: Path) -> bool:
    figures = RunFigures(path)  # this version of the file: figures shared by every session
    v: views.LayersView | None = view_or_explain(views.layers_view, path)
    if v is None:
        return False
    st.caption(
        f"**{literal(path.name)}** · {literal(v.status)} · {steps_phrase(v.kind)} · "
        f"{len(v.names)} layers (parameter tensors) · record {literal(v.record)}"
    )
    if v.num_steps == 0:
        st.info("This run has not recorded a step yet; the charts appear after the first step.")
        return v.running
    per_param = st.toggle(
        "Per parameter (divide each layer by its number of parameters)",
        key="layers_per_param",
        bind="query-params",
    )
    plot(
        figures(
            "layer_totals",
            lambda: F.layer_totals(v.names, v.totals, v.counts, per_param=per_param),
            per_param,
        ),
        key="layers_totals",
    )
    download_csv(
        lambda: export.series_csv(
            {"layer": v.names, "total LCA": v.totals, "parameters": v.counts}
        ),
        "layer-totals",
        key="layers_csv_totals",
    )
    st.caption(
        ":green[Green bars]: layers whose weights lowered the loss over the whole run "
        "(LCA < 0); :red[red]: layers that raised it. "
        + (
            "Per parameter shows which layers work hardest for their size."
            if per_param
            else "The bars add up to the total change of the loss."
        )
    )
    pos = v.positions
    plot(
        figures(
            "layer_step_heatmap", lambda: F.layer_step_heatmap(v.layer_lca, v.names, kind=v.kind)
        ),
        key=HEATMAP_KEY,
        on_select=partial(_on_cell_click, list(v.names), int(np.floor(pos[-1]))),
        selection_mode="points",
    )
    download_csv(
        lambda: export.step_matrix_csv(pos, v.layer_lca, v.names),
        "layer-lca-per-step",
        key="layers_csv_steps",
    )
    st.caption(
        "Each cell is one layer's LCA summed over a block of steps (exact sums). "
        "Click a cell to look at that layer and those steps in detail below."
    )
    drill_down(path, v, pos)
    plot(
        figures(
            "cumulative_layers",
            lambda: F.cumulative_layers(
                v.cumulative, v.names, per_param_counts=v.counts, per_param=per_param, kind=v.kind
            ),
            per_param,
        ),
        key="layers_cumulative",
    )
    st.caption(
        "Each line is a layer's running total of LCA: going down = the layer is "
        "lowering the loss; the end point is its bar in the first chart."
    )
    sync_section(path, figures)
    collapse_section(path)
    heldout_section(path, per_param, figures)
    return v.running


def heldout_section(path: Path, per_param: bool, figures: RunFigures) -> None:
    """Training LCA beside held-out LCA: which layers and weights helped generalize (figures
    from the per-run cache, shared by every session viewing this version of the file)."""
    st.subheader("Did it help the held-out loss too?")
    g: views.GeneralizationView | None = view_or_explain(views.generalization_view, path)
    if g is None:
        return
    if not g.recorded:
        st.info(
            "This run measured LCA on the training measurement set only. Train with "
            "'Held-out LCA' (--measure-val) to see, layer by layer and weight "
            "by weight, what helped the loss on examples the model never trained on."
        )
        return
    plot(
        figures(
            "heldout_totals",
            lambda: F.train_vs_heldout_layers(
                g.names, g.train_totals, g.val_totals, g.counts, per_param=per_param
            ),
            per_param,
        ),
        key="layers_heldout_totals",
    )
    st.caption(
        "Solid bars: each layer's total LCA of the training measurement loss; hatched bars: "
        "of the held-out loss (the test split), along the same steps. :green[Green] lowered "
        "that loss, :red[red] raised it. A layer green solid but red hatched learned "
        "something that did not carry over to new examples."
    )
    plot(
        figures(
            "heldout_shares",
            lambda: F.generalization_shares(
                g.names, g.helped_both, g.train_only, g.val_only, g.hurt_both
            ),
        ),
        key="layers_heldout_shares",
    )
    gap = int(g.train_only.sum())
    counted = int((g.helped_both + g.train_only + g.val_only + g.hurt_both).sum())
    note = (
        f"Each weight judged by its total LCA over the run: {gap:,} of {counted:,} moving "
        "weights lowered the training loss but raised the held-out loss (red with green "
        "hatching)."
    )
    if g.left_out:
        note += (
            f" {g.left_out_params:,} weights in {len(g.left_out)} tensor(s) "
            f"({literal(', '.join(g.left_out[:4]))}{', …' if len(g.left_out) > 4 else ''}) "
            "are left out: their gradient is structurally zero (e.g. a convolution's bias "
            "right before BatchNorm), so their LCA is rounding noise with a random sign."
        )
    st.caption(note)
    err = g.val_conservation_error
    change = float(g.val_loss[-1] - g.val_loss[0]) if len(g.val_loss) else 0.0
    st.caption(
        f"Held-out loss {g.val_loss[0]:.4f} → {g.val_loss[-1]:.4f}; LCA allocated all but "
        f"{err:+.1e} of that change"
        + (f" ({100 * abs(err) / abs(change):.3g}%)." if change else ".")
    )


def collapse_section(path: Path) -> None:
    """Neural collapse of the classifier's input features, beside the classifier's LCA."""
    st.subheader("Does the last layer collapse, and does it still learn?")
    figures = RunFigures(path)  # before the read: built once per file version, shared
    c = view_or_explain(views.collapse_view, path)
    if c is None:
        return
    if not c.measures:
        st.info(
            "This run has no neural-collapse measures: they are recorded at each evaluation "
            "for runs trained with this version whose model ends in a linear classifier. "
            "Train the run again to see them."
        )
        return
    plot(
        figures(
            "collapse",
            lambda: F.collapse_figure(
                c.steps,
                c.measures,
                c.positions,
                c.lca_cumulative,
                classifier=c.classifier or "last layer",
            ),
        ),
        key="layers_collapse",
    )
    st.caption(
        "Top: the last layer's running LCA (green: it has lowered the loss overall). "
        "Bottom: how far its input features are from neural collapse, measured on the "
        "measurement set at each evaluation; every measure is 0 at full collapse "
        "(log axis, so 0 is drawn at 1e-6)."
    )
    with st.expander("What do the four measures say?"):
        st.markdown(
            "- **NC1**: the spread of features within each class, relative to the spread of "
            "the class means (Tr(Σ_W Σ_B⁺)/C).\n"
            "- **NC2**: the centred class means have equal lengths (std/mean of the norms) and "
            "equal angles at the simplex value cos = −1/(C−1) (std of the cosines; mean "
            "|cos + 1/(C−1)|).\n"
            "- **NC3**: the classifier's rows point along the class means "
            "(‖W/‖W‖ − M/‖M‖‖²).\n"
            "- **NC4**: the share of examples where the classifier's answer differs from the "
            "nearest class mean.\n\n"
            "Papyan, Han & Donoho (2020), *Prevalence of neural collapse during the terminal "
            "phase of deep learning training*."
        )


def main() -> None:
    st.title("Layers: where and when the learning happened")
    show_run(render)


main()
