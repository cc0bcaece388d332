"""Playground: a tiny network learns 2-D points live; LCA shows who helped (green) or hurt (red).

Modelled on TensorFlow Playground for the classroom: play / pause / step / reset, toy data sets,
every setting in the URL so a teacher can share the exact setup, and a link mode that hides
chosen controls (``?hide=dataset,noise,lr`` or ``?lock=1`` for all settings). The network trains
in this process (it is tiny); ``lca.playground.Playground`` does the work, ``lca.figures`` draws.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import streamlit as st

from lca import figures
from lca.playground import (
    ACTIVATIONS,
    DATASETS,
    Playground,
    PlaygroundError,
    Settings,
    parse_hidden,
)
from pages.shared import plot

ENGINE_KEY = "pg_engine"
PLAYING_KEY = "pg_playing"
TICK_SECONDS = 0.7  # how often a playing session advances and redraws
LR_OPTIONS = (0.0001, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
SPEED_OPTIONS = (1, 2, 5, 10, 20, 50)
VIEW_OPTIONS = ("whole session", "recent steps")
WINDOW = 20  # steps in the "recent" LCA window

# Every control: URL key -> (default, parser of a URL string). The URL key is also the widget key.
DEFAULTS: dict[str, Any] = {
    "dataset": "circles",
    "noise": 0.05,
    "train": 50,
    "hidden": "4,4",
    "activation": "tanh",
    "lr": 0.03,
    "batch": 10,
    "seed": 0,
    "speed": 5,
    "view": VIEW_OPTIONS[0],
}
HIDEABLE = tuple(DEFAULTS)
LABELS = {
    "dataset": "Data set", "noise": "Noise", "train": "Training points (%)",
    "hidden": "Hidden layers", "activation": "Activation", "lr": "Learning rate",
    "batch": "Batch size", "seed": "Seed", "speed": "Speed", "view": "LCA shown",
}


def _choice(options: tuple) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        for o in options:
            if str(o) == text or (isinstance(o, float) and _float_eq(text, o)):
                return o
        raise ValueError(text)

    return parse


def _float_eq(text: str, value: float) -> bool:
    try:
        return abs(float(text) - value) <= 1e-12 * max(1.0, abs(value))
    except ValueError:
        return False


def _ranged(kind: type, lo: float, hi: float) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        v = kind(float(text)) if kind is int else kind(text)
        if not lo <= v <= hi:
            raise ValueError(text)
        return v

    return parse


PARSERS: dict[str, Callable[[str], Any]] = {
    "dataset": _choice(DATASETS),
    "noise": _ranged(float, 0.0, 0.5),
    "train": _ranged(int, 10, 90),
    "hidden": lambda t: ",".join(map(str, parse_hidden(t))),
    "activation": _choice(ACTIVATIONS),
    "lr": _choice(LR_OPTIONS),
    "batch": _ranged(int, 1, 100),
    "seed": _ranged(int, 0, 999_999),
    "speed": _choice(SPEED_OPTIONS),
    "view": _choice(VIEW_OPTIONS),
}


def hidden_controls() -> set[str]:
    """Controls the link hides: ``?hide=a,b`` names them, ``?lock=1`` (or hide=all) hides all."""
    qp = st.query_params
    names = {n.strip() for n in qp.get("hide", "").split(",") if n.strip()}
    if qp.get("lock", "").lower() in ("1", "true", "yes") or "all" in names:
        return set(HIDEABLE)
    return names & set(HIDEABLE)


def url_value(key: str) -> Any:
    """A hidden control's value: its URL parameter if valid, else the default."""
    text = st.query_params.get(key)
    if text is None:
        return DEFAULTS[key]
    try:
        return PARSERS[key](text)
    except (ValueError, PlaygroundError):
        return DEFAULTS[key]


def _clean_stale(key: str) -> None:
    """Drop a session value another page left under the same key if it is not valid here."""
    if key in st.session_state:
        try:
            PARSERS[key](str(st.session_state[key]))
        except (ValueError, PlaygroundError):
            del st.session_state[key]


def controls(hidden: set[str]) -> dict[str, Any]:
    """Render the visible settings (bound to the URL) and return every setting's value."""
    values: dict[str, Any] = {}
    visible = [k for k in HIDEABLE if k not in hidden and k not in ("speed", "view")]
    widgets: dict[str, Callable[[], Any]] = {
        "dataset": lambda: st.selectbox(
            "Data set", DATASETS, key="dataset", bind="query-params",
            help="Which 2-D points to separate: blue vs orange.",
        ),
        "noise": lambda: st.slider(
            "Noise", 0.0, 0.5, DEFAULTS["noise"], step=0.01, key="noise", bind="query-params",
            help="How much the points are jittered (0 = clean shapes).",
        ),
        "train": lambda: st.slider(
            "Training points (%)", 10, 90, DEFAULTS["train"], step=10, key="train",
            bind="query-params", help="The rest are test points, never trained on.",
        ),
        "hidden": lambda: st.text_input(
            "Hidden layers", DEFAULTS["hidden"], key="hidden", bind="query-params",
            help="Neurons per hidden layer, e.g. 4,4 (at most 6 layers of 8); empty = none.",
        ),
        "activation": lambda: st.selectbox(
            "Activation", ACTIVATIONS, key="activation", bind="query-params",
        ),
        "lr": lambda: st.select_slider(
            "Learning rate", LR_OPTIONS, DEFAULTS["lr"], key="lr", bind="query-params",
        ),
        "batch": lambda: st.slider(
            "Batch size", 1, 100, DEFAULTS["batch"], key="batch", bind="query-params",
        ),
        "seed": lambda: st.number_input(
            "Seed", 0, 999_999, DEFAULTS["seed"], step=1, key="seed", bind="query-params",
            help="Same seed, same points, same starting weights: the same lesson every time.",
        ),
    }
    if visible:
        cols = st.columns(4)
        for i, key in enumerate(visible):
            _clean_stale(key)
            with cols[i % 4]:
                values[key] = widgets[key]()
    for key in HIDEABLE:
        if key not in values and key not in ("speed", "view"):
            values[key] = url_value(key)
    return values


def settings_from(values: dict[str, Any]) -> Settings:
    """Settings from the controls; a bad hidden-layer text falls back with one sentence."""
    hidden = values["hidden"]
    try:
        parse_hidden(hidden)
    except PlaygroundError as e:
        st.warning(f"{e} Using {DEFAULTS['hidden']} until it is fixed.")
        hidden = DEFAULTS["hidden"]
    return Settings(
        dataset=values["dataset"],
        noise=float(values["noise"]),
        train_fraction=int(values["train"]) / 100.0,
        hidden=hidden,
        activation=values["activation"],
        lr=float(values["lr"]),
        batch_size=int(values["batch"]),
        seed=int(values["seed"]),
    )


def engine(settings: Settings) -> Playground:
    """This user's session engine, rebuilt when the data or the architecture changed."""
    eng = st.session_state.get(ENGINE_KEY)
    if not isinstance(eng, Playground):
        eng = Playground(settings, window=WINDOW)
        st.session_state[ENGINE_KEY] = eng
    elif eng.configure(settings):
        if st.session_state.get(PLAYING_KEY):
            st.toast("New setup: the network starts again from step 0. Press Play.")
        st.session_state[PLAYING_KEY] = False
    return eng


# -- button callbacks (run before the rerun, so the new state is drawn at once) -------------------
def _toggle_play() -> None:
    st.session_state[PLAYING_KEY] = not st.session_state.get(PLAYING_KEY, False)


def _step_once() -> None:
    eng = st.session_state.get(ENGINE_KEY)
    if isinstance(eng, Playground):
        eng.step(1)


def _reset() -> None:
    st.session_state[PLAYING_KEY] = False
    eng = st.session_state.get(ENGINE_KEY)
    if isinstance(eng, Playground):
        eng.reset()


def share_link(values: dict[str, Any], hide: list[str], lock: bool) -> str:
    """The page URL with every non-default setting, plus the hide/lock choice."""
    base = None
    try:
        base = st.context.url
    except Exception:  # noqa: BLE001 - the context is unavailable outside a browser session
        base = None
    base = base or "http://localhost:8501/playground"
    params = {k: values[k] for k in HIDEABLE if str(values[k]) != str(DEFAULTS[k])}
    if lock:
        params["lock"] = 1
    elif hide:
        params["hide"] = ",".join(hide)
    if not params:
        return base
    return f"{base}?{urlencode(params, safe=',')}"


def draw(eng: Playground, view: str) -> None:
    """Metrics, the network graph, the decision boundary, neuron outputs and curves."""
    h = eng.history
    cols = st.columns(5)
    cols[0].metric("Step", f"{eng.steps:,}")
    cols[1].metric("Training loss", f"{h.train_loss[-1]:.3f}")
    cols[2].metric("Test loss", f"{h.test_loss[-1]:.3f}")
    cols[3].metric("Training accuracy", f"{100 * h.train_acc[-1]:.0f}%")
    cols[4].metric("Test accuracy", f"{100 * h.test_acc[-1]:.0f}%")

    window = "recent" if view == VIEW_OPTIONS[1] else "cumulative"
    span = (
        f"the last {eng.recent_steps()} steps" if window == "recent"
        else f"all {eng.steps} steps so far"
    )
    left, right = st.columns([3, 2])
    with left:
        plot(
            figures.network_figure(
                eng.layer_sizes, eng.edge_lca(window), eng.neuron_lca(window),
                weights=eng.weights(), layer_names=eng.layer_names,
                title=(f"Who lowered the loss over {span}" if eng.steps else
                       "Press Play or Step: the colours show who lowers the loss"),
            ),
            key="pg_network",
        )
        st.caption(
            "Each line is one weight, each circle one neuron (its incoming weights + bias). "
            "**Green = helped** (lowered the loss), **red = hurt** (raised it); thicker and "
            "bigger = more. Hover for the numbers."
        )
    with right:
        xs, ys, prob = eng.boundary(80)
        pts = eng.points()
        plot(
            figures.decision_boundary_figure(
                xs, ys, prob, pts["x_train"], pts["y_train"], pts["x_test"], pts["y_test"],
                title=f"Prediction after {eng.steps} steps",
            ),
            key="pg_boundary",
        )
        st.caption(
            "Background: what the network predicts (blue or orange, white = unsure). "
            "White-ringed dots are training points, black-ringed dots test points."
        )

    left, right = st.columns([3, 2])
    with left:
        gx, gy, outs = eng.neuron_outputs(28)
        plot(
            figures.neuron_outputs_figure(
                gx, gy, outs, eng.neuron_lca(window)[:-1] if eng.steps else None,
                layer_names=eng.layer_names[:-1],
            ),
            key="pg_neurons",
        )
        st.caption(
            "Each small map is one hidden neuron's output over the plane (blue negative, orange "
            "positive); its title gives the neuron's LCA, green if it helped, red if it hurt."
        )
    with right:
        plot(figures.playground_loss_figure(h.step, h.train_loss, h.test_loss), key="pg_loss")
        totals = [float(v.sum()) for v in eng.neuron_lca(window)]
        plot(
            figures.layer_lca_bars_figure(
                eng.layer_names, totals, title="Each layer's share of the loss change",
            ),
            key="pg_layers",
        )
        st.caption(
            f"Over {span}. Bars below zero (green): the layer lowered the loss; above zero "
            "(red): it raised it. Together they add up to the loss change."
        )


def main() -> None:
    st.title("Playground")
    st.caption(
        "A tiny network learns to separate blue from orange points. Loss Change Allocation shows "
        "which neurons and weights did the learning: **green helped, red hurt**."
    )
    hidden = hidden_controls()
    st.session_state.setdefault(PLAYING_KEY, False)

    buttons = st.columns([1, 1, 1, 2, 2])
    play_slot = buttons[0].empty()  # drawn once the engine knows whether it still plays
    buttons[1].button("Step", key="pg_step", on_click=_step_once, width="stretch",
                      icon=":material/skip_next:", help="One optimizer step.")
    buttons[2].button("Reset", key="pg_reset", on_click=_reset, width="stretch",
                      icon=":material/restart_alt:",
                      help="Back to step 0 with the same starting weights.")
    with buttons[3]:
        if "speed" in hidden:
            speed = url_value("speed")
        else:
            _clean_stale("speed")
            speed = st.select_slider(
                "Speed (steps per tick)", SPEED_OPTIONS, DEFAULTS["speed"], key="speed",
                bind="query-params",
            )
    with buttons[4]:
        if "view" in hidden:
            view = url_value("view")
        else:
            _clean_stale("view")
            view = st.radio(
                "LCA shown", VIEW_OPTIONS, key="view", bind="query-params", horizontal=True,
                help=f"Whole session, or only the last {WINDOW} steps (what is happening now).",
            )

    values = controls(hidden)
    values["speed"], values["view"] = speed, view
    try:
        settings = settings_from(values)
    except PlaygroundError as e:
        st.error(str(e))
        st.stop()
    eng = engine(settings)
    playing = bool(st.session_state[PLAYING_KEY])
    play_slot.button(
        "Pause" if playing else "Play", key="pg_play", on_click=_toggle_play,
        icon=":material/pause:" if playing else ":material/play_arrow:",
        type="primary", width="stretch",
    )

    run_every = TICK_SECONDS if playing else None

    @st.fragment(run_every=run_every)
    def live() -> None:
        if st.session_state.get(PLAYING_KEY):
            eng.step(int(speed))
        draw(eng, view)

    live()

    if len(hidden) < len(HIDEABLE):
        with st.expander("Share this exact setup (teacher link)"):
            hide = st.multiselect(
                "Hide these controls for the students", list(HIDEABLE), key="pg_hide_choice",
                format_func=lambda k: LABELS.get(k, k),
            )
            lock = st.checkbox("Hide all settings (students only get Play, Step, Reset)",
                               key="pg_lock_choice")
            st.code(share_link(values, hide, lock), language=None)
            st.caption("Copy the link (button at the right of the box). Hidden controls keep "
                       "the values in the link.")


main()
