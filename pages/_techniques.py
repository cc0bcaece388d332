"""The address /techniques on a server nobody has visited yet; never registered, never shown.

Until ``st.navigation`` has run once in the server process, Streamlit resolves an address by
the file names in ``pages/`` (see pages/__init__.py), ignoring leading digits, underscores and
dashes: this file is its page "techniques". The Techniques page itself is techniques_used.py (a
``pages/techniques.py`` would shadow the ``techniques`` package whenever ``pages/`` is on
``sys.path``, as when a test runs a page by itself). Importing ``pages`` switches the file-name
mode off and reruns; the rerun goes through app.py, which serves /techniques with
techniques_used.py. Without this file that first visit found no page called "techniques" and
landed on Home behind a "Page not found" dialog.
"""

from pages import through_app

through_app()  # the import switches the file-name mode off; this reruns through app.py
