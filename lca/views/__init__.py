"""The one place pages and notebooks read a run for drawing: a Reader in, plain numpy data out.

``lca.figures`` draws what these functions return and never opens a file; the pages call them
(cached per file version) and so can a notebook::

    from lca import figures as F, views
    from lca.store import Reader

    with Reader("runs/demo.h5") as r:
        v = views.layers_view(r)
    F.layer_totals(v.names, v.totals, v.counts)

One view per page: ``loss_view``, ``layers_view``, ``neurons_view`` (with ``weight_stats``,
``unit_rows``, ``param_rows``, ``value_sample`` for the per-weight reads), ``compare_view``,
``technique_view`` (with ``pruned_history``); ``run_view`` is what every caption says.
"""

from __future__ import annotations

from .analysis import *  # noqa: F401,F403
from .collapse import *  # noqa: F401,F403
from .heldout import *  # noqa: F401,F403
from .parallel import *  # noqa: F401,F403
from .precision import *  # noqa: F401,F403
from .prune import *  # noqa: F401,F403
from .records import *  # noqa: F401,F403
from .summaries import *  # noqa: F401,F403
from .techniques import *  # noqa: F401,F403
