"""What is LCA? A worked example with two weights, then how layers and neurons sum it, then the
glossary every other page links to.

The example is computed by the engine (``lca.explain``), so what a student sees here is exactly
what a run records: one step, the path integral along it, and shares that add up.
"""

from __future__ import annotations

import streamlit as st

from lca.explain import GLOSSARY, SCENARIOS, two_weight_example
from lca.figures.explain import (
    explain_path_figure,
    explain_shares_figure,
    explain_surface_figure,
)
from pages import through_app
from pages.shared import plot

through_app()  # a bare page run on a fresh server: rerun through app.py

LR_OPTIONS = (0.25, 0.5, 1.0, 2.0, 3.0, 4.0)
SCENARIO_KEY, LR_KEY = "explain_scenario", "explain_lr"


@st.cache_data(max_entries=64, show_spinner=False)
def example(scenario: str, lr: float):
    return two_weight_example(SCENARIOS[scenario][0], lr=lr)


def _scenario_lr() -> None:
    # Picking a scenario also picks the step size that shows it; the slider can change it after.
    st.session_state[LR_KEY] = SCENARIOS[st.session_state[SCENARIO_KEY]][1]


def _close(a, b) -> bool:
    return bool(abs(a - b).max() <= 1e-3 * max(1e-9, abs(b).max()))


def main() -> None:
    st.title("What is LCA?")
    st.markdown(
        "A network learns by moving its weights a little after every batch of examples. "
        "**Loss Change Allocation (LCA)** asks: *of the drop in the loss on this step, how much "
        "is due to each weight?* Here is the whole idea on a network with only **two weights**."
    )
    c1, c2 = st.columns(2)
    scenario = c1.selectbox(
        "What happens on the step", list(SCENARIOS), key=SCENARIO_KEY, on_change=_scenario_lr
    )
    st.session_state.setdefault(LR_KEY, SCENARIOS[scenario][1])
    lr = c2.select_slider("Learning rate (how big the step is)", LR_OPTIONS, key=LR_KEY)
    ex = example(scenario, float(lr))

    st.subheader("1 · One step on the loss surface")
    st.markdown(
        "The colours show the **loss** for every pair of weights: darker is worse. "
        "Training takes one step downhill, from *before* to *after* (the arrow): the loss "
        f"goes from **{ex.loss_start:.4f}** to **{ex.loss_end:.4f}**, a change of "
        f"**{ex.loss_change:+.4f}**. Both weights moved at once. Which of the two moves "
        "lowered the loss, and by how much?"
    )
    plot(explain_surface_figure(ex), key="explain_surface")

    st.subheader("2 · Walk along the step and add up")
    st.markdown(
        "Walk along the arrow. At every point, the **gradient** says how fast the loss "
        "changes when a weight moves; multiplied by how far that weight moves, it is the "
        "weight's rate of loss change (a curve).\n\n"
        "The **area under each curve** is that weight's share of the loss change: its LCA. "
        "Below zero (green) the weight **helped**, above zero (red) it **hurt**.\n\n"
        "LCA Lab measures each curve at three points (start, middle, end) and weighs them "
        "1 : 4 : 1 — *Simpson's rule*. Here that gives "
        f"**{ex.simpson_shares[0]:+.4f}** and **{ex.simpson_shares[1]:+.4f}**. Split into "
        "small pieces until nothing is left over (method *rk4-adaptive*), the shares are "
        f"**{ex.shares[0]:+.4f}** and **{ex.shares[1]:+.4f}**"
        + (
            " — the same: three points were enough."
            if _close(ex.simpson_shares, ex.shares)
            else " — a big step bends too much for three points, so splitting matters."
        )
    )
    plot(explain_path_figure(ex), key="explain_path")

    st.subheader("3 · The shares add up to the change")
    total = float(ex.shares.sum())
    st.markdown(
        f"Weight 1's share {ex.shares[0]:+.4f} plus weight 2's share {ex.shares[1]:+.4f} "
        f"is **{total:+.4f}**; the loss really changed by **{ex.loss_change:+.4f}**. "
        f"What is left over ({ex.loss_change - total:+.1e}) is the **conservation error**: "
        "near zero, so nothing was lost or invented.\n\n"
        "Try a bigger learning rate: the step overshoots the valley and one weight can "
        "hurt while the other helps."
    )
    plot(explain_shares_figure(ex), key="explain_shares")

    st.subheader("4 · From weights to neurons and layers")
    st.markdown(
        "A real network has thousands or millions of weights, and LCA gives each of them a share "
        "on every step. Because shares add up, they can be summed:\n\n"
        "- the shares of the weights feeding one **neuron** (or one channel of a convolution) "
        "give that neuron's LCA — the *Neurons & weights* page;\n"
        "- the shares of all weights of a **layer** give the layer's LCA — the *Layers* page;\n"
        "- the shares of all weights give the loss change of the step — the *Loss* page, where "
        "the measured loss and the loss rebuilt from LCA lie on top of each other.\n\n"
        "Green always means *helped* (lowered the loss) and red *hurt* (raised it)."
    )

    st.subheader("Glossary")
    st.caption(
        "The words the other pages use; hover the ⓘ next to a chart or number there "
        "for the same explanation."
    )
    st.dataframe(
        [{"term": term, "meaning": text} for term, text in GLOSSARY.items()],
        hide_index=True,
        width="stretch",
        column_config={
            "term": st.column_config.TextColumn(width="small"),
            "meaning": st.column_config.TextColumn(width="large"),
        },
    )


main()
