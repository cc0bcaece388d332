"""LCA Lab engine: Loss Change Allocation of a training run, importable without Streamlit.

lca.allocate(model, loss_fn, data, start, end, method="rk4") -> Allocation
lca.Tracker(model, loss_fn, data, writer=lca.Writer("runs/a.h5"))
lca.Writer, lca.Reader, lca.open_run  (the HDF5 run store)
lca.recover, lca.RunFileError, lca.RunTooLargeError, lca.estimate_bytes, lca.human_bytes,
lca.block_sum, lca.downsample_to_cells  (the rest of the store's public API)
"""

from __future__ import annotations

from .allocate import (
    Allocation,
    Layout,
    NonFiniteLossError,
    StepRecord,
    Tracker,
    UnitGroup,
    allocate,
    unit_layout,
)
from .integrate import METHODS
from .measure import Measurer
from .version import __version__

# Names served by lca.store, imported on first use: the store pulls in h5py, which a caller of
# lca.allocate alone never needs.
_STORE_NAMES = (
    "Reader",
    "RunFileError",
    "RunTooLargeError",
    "Writer",
    "block_sum",
    "downsample_to_cells",
    "estimate_bytes",
    "human_bytes",
    "open_run",
    "recover",
)

__all__ = [
    "METHODS",
    "Allocation",
    "Layout",
    "Measurer",
    "NonFiniteLossError",
    "StepRecord",
    "Tracker",
    "UnitGroup",
    "__version__",
    "allocate",
    "unit_layout",
    *_STORE_NAMES,
]


def __getattr__(name: str):
    if name in _STORE_NAMES:
        from . import store

        return getattr(store, name)
    raise AttributeError(f"module 'lca' has no attribute {name!r}")


def __dir__() -> list[str]:
    # dir(lca) and tab completion list the lazy names too.
    return sorted({*globals(), *_STORE_NAMES})
