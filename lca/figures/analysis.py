"""Old home of the analysis figures, kept so ``from lca.figures.analysis import X`` still works.

The figures now live one module per page: ``loss``, ``layers``, ``neurons``, ``compare``; what
they share (step axis, thinning, titles) in ``axes``. Image shapes come from ``data.info``.
"""

from __future__ import annotations

from .axes import *  # noqa: F401,F403
from .axes import curve as _line  # noqa: F401 - the old private names, for old imports
from .axes import mark_interventions as _mark_interventions  # noqa: F401
from .axes import titled_layout as _layout  # noqa: F401
from .compare import *  # noqa: F401,F403
from .layers import *  # noqa: F401,F403
from .loss import *  # noqa: F401,F403
from .neurons import *  # noqa: F401,F403
