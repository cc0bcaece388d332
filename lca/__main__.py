"""``python -m lca``: see lca/cli.py."""

import sys

from .cli import main

sys.exit(main())
