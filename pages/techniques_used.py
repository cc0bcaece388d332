"""Techniques: where each efficiency technique acted in the selected run, and what it took away.

Skip windows as bands on the loss and per-layer timelines, prune events with their loss cost
split into removed weights / compensating survivors / the rest, whether pruning removed helpers
or hurters, the techniques marked on the layer × step heatmap, AMP's loss scale, bits per layer,
frozen layers, and a table of what each technique saved. Everything is read through
``lca.views`` (cached per file version) and drawn by ``lca.figures``; a live run refreshes
itself.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import streamlit as st

import techniques as techniques_registry
from lca import export, views
from lca import figures as F
from lca.store import RunFileError
from pages import through_app
from pages.shared import (
    LIVE_SECONDS,
    download_csv,
    literal,
    literal_rows,
    live_fragment,
    open_run_or_explain,
    plot,
    read_view,
    require_run,
)

through_app()  # a bare page run on a fresh server: rerun through app.py

EVENT_KEY = "prune_event"  # URL-bound choice of the prune event shown in detail


def load_history(path: Path, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The pruned weights' and the survivors' cumulative LCA (record full; cached)."""
    return read_view(views.pruned_history, path, name, large=True)


def describe(name: str) -> str:
    try:
        return techniques_registry.describe(name)
    except ValueError:
        return "a technique this version of LCA Lab does not know; its records are shown below."


def section_overview(d: views.TechniqueView) -> None:
    data = d.data
    st.markdown(
        "**Techniques in this run:**\n"
        + "\n".join(f"- **{literal(n)}**: {describe(n)}" for n in data.names)
    )
    st.subheader("What each technique did and saved")
    st.table(literal_rows(d.summaries))
    download_csv(lambda: export.rows_csv(d.summaries), "techniques", key="tech_csv_summary")
    st.caption(
        "Computed from what the run file records step by step (series, event tables, "
        "arrays), so it grows with a live run."
    )
    reported = views.reported_rows(d.reported)
    if reported:
        with st.expander("What each technique reported when the run ended"):
            st.dataframe(reported, hide_index=True, width="stretch")
            download_csv(
                lambda: export.rows_csv(reported), "techniques-reported", key="tech_csv_reported"
            )
    elif d.status == "running":
        st.caption("Each technique's own report is added when the run ends.")
    section_savings(d)


def section_timelines(data: views.RunTechniques) -> None:
    bands = F.intervals(data.skip_mask)
    marks = data.prune_marks()
    st.subheader("Where the techniques acted")
    plot(
        F.technique_loss_figure(
            data.loss,
            skip_bands=bands,
            prune_marks=marks,
            scaler_skipped=data.scaler_skipped,
            kind=data.kind,
        ),
        key="tech_loss",
    )
    how = ["The loss on the measurement set."]
    if bands:
        how.append("Blue bands: weight updates were skipped.")
    if marks:
        how.append(
            "Crosses and dotted lines: prune events, each between the steps around it "
            "(a prune made after step k sits at k + ½, as on every page); its loss jump "
            "is its cost."
        )
    if data.scaler_skipped is not None and data.scaler_skipped.any():
        how.append("Purple triangles: steps the loss scaler skipped.")
    st.caption(" ".join(how))
    plot(
        F.technique_layer_lines_figure(
            data.layer_lca, data.tensor_names, skip_bands=bands, prune_marks=marks, kind=data.kind
        ),
        key="tech_layers",
    )
    st.caption(
        "Each line is one layer's running total of LCA: going down = the layer is "
        "lowering the loss."
        + (
            " Inside a blue band its weights stand still, so only the biases can still move it."
            if bands
            else ""
        )
    )
    plot(
        F.technique_heatmap_figure(
            data.layer_lca,
            data.tensor_names,
            skip_bands=bands,
            skip_rows=data.skip_rows,
            frozen=data.frozen_marks(),
            prune_marks=data.heatmap_prune_marks(),
            scaler_skipped=data.scaler_skipped,
            kind=data.kind,
        ),
        key="tech_heatmap",
    )
    legend = []
    if bands:
        legend.append("blue dashed boxes: skipped weight updates")
    if data.frozen:
        legend.append("black boxes: frozen tensors")
    if marks:
        legend.append("crosses: prune events")
    st.caption(
        "Each cell is one tensor on one step (or one prune): **green = helped** (lowered "
        "the loss), "
        "**red = hurt**." + (f" {'; '.join(legend).capitalize()}." if legend else "")
    )


def section_pruning(d: views.TechniqueView, path: Path) -> None:
    data: views.RunTechniques = d.data
    events = [e for evs in d.events.values() for e in evs]
    st.subheader("Pruning: what each prune event cost")
    if not events:
        st.info(
            "No prune event has happened yet: the schedule's first step is still ahead "
            "(or it fell after the run's last step)."
        )
        return
    plot(F.prune_events_figure(events), key="tech_prune_events")
    st.caption(
        "Bar height = the event's share of the loss change (its LCA): **red raised the "
        "loss, green lowered it**. Solid = the removed weights; striped = surviving "
        "weights of the pruned layers that moved to compensate (L-OBS) and their biases; "
        "dotted = everything else."
    )
    for name in d.events:
        sparsity = d.series.get(name, {}).get("sparsity")
        if sparsity is not None and sparsity.ndim == 1 and len(d.events) == 1:
            plot(
                F.series_figure(
                    100 * sparsity.astype(np.float64),
                    title=f"{name}: share of the prunable weights that are zero",
                    y_title="sparsity (%)",
                    kind=data.kind,
                    height=260,
                ),
                key=f"tech_sparsity_{name}",
            )
    titles = [e.title for e in events]
    choice = (
        st.selectbox("Prune event shown per layer", titles, key=EVENT_KEY, bind="query-params")
        if len(events) > 1
        else titles[0]
    )
    event = events[titles.index(choice)] if choice in titles else events[0]
    split = d.splits[(event.technique, event.segment)]
    plot(
        F.prune_split_figure(
            split, title=f"What {event.title} cost, layer by layer (total {event.cost:+.3g})"
        ),
        key="tech_prune_split",
    )
    if split.source == "layers":
        st.info(
            "This run has no per-weight record of the event, so only each layer's total "
            "is shown; record the run with --record full (or use a pruning technique that "
            "writes its event table) to split it into removed / surviving weights."
        )
    elif split.source == "weights":
        st.caption(
            "Split from the per-weight LCA of the event's segment (record full) and "
            "the step each weight was pruned at."
        )

    st.subheader("Did pruning remove helpers or hurters?")
    for name in d.events:
        if not d.events[name]:
            continue
        hist = load_history(path, name) if d.record == "full" else None
        ratio = [
            e.helper_removal_ratio for e in d.events[name] if math.isfinite(e.helper_removal_ratio)
        ]
        cols = st.columns([3, 1])
        with cols[0]:
            if hist is not None:
                removed, survivors = hist
                shares = [
                    float((removed < 0).mean()) if len(removed) else math.nan,
                    float((survivors < 0).mean()) if len(survivors) else math.nan,
                ]
                hurt = [
                    float((removed > 0).mean()) if len(removed) else math.nan,
                    float((survivors > 0).mean()) if len(survivors) else math.nan,
                ]
                counts = [len(removed), len(survivors)]
            else:
                table = views.helper_shares(
                    d.layer_events.get(name, {}), d.shapes, data.tensor_names
                )
                shares = [table[0], table[1]] if table else [math.nan, math.nan]
                hurt = None
                counts = [table[2], table[3]] if table else None
            plot(
                F.helper_share_figure(
                    ["pruned", "kept"],
                    shares,
                    hurt=hurt,
                    counts=counts,
                    title=f"{name}: had the weights helped before pruning?",
                ),
                key=f"tech_share_{name}",
            )
        with cols[1]:
            if ratio:
                st.metric(
                    "Helper-removal ratio (last event)",
                    f"{ratio[-1]:.2f}",
                    help="Mean cumulative LCA of the removed weights ÷ that of the "
                    "survivors, before the event. 1: pruning removed weights as helpful "
                    "as those it kept; below 1: it removed weaker helpers; negative: it "
                    "removed weights that had hurt.",
                )
        if hist is not None:
            plot(
                F.helper_removal_figure(
                    *hist, title=f"{name}: each weight's cumulative LCA before pruning"
                ),
                key=f"tech_box_{name}",
            )
            st.caption(
                "Each dot is one weight: **green had helped**, **red had hurt** up to "
                "its prune event (survivors: up to the last event); lower = helped "
                "more. The box spans the middle half of the weights; the axis shows the "
                "middle 98%."
            )
        else:
            st.info(
                "Per-weight histories need a run recorded with --record full; the shares "
                "above come from the technique's own event table."
            )


def section_amp(d: views.TechniqueView, name: str) -> None:
    series = d.series.get(name, {})
    data = d.data
    st.subheader(f"Mixed precision ({literal(name)})")
    scale = series.get("scale")
    skipped = series.get("skipped")
    if scale is None or scale.ndim != 1:
        st.info("This run recorded no loss scale.")
        return
    finite = scale[np.isfinite(scale) & (data.kind == 0)]
    if finite.size and np.all(finite == 1.0):
        st.info(
            "The forward pass ran in bfloat16, which needs no loss scaling: the scale stays "
            "1 and no step was skipped. LCA is still measured in float32."
        )
        return
    plot(
        F.amp_scale_figure(scale, None if skipped is None else (skipped != 0), kind=data.kind),
        key=f"tech_amp_{name}",
    )
    st.caption(
        "float16 training multiplies the loss by this scale; a step whose gradients "
        "overflowed is skipped (purple) and the scale halves. A skipped step moves no "
        "weight, so its LCA is exactly 0."
    )


def section_quantize(d: views.TechniqueView, name: str) -> None:
    data = d.data
    st.subheader(f"Low-bit weights ({literal(name)})")
    bits = d.bits.get(name)
    if bits is not None:
        plot(F.bits_figure(data.tensor_names, bits), key=f"tech_bits_{name}")
        st.caption(
            "Bits each tensor's weights use in the forward pass; grey tensors stay "
            "float32 (biases, and the first layer for binary/ternary by default)."
        )
    changed = d.series.get(name, {}).get("changed")
    if changed is not None and changed.ndim == 1:
        plot(
            F.series_figure(
                100 * changed,
                title="How many quantized weights changed value each step",
                y_title="weights whose level changed (%)",
                kind=data.kind,
            ),
            key=f"tech_changed_{name}",
        )
        st.caption(
            "A step moves a low-bit weight only when its latent value crosses a "
            "rounding threshold; the others have LCA exactly 0 on that step."
        )


def section_freeze(d: views.TechniqueView, name: str) -> None:
    data = d.data
    rows, mask = data.frozen[name]
    layers = ", ".join(sorted({F.module_of(data.tensor_names[i]) for i in rows})) or "?"
    st.subheader(f"Frozen layers ({literal(name)})")
    steps = F.intervals(mask)
    when = f"from segment {steps[0][0]} on" if steps else "never (its start step was not reached)"
    st.markdown(
        f"**{literal(layers)}** frozen {when}: the black boxes on the heatmap. "
        "Frozen weights do "
        "not move, so their LCA is 0 there; watch where the learning goes instead "
        "(the LCA paper's freezing experiment)."
    )


def section_compress(d: views.TechniqueView, name: str) -> None:
    data = d.data
    value = d.series.get(name, {}).get("value")
    st.subheader(f"Compressibility regularizer ({literal(name)})")
    plot(
        F.series_figure(
            value.astype(np.float64),
            title="The regularizer Σ‖w‖₁/‖w‖₂ over "
            "training (lower = weights concentrated in fewer large values)",
            y_title="Σ ‖w‖₁ / ‖w‖₂",
            kind=data.kind,
        ),
        key=f"tech_compress_{name}",
    )
    st.caption(
        "It is added to the training loss only; LCA measures the plain loss, so weights "
        "the regularizer moves without lowering that loss show up as hurting (red)."
    )


def section_feedback(d: views.TechniqueView, name: str) -> None:
    """DFA/BDFA: alignment with the true gradient over time, and helped per layer."""
    report = d.reported.get(name, {})
    dfa_layers = [n for n in str(report.get("dfa_layers", "")).split("+") if n]
    bp_layers = [n for n in str(report.get("bp_layers", "")).split("+") if n]
    st.subheader(f"Feedback alignment ({name})")
    alignment = d.series.get(name, {}).get("alignment")
    if alignment is not None and alignment.ndim == 2:
        names = dfa_layers or [f"layer {j + 1}" for j in range(alignment.shape[1])]
        plot(F.alignment_figure(alignment, names, kind=d.data.kind), key=f"tech_align_{name}")
        st.caption(
            "Cosine between the update this method made and the true gradient "
            "(backprop), per hidden layer. LCA always uses the true gradient, so a layer "
            "near 0 barely learns and one below 0 is pushed uphill."
        )
    helped = {
        k[len("helped_") :]: float(v)
        for k, v in report.items()
        if k.startswith("helped_") and isinstance(v, int | float)
    }
    if helped:
        trained_by = {**dict.fromkeys(bp_layers, "backprop"), **dict.fromkeys(dfa_layers, name)}
        plot(F.helped_by_method_figure(helped, trained_by), key=f"tech_helped_{name}")
        st.caption(
            "Share of each layer's weights whose total LCA is below 0 (helped) when the "
            "run ended, for layers trained by feedback alignment and by backprop."
        )
    elif d.status == "running":
        st.caption("Helped per layer appears when the run ends.")


def section_symmetry(d: views.TechniqueView, name: str) -> None:
    report = d.reported.get(name, {})
    st.subheader(f"Weight symmetry ({name})")
    if "params_saved" not in report:
        st.caption("The parameter count saved appears when the run ends.")
        return
    st.markdown(
        f"Variant **{report.get('variant', '?')}** on **{report.get('layers', '?')}**: "
        f"**{int(report['params_saved']):,}** parameters saved "
        f"({100 * float(report.get('fraction_params_saved', 0)):.1f}% of the model). "
        "The mirrored entries are never used, never move, and have LCA exactly 0."
    )


def section_savings(d: views.TechniqueView) -> None:
    from techniques.savings import savings_rows

    st.markdown("**What each technique saves, in bits per value (float32 = 32)**")
    st.dataframe(savings_rows(d.data.names, d.reported), hide_index=True, width="stretch")
    st.caption(
        "Simulated numerics (fake quantization, float16/FP8 by casting) cost time here; "
        "their figures are what the format would store on hardware that has it."
    )


def section_precision(d: views.TechniqueView, name: str, bits: dict[str, np.ndarray]) -> None:
    st.subheader(f"Precision per tensor ({name})")
    plot(F.precision_bits_figure(d.data.tensor_names, bits), key=f"tech_precision_{name}")
    st.caption(
        "Bits of each tensor class per layer: the analytic assignment (feedforward "
        "precisions equalizing quantization noise, gradient ranges and LSBs from a short "
        "float probe, an accumulator fine enough for the smallest update) or fixed bits. "
        "Rounded activations make the loss piecewise constant: LCA is measured on the "
        "quantized weights with activations clipped but not rounded."
    )


def section_loss_scales(d: views.TechniqueView, name: str) -> None:
    data, series = d.data, d.series[name]
    st.subheader(f"Per-layer loss scales ({name})")
    plot(
        F.layer_scales_figure(data.tensor_names, series["scale"], data.layer_lca, data.kind),
        key=f"tech_scales_{name}",
    )
    plot(
        F.underflow_figure(series["underflow"], series.get("underflow_global"), data.kind),
        key=f"tech_underflow_{name}",
    )
    st.caption(
        "Each layer's float16 error gets its own power-of-two scale; the weight "
        "gradients are unscaled exactly. Underflow: gradient values float16 flushed to "
        "zero, with these scales and with one global scale on the same gradients."
    )


def section_other(d: views.TechniqueView, name: str, shown: set[str]) -> None:
    data = d.data
    rest = {k: v for k, v in d.series.get(name, {}).items() if k not in shown and v.ndim == 1}
    if not rest:
        return
    st.subheader(f"{literal(name)}: recorded series")
    for field_, v in rest.items():
        plot(
            F.series_figure(
                v.astype(np.float64), title=f"{name}: {field_}", y_title=field_, kind=data.kind
            ),
            key=f"tech_series_{name}_{field_}",
        )


def body(path: Path) -> None:
    try:
        d: views.TechniqueView = read_view(views.technique_view, path)
    except (RunFileError, OSError) as e:
        st.error(literal(str(e).splitlines()[0] if str(e) else f"{path.name} cannot be read."))
        return
    data: views.RunTechniques = d.data
    if not data.names:
        st.info(views.no_technique_sentence())
        return
    if data.segments == 0:
        st.info(
            f"{literal(path.name)} has no recorded step yet; the techniques appear here "
            "as soon as "
            "the first step is written."
        )
        return
    if d.status == "running":
        st.caption(
            f"Live: {literal(path.name)} is still training; this page refreshes every "
            f"{LIVE_SECONDS:g} s."
        )
    section_overview(d)
    section_timelines(data)
    if data.prune:
        section_pruning(d, path)
    handled = {"skipping", "lr_factor", "sparsity"}
    precision = read_view(views.precision_view, path)
    for name in data.names:
        series = d.series.get(name, {})
        shown = set(handled)
        if "skipped" in series and "scale" in series and series["scale"].ndim == 1:
            section_amp(d, name)
            shown |= {"scale", "skipped"}
        if name in d.bits:
            section_quantize(d, name)
            shown |= {"scale", "changed"}
        if name in data.frozen:
            section_freeze(d, name)
            shown |= {"frozen"}
        value = series.get("value")
        if value is not None and value.ndim == 1 and name not in data.frozen:
            section_compress(d, name)
            shown |= {"value"}
        if "alignment" in series:
            section_feedback(d, name)
            shown |= {"alignment"}
        if name == "symmetry":
            section_symmetry(d, name)
        if name in precision:
            section_precision(d, name, precision[name])
        scale = series.get("scale")
        if scale is not None and scale.ndim == 2 and "underflow" in series:
            section_loss_scales(d, name)
            shown |= {"underflow", "underflow_global"}
        section_other(d, name, shown)


def main() -> None:
    st.title("Techniques")
    st.caption(
        "Where each efficiency technique acted in this run and what it took away. "
        "**Green = helped** (lowered the loss), **red = hurt**."
    )
    path = require_run()
    with open_run_or_explain(path) as r:
        if r is None:
            return
        live = r.status == "running"
    if live:
        live_fragment(LIVE_SECONDS)(body)(path)
    else:
        body(path)


main()
