"""The app's pages (run by app.py through st.navigation).

Streamlit treats a ``pages/`` folder beside the main script as an old-style multipage app until
``st.navigation`` has run once in the server process. A first visitor who opens a shared link
(``/loss?run=x.h5``) on a fresh server would then get the bare page: no sidebar, no run picker.
Every page imports this package first, so the guard below switches that mode off and reruns,
which sends the visit through app.py like every later one.
"""

try:
    from streamlit.runtime.pages_manager import PagesManager as _PagesManager
    from streamlit.runtime.scriptrunner_utils.script_run_context import (
        get_script_run_ctx as _script_run_ctx,
    )
except ImportError:  # another Streamlit layout: nothing to guard
    _PagesManager = None

if _PagesManager is not None and _PagesManager.uses_pages_directory:
    _PagesManager.uses_pages_directory = False
    if _script_run_ctx() is not None:
        import streamlit as _st

        _st.rerun()
