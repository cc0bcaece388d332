"""LCA Lab: ``streamlit run app.py``.

The shell every page shares: navigation over ``pages/``, the run picker in the sidebar (bound to
``?run=`` so a teacher can share a link to exactly what the class sees), the selected run's
status, the colour legend, and a guard that turns any unexpected error into one sentence (the
traceback goes to the server console, never to the projector).
"""

from __future__ import annotations

import logging
from pathlib import Path

import streamlit as st

from lca import classroom, jobs, runs, views
from pages import SHELL_KEY, presenter
from pages.shared import (
    DELETED_KEY,
    RUN_KEY,
    TEACHER_KEY,
    literal,
    lower_page_priority,
    read_view,
)

ROOT = Path(__file__).resolve().parent
FAVICON = ROOT / "assets" / "favicon.png"
AUTOSELECT_KEY = "_run_autoselected"
TEACHER_PARAM = "teacher"  # ?teacher=TOKEN unlocks classroom mode for this browser session
SELECT_KEY = "_select_when_ready"  # a page asks for this run once its file exists (a new job)
log = logging.getLogger("lca.app")

# (file, title, url path, icon); an entry appears only once its file exists. Home is the default
# page, so its address is "/" (Streamlit serves a default page only there). A url path should be
# its file's name: on a server nobody has visited yet, Streamlit resolves a shared link by file
# name (see pages/__init__.py); only /techniques (file techniques_used.py, so that it does not
# shadow the techniques package) differs: pages/_techniques.py answers it on a fresh server.
PAGES = [
    ("pages/home.py", "Home", "home", ":material/home:"),
    ("pages/explain.py", "What is LCA?", "explain", ":material/school:"),
    ("pages/runs.py", "Runs", "runs", ":material/folder_open:"),
    ("pages/train.py", "Train", "train", ":material/play_circle:"),
    ("pages/loss.py", "Loss", "loss", ":material/show_chart:"),
    ("pages/layers.py", "Layers", "layers", ":material/layers:"),
    ("pages/neurons.py", "Neurons & weights", "neurons", ":material/grid_on:"),
    ("pages/techniques_used.py", "Techniques", "techniques", ":material/tune:"),
    ("pages/compare.py", "Compare", "compare", ":material/compare_arrows:"),
    ("pages/playground.py", "Playground", "playground", ":material/science:"),
]

# Green and red mean helped and hurt the loss everywhere, so run statuses use other colours.
STATUS_BADGE = {
    "running": ("running", "blue", ":material/autorenew:"),
    "complete": ("complete", "violet", ":material/check_circle:"),
    "failed": ("failed", "orange", ":material/error:"),
    "interrupted": ("interrupted", "gray", ":material/pause_circle:"),
}


def build_pages() -> list:
    pages = []
    for file, title, url, icon in PAGES:
        if (ROOT / file).exists():
            pages.append(st.Page(file, title=title, url_path=url, icon=icon, default=url == "home"))
    return pages


def _explain_bad_request(requested: str) -> str:
    """One sentence on why a requested run (from the URL or a page) cannot be shown."""
    try:
        runs.resolve(requested)
    except runs.RunNameError as e:
        return str(e)
    return (
        f"The run {requested!r} is not in the runs folder (it may have been deleted or "
        "renamed); pick a run in the sidebar."
    )


def run_status(path: Path) -> str | None:
    """The run file's status, or None when it cannot be read as a run.

    Read through the pages' cache of ``views.run_view`` per file version (the status is in the
    file, so a new status is a new version): the sidebar draws on every rerun of every session,
    and opening the HDF5 file for it was half of a page run's server time
    (``benchmarks/app.py --server-cpu``); the page itself reads the same cached view."""
    from lca.store import RunFileError

    try:
        return read_view(views.run_view, path).status
    except (RunFileError, OSError, KeyError, ValueError):
        return None


def sidebar() -> str | None:
    """The run picker, the selected run's status and the colour legend; returns a sentence to
    show in the page when a requested run could not be selected."""
    problem = None
    try:
        names = [r.name for r in runs.list_runs()]
    except OSError as e:
        names = []
        problem = f"The runs folder cannot be read ({e.strerror or e}); check LCA_RUNS_DIR."
    pending = st.session_state.get(SELECT_KEY)
    if pending and pending in names:
        st.session_state[RUN_KEY] = pending  # before the picker exists: allowed
        del st.session_state[SELECT_KEY]
    requested = st.session_state.get(RUN_KEY)
    from_url = st.query_params.get(RUN_KEY)
    if requested is None and from_url:
        requested = from_url
    deliberate = requested in st.session_state.get(DELETED_KEY, ())
    if requested and requested not in names and deliberate:  # the user just deleted it
        st.session_state.pop(RUN_KEY, None)
        if names:
            st.session_state[RUN_KEY] = names[0]  # the newest run left, as on a first visit
    elif requested and requested not in names:
        problem = _explain_bad_request(str(requested))
        if RUN_KEY in st.session_state:
            del st.session_state[RUN_KEY]
        st.session_state[AUTOSELECT_KEY] = True  # respect the link: do not pick another run
    elif not requested and names and not st.session_state.get(AUTOSELECT_KEY):
        st.session_state[RUN_KEY] = names[0]  # first visit: the newest run, written to the URL
    st.session_state[AUTOSELECT_KEY] = True

    with st.sidebar:
        choice = st.selectbox(
            "Run",
            options=names,
            key=RUN_KEY,
            index=None,
            bind="query-params",
            placeholder="Pick a run…" if names else "No runs yet: start one on Home or Train",
            help="Every page shows this run; the choice is in the page address, so you can "
            "share the link.",
        )
        if choice:
            status = run_status(runs.resolve(choice))
            label, color, icon = STATUS_BADGE.get(
                status or "", ("not readable", "gray", ":material/help:")
            )
            st.badge(label, color=color, icon=icon)
        st.caption(
            "**LCA** splits each step's change of the loss among the weights. "
            ":green[**Green = helped**] (lowered the loss), :red[**red = hurt**] (raised it)."
        )
    return problem


def classroom_gate() -> None:
    """Classroom mode: unlock this session from ``?teacher=TOKEN`` (then drop the token from the
    address, so a shared link or a screenshot never carries it) and show who may change what."""
    if not classroom.enabled():
        return
    given = st.query_params.get(TEACHER_PARAM)
    if given is not None:
        del st.query_params[TEACHER_PARAM]
        try:
            ok = classroom.is_token(given)
        except ValueError as e:  # a too-short LCA_TEACHER_TOKEN: the server's setup is wrong
            st.sidebar.error(str(e))
            ok = False
        if ok:
            st.session_state[TEACHER_KEY] = True
        else:
            st.sidebar.warning(
                "That teacher token is not right; the app stays view-only. "
                "The token is printed where the server was started."
            )
    with st.sidebar:
        if st.session_state.get(TEACHER_KEY):
            st.badge(
                "Teacher: you can train, stop, delete, upload and recover",
                color="blue",
                icon=":material/school:",
            )
            if st.button("Lock (view only)", key="classroom_lock", icon=":material/lock:"):
                st.session_state[TEACHER_KEY] = False
                st.rerun()
        else:
            st.badge("Classroom: view, compare and play", color="gray", icon=":material/lock:")


def main() -> None:
    # A local file: a ":material/…:" page icon makes every browser fetch it from fonts.gstatic.com,
    # and an offline classroom server must not send its students anywhere else.
    st.set_page_config(
        page_title="LCA Lab",
        page_icon=str(FAVICON),
        layout="wide",
        initial_sidebar_state=presenter.sidebar_state(),
    )
    pg = st.navigation(build_pages())
    st.session_state[SHELL_KEY] = True  # the pages' through_app(): this run came through here
    lower_page_priority()  # page runs give way to training (lca.priority)
    jobs.prewarm()  # one pre-started job process per server: the demo's first step in ~1 s
    presenter.toggle()
    classroom_gate()
    try:
        problem = sidebar()
    except Exception:  # noqa: BLE001 - the sidebar must never take the page down
        log.exception("sidebar failed")
        problem = "The run list could not be shown; the details are in the server log."
    if problem:
        st.warning(literal(problem))  # it may quote a name from the URL: shown literally
    try:
        pg.run()
    except Exception as e:  # noqa: BLE001 - st.stop/st.rerun are BaseException and pass through
        log.exception("page %s failed", getattr(pg, "title", "?"))
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        st.error(
            f"This page hit an unexpected problem ({type(e).__name__}: {literal(first)}); "
            "the details are in the server log — pick another run or reload the page."
        )


main()
