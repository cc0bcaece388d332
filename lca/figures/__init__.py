"""Figures as pure functions: run data (numpy arrays, a Reader) -> plotly Figure.

Pages draw these with ``st.plotly_chart(fig, theme=None)`` so the LCA colours survive;
notebooks call the same functions. Helped (LCA < 0) is green, hurt (LCA > 0) red, everywhere.
"""

from .analysis import *  # noqa: F401,F403
from .common import *  # noqa: F401,F403
from .explain import *  # noqa: F401,F403
from .literal import *  # noqa: F401,F403
from .live import *  # noqa: F401,F403
from .playground import *  # noqa: F401,F403
from .techniques import *  # noqa: F401,F403
