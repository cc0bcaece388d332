"""Presenter mode: the app as a class sees it on a projector.

A toggle in the sidebar (kept in the session and in the address as ``?presenter=true``, so a
teacher can bookmark it) that makes the type bigger, starts with the sidebar collapsed, and puts
the charts first: the small explanatory captions under each chart are hidden (the teacher says
them) and the page's top padding goes, so the main chart sits higher on a 1024×768 screen.
Charts get a larger font in ``pages.shared.plot``.
"""

from __future__ import annotations

import streamlit as st

PRESENTER_KEY = "presenter"  # session-state key and URL query parameter
FONT_SIZE = 18  # plotly font size in presenter mode (the default layout uses 14)

# Always (projector or not): text wraps inside its box instead of being cut with "…" — a metric
# "0.0465% of the loss change" or a button "Start training" must read whole at 1024×768 — and
# on a narrow screen the page keeps less white space around it, so the first chart is higher.
LAYOUT = """<style>
[data-testid="stMetricValue"], [data-testid="stMetricValue"] *,
[data-testid="stMetricLabel"], [data-testid="stMetricLabel"] *,
[data-testid="stMetricDelta"], [data-testid="stMetricDelta"] * {
  white-space: normal !important; overflow-wrap: anywhere; text-overflow: clip !important;
  overflow: visible !important;}
[data-testid="stMetricDelta"] {flex-wrap: wrap; height: auto;}
button p, button div {white-space: normal; overflow-wrap: anywhere; text-overflow: clip;}
[data-testid="stMainBlockContainer"] {padding-top: 3.5rem; padding-left: 2.5rem;
  padding-right: 2.5rem;}
@media (max-width: 1200px) {
  [data-testid="stMainBlockContainer"] {padding-top: 2.8rem; padding-left: 1.5rem;
    padding-right: 1.5rem;}
}
</style>"""

# Bigger type everywhere (Streamlit sizes its text in rem), captions hidden, less padding.
STYLE = """<style>
html {font-size: 19px;}
[data-testid="stMain"] [data-testid="stCaptionContainer"] {display: none;}
[data-testid="stMainBlockContainer"] {padding-top: 2.2rem; padding-left: 1.2rem;
  padding-right: 1.2rem;}
</style>"""


def is_on() -> bool:
    """Whether this session shows the app in presenter mode (also before the toggle is drawn:
    the address decides on a first visit)."""
    if PRESENTER_KEY in st.session_state:
        return bool(st.session_state[PRESENTER_KEY])
    return str(st.query_params.get(PRESENTER_KEY, "")).lower() in ("true", "1", "yes", "on")


def sidebar_state() -> str:
    """``initial_sidebar_state`` for ``st.set_page_config``: collapsed for a presenter."""
    return "collapsed" if is_on() else "auto"


def toggle() -> bool:
    """The sidebar toggle; applies the presenter style while it is on (and the wrapping
    ``LAYOUT`` always)."""
    st.html(LAYOUT)
    on = st.sidebar.toggle(
        "Presenter mode",
        key=PRESENTER_KEY,
        value=is_on(),
        bind="query-params",
        help="For a projector: bigger type, charts first (captions hidden), sidebar collapsed "
        "when the page is opened. It stays on as you move between pages and is kept in the "
        "address.",
    )
    if on:
        st.html(STYLE)
    return on
