"""The browser Playground as a Streamlit component: Streamlit serves components/playground as is.

Declared in an importable module because ``declare_component`` names the component after its
caller's module, and a page script run by ``st.navigation`` has none.
"""

from __future__ import annotations

from pathlib import Path

import streamlit.components.v1 as components

COMPONENT_DIR = Path(__file__).resolve().parents[1] / "components" / "playground"

#: playground(settings=…, hide=…, defaults=…, options=…, key=…, default=None) -> reported
#: settings (a dict of URL texts) or the default until the student changes one.
playground = components.declare_component("lca_playground", path=str(COMPONENT_DIR))
