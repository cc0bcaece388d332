"""HDF5 run store: the Writer a Tracker streams into, the Reader the app reads, and recovery.

The file is the only channel between a training process and the app, and the app reads it while
it grows, so the layout follows h5py's SWMR (single writer, multiple readers) rules:

* every dataset and attribute is created before ``swmr_mode`` starts (readers cannot see objects
  created later), strings are fixed-length, per-step datasets are chunked and unlimited along time;
* rows are buffered and written a whole time-chunk at a time (or after ``flush_seconds``), because
  one-row writes are slow and fragment the file;
* a reader defines the number of completed steps T as the *shortest* per-step dataset, so a flush
  that a reader catches half-way never shows a half-written row;
* the file is built under a hidden temporary name and renamed into place once SWMR is on, so a
  reader never meets a file that exists but cannot yet be opened.

A writer killed mid-run leaves a file readers can still open; ``recover`` trims it to the last
whole step, marks it "interrupted" and closes it cleanly. The full schema is in docs/FORMAT.md.

The package has one module per job: ``schema`` (layout, dtypes, size estimate), ``writer``,
``reader`` and ``recover``; the names below are its public API.
"""

from ..downsample import block_starts, block_sum, downsample_to_cells
from . import filecheck
from .lock import RunBusyError
from .reader import Reader, open_run
from .recovery import _lookup3, recover  # noqa: F401 - used by tests
from .schema import (
    FORMAT,
    RECORD_MODES,
    SCHEMA_VERSION,
    STATUSES,
    STEP_FIELDS,
    RunFileError,
    RunTooLargeError,
    estimate_bytes,
    human_bytes,
)
from .writer import DiskFullError, Writer

__all__ = [
    "DiskFullError",
    "FORMAT",
    "RECORD_MODES",
    "SCHEMA_VERSION",
    "STATUSES",
    "STEP_FIELDS",
    "Reader",
    "RunBusyError",
    "RunFileError",
    "RunTooLargeError",
    "Writer",
    "block_starts",
    "block_sum",
    "downsample_to_cells",
    "estimate_bytes",
    "filecheck",
    "human_bytes",
    "open_run",
    "recover",
]
