"""LCA Lab engine: Loss Change Allocation of a training run, importable without Streamlit.

lca.allocate(model, loss_fn, data, start, end, method="rk4") -> Allocation
lca.Tracker(model, loss_fn, data, writer=lca.Writer("runs/a.h5"))
lca.Writer, lca.Reader, lca.open_run  (the HDF5 run store)
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

__all__ = [
    "METHODS",
    "Allocation",
    "Layout",
    "Measurer",
    "NonFiniteLossError",
    "Reader",
    "StepRecord",
    "Tracker",
    "UnitGroup",
    "Writer",
    "allocate",
    "open_run",
    "unit_layout",
]


def __getattr__(name: str):
    # The store pulls in h5py; import it only when a caller asks for it.
    if name in ("Writer", "Reader", "open_run", "RunFileError"):
        from . import store

        return getattr(store, name)
    raise AttributeError(f"module 'lca' has no attribute {name!r}")
