"""Figures as pure functions: run data (numpy arrays, ``lca.views`` records) -> plotly Figure.

One module per page: ``loss``, ``layers``, ``neurons``, ``compare``, ``techniques``, ``prune``,
``live`` (Home and Train), ``playground``, ``explain``; ``axes`` and
``common`` hold what they share. Figures never open a run: ``lca.views`` reads it (the pages
and notebooks both call it) and the figures draw what it returns. Pages draw with
``st.plotly_chart(fig, theme=None)`` so the LCA colours survive. Helped (LCA < 0) is green,
hurt (LCA > 0) red, everywhere.

Every name is importable from here (``from lca import figures as F; F.loss_conservation(...)``);
the readers that used to live here (``gather``, ``prune_events``, …) are still found here, and
now live in ``lca.views``.
"""

from __future__ import annotations

import importlib
from typing import Any

from .axes import *  # noqa: F401,F403
from .collapse import *  # noqa: F401,F403
from .common import *  # noqa: F401,F403
from .compare import *  # noqa: F401,F403
from .explain import *  # noqa: F401,F403
from .generalization import *  # noqa: F401,F403
from .layers import *  # noqa: F401,F403
from .literal import *  # noqa: F401,F403
from .live import *  # noqa: F401,F403
from .loss import *  # noqa: F401,F403
from .methods import *  # noqa: F401,F403
from .neurons import *  # noqa: F401,F403
from .parallel import *  # noqa: F401,F403
from .playground import *  # noqa: F401,F403
from .precision import *  # noqa: F401,F403
from .prune import *  # noqa: F401,F403
from .techniques import *  # noqa: F401,F403

# Names that moved out of the figures, still importable from here (imported when first used, so
# drawing a figure never loads the file-reading code). Name -> the module that holds it now.
_MOVED = {
    **dict.fromkeys(
        [
            "PruneEvent",
            "PruneSplit",
            "RunTechniques",
            "gather",
            "no_technique_sentence",
            "prune_events",
            "prune_split",
            "pruned_history",
            "reported_rows",
            "technique_names",
            "technique_summaries",
        ],
        "lca.views",
    ),
    "IMAGE_DATASETS": "lca.views",
    "infer_image_shape": "lca.views",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'lca.figures' has no attribute {name!r}")
