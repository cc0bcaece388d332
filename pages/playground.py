"""Playground: a tiny network learns 2-D points live; LCA shows who helped (green) or hurt (red).

Everything that moves runs in the student's browser: ``components/playground`` (plain HTML, JS
and CSS served by Streamlit itself, nothing fetched from elsewhere) generates the points, trains
the MLP and allocates every step by LCA with the same definition as ``lca/``. This page only
reads the settings from the URL, hands them to the component, and writes them back to the URL
when the student changes one (the component reports settings, never steps), so the server's
work per playing student is ~0. A teacher's link can hide controls: ``?hide=dataset,noise,lr``,
or ``?lock=1`` for all settings (Play, Step and Reset stay).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlencode

import streamlit as st

from lca.playground import ACTIVATIONS, DATASETS, PlaygroundError, parse_hidden
from pages import through_app
from pages.playground_component import playground

through_app()  # a bare page run on a fresh server: rerun through app.py

COMPONENT_KEY = "pg"

REGRESSION_SETS = ("plane", "multigauss")
ALL_SETS = (*DATASETS, *REGRESSION_SETS)
ALL_ACTIVATIONS = (*ACTIVATIONS, "linear")
FEATURES = ("x1", "x2", "x1sq", "x2sq", "x1x2", "sin1", "sin2")
LR_OPTIONS = ("0.0001", "0.001", "0.003", "0.01", "0.03", "0.1", "0.3", "1", "3")
RATE_OPTIONS = ("0.001", "0.003", "0.01", "0.03", "0.1", "0.3", "1")
SPEED_OPTIONS = ("1", "2", "5", "10", "20", "50", "100", "200", "500", "max")  # steps per second
VIEW_OPTIONS = ("whole session", "recent steps")
REG_OPTIONS = ("none", "L1", "L2")

# Every setting: URL key -> default, as the URL text (the component speaks the same strings).
DEFAULTS: dict[str, str] = {
    "dataset": "circles",
    "noise": "0.05",
    "train": "50",
    "hidden": "4,4",
    "activation": "tanh",
    "lr": "0.03",
    "batch": "10",
    "seed": "0",
    "speed": "50",
    "view": VIEW_OPTIONS[0],
    "features": "x1,x2",
    "reg": "none",
    "rate": "0.01",
    "test": "0",
    "discrete": "0",
}
HIDEABLE = tuple(DEFAULTS)
LABELS = {
    "dataset": "Data set",
    "noise": "Noise",
    "train": "Training points (%)",
    "hidden": "Hidden layers",
    "activation": "Activation",
    "lr": "Learning rate",
    "batch": "Batch size",
    "seed": "Seed",
    "speed": "Speed",
    "view": "LCA shown",
    "features": "Input features",
    "reg": "Regularization",
    "rate": "Regularization rate",
    "test": "Show test data",
    "discrete": "Discretize output",
}


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    """Accept one of ``options`` (numbers compare by value: "0.10" is "0.1")."""

    def parse(text: str) -> str:
        for o in options:
            if text == o:
                return o
            try:
                if float(text) == float(o):
                    return o
            except ValueError:
                pass
        raise ValueError(text)

    return parse


def _ranged(kind: type, lo: float, hi: float) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = float(text)
        if kind is int and not value.is_integer():
            raise ValueError(text)
        if not lo <= value <= hi:
            raise ValueError(text)
        return str(int(value)) if kind is int else f"{value:g}"

    return parse


def _features(text: str) -> str:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or any(n not in FEATURES for n in names):
        raise ValueError(text)
    return ",".join(f for f in FEATURES if f in names)


def _flag(text: str) -> str:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return "1"
    if low in ("0", "false", "no", "off", ""):
        return "0"
    raise ValueError(text)


PARSERS: dict[str, Callable[[str], str]] = {
    "dataset": _choice(ALL_SETS),
    "noise": _ranged(float, 0.0, 0.5),
    "train": _ranged(int, 10, 90),
    "hidden": lambda t: ",".join(map(str, parse_hidden(t))),
    "activation": _choice(ALL_ACTIVATIONS),
    "lr": _choice(LR_OPTIONS),
    "batch": _ranged(int, 1, 100),
    "seed": _ranged(int, 0, 999_999),
    "speed": _choice(SPEED_OPTIONS),
    "view": _choice(VIEW_OPTIONS),
    "features": _features,
    "reg": _choice(REG_OPTIONS),
    "rate": _choice(RATE_OPTIONS),
    "test": _flag,
    "discrete": _flag,
}


def parse(key: str, text: object) -> str:
    """The canonical URL text of one setting; ValueError (or PlaygroundError) when not allowed."""
    return PARSERS[key](str(text))


def hidden_controls() -> set[str]:
    """Controls the link hides: ``?hide=a,b`` names them, ``?lock=1`` (or hide=all) hides all."""
    qp = st.query_params
    names = {n.strip() for n in qp.get("hide", "").split(",") if n.strip()}
    if qp.get("lock", "").lower() in ("1", "true", "yes") or "all" in names:
        return set(HIDEABLE)
    return names & set(HIDEABLE)


def url_settings() -> tuple[dict[str, str], list[str]]:
    """Every setting from the URL (default where absent) and one sentence per bad value."""
    values: dict[str, str] = {}
    problems: list[str] = []
    for key, default in DEFAULTS.items():
        text = st.query_params.get(key)
        if text is None:
            values[key] = default
            continue
        try:
            values[key] = parse(key, text)
        except PlaygroundError as e:
            values[key] = default
            problems.append(
                f"{str(e).rstrip('.')}; the network uses {default} until the link is fixed."
            )
        except ValueError:
            values[key] = default
            problems.append(
                f"The link's {LABELS[key].lower()} {text!r} is not offered here; using "
                f"{default} (fix or remove {key}= in the address)."
            )
    return values, problems


def reported_settings(value: object) -> dict[str, str]:
    """The settings the component reported, each checked (a bad one is ignored, not trusted)."""
    if not isinstance(value, dict):
        return {}
    clean: dict[str, str] = {}
    for key in DEFAULTS:
        if key in value:
            try:
                clean[key] = parse(key, value[key])
            except (ValueError, PlaygroundError):
                continue
    return clean


def write_url(values: dict[str, str]) -> None:
    """Put every non-default setting in the address (defaults leave it), other keys untouched."""
    for key, default in DEFAULTS.items():
        text = values.get(key, default)
        if text == default:
            if key in st.query_params:
                del st.query_params[key]
        elif st.query_params.get(key) != text:
            st.query_params[key] = text


def share_link(values: dict[str, str], hide: list[str], lock: bool) -> str:
    """The page URL with every non-default setting, plus the hide/lock choice."""
    try:
        base = st.context.url
    except Exception:  # noqa: BLE001 - the context is unavailable outside a browser session
        base = None
    base = (base or "http://localhost:8501/playground").split("?")[0]
    params: dict[str, str | int] = {
        k: values[k] for k in HIDEABLE if values.get(k, DEFAULTS[k]) != DEFAULTS[k]
    }
    if lock:
        params["lock"] = 1
    elif hide:
        params["hide"] = ",".join(hide)
    if not params:
        return base
    return f"{base}?{urlencode(params, safe=',')}"


# This page is a projector's main view: less white space around it, so the network and the
# prediction fit a 1024×768 screen beside the sidebar (the style lives only while it is shown).
COMPACT_PAGE = """<style>
[data-testid="stMainBlockContainer"] {padding-top: 2.6rem; padding-left: 1.5rem;
  padding-right: 1.5rem;}
</style>"""


def main() -> None:
    st.html(COMPACT_PAGE)
    st.title("Playground")
    st.caption(
        "A tiny network learns in your browser; **green** = helped (lowered the loss), "
        "**red** = hurt. Hover any line or neuron for its numbers."
    )
    hidden = hidden_controls()
    # What the student last changed in the browser (the component's value, set before this run)
    # goes to the address first, so this run already draws from, and warns about, the new one.
    reported = reported_settings(st.session_state.get(COMPONENT_KEY))
    if reported:
        current, _ = url_settings()
        write_url({**current, **reported})
    settings, problems = url_settings()
    # Always one container here, warnings or not, so the component keeps its place in the page
    # (a moved component is a new iframe: the student's session would restart at step 0).
    with st.container():
        for sentence in problems:
            st.warning(sentence)
    playground(
        settings=settings,
        hide=sorted(hidden),
        defaults=DEFAULTS,
        options={
            "lr": list(LR_OPTIONS),
            "rate": list(RATE_OPTIONS),
            "speed": list(SPEED_OPTIONS),
            "view": list(VIEW_OPTIONS),
            "reg": list(REG_OPTIONS),
            "activation": list(ALL_ACTIVATIONS),
        },
        key=COMPONENT_KEY,
        default=None,
    )

    if len(hidden) < len(HIDEABLE):
        with st.expander("Share this exact setup (teacher link)"):
            hide = st.multiselect(
                "Hide these controls for the students",
                list(HIDEABLE),
                key="pg_hide_choice",
                format_func=lambda k: LABELS.get(k, k),
            )
            lock = st.checkbox(
                "Hide all settings (students only get Play, Step, Reset)", key="pg_lock_choice"
            )
            st.code(share_link(settings, hide, lock), language=None)
            st.caption(
                "Copy the link (button at the right of the box). Hidden controls keep "
                "the values in the link."
            )


main()
