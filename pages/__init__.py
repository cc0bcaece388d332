"""The app's pages (run by app.py through st.navigation).

Streamlit treats a ``pages/`` folder beside the main script as an old-style multipage app until
``st.navigation`` has run once in the server process. A first visitor who opens a shared link
(``/loss?run=x.h5``) on a fresh server would then get the bare page: no sidebar, no run picker.
Every page imports this package first, so the guard below switches that mode off and reruns,
which sends the visit through app.py like every later one.

The import runs once per process, so it only reruns the session that imported it first: other
sessions that opened a page at the same moment were already running their bare page, and lost
their ``?run=`` ("Pick a run in the sidebar"). So every page also calls ``through_app()`` first
thing, which reruns any page run that did not come through app.py's shell.
"""

from pathlib import Path as _Path

try:
    from streamlit.runtime.pages_manager import PagesManager as _PagesManager
    from streamlit.runtime.scriptrunner_utils.script_run_context import (
        get_script_run_ctx as _script_run_ctx,
    )
except ImportError:  # another Streamlit layout: nothing to guard
    _PagesManager = None

SHELL_KEY = "_shell_ran"  # session state: app.py's shell ran in this session (set every run)


def through_app() -> None:
    """Rerun this page run through app.py when it is a bare page run of the app (a session that
    opened a link on a fresh server); nothing when app.py ran it, or when a page runs on its own
    (AppTest.from_file on a page: its own main script)."""
    if _PagesManager is None:
        return
    ctx = _script_run_ctx()
    if ctx is None or _Path(ctx.main_script_path).name != "app.py":
        return
    import streamlit as st

    if not st.session_state.get(SHELL_KEY):
        _PagesManager.uses_pages_directory = False  # the rerun runs app.py's navigation
        st.rerun()


# Last, so that the module is whole even when its import ends in this rerun.
if _PagesManager is not None and _PagesManager.uses_pages_directory:
    _PagesManager.uses_pages_directory = False
    if _script_run_ctx() is not None:
        import streamlit as _st

        _st.rerun()
