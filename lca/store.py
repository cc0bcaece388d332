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
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import struct
import threading
import time
import warnings
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import h5py
import numpy as np

from .downsample import block_starts, block_sum, downsample_to_cells

if TYPE_CHECKING:
    from .allocate import Layout, StepRecord

__all__ = [
    "FORMAT",
    "RECORD_MODES",
    "SCHEMA_VERSION",
    "STATUSES",
    "STEP_FIELDS",
    "Reader",
    "RunFileError",
    "RunTooLargeError",
    "Writer",
    "block_starts",
    "block_sum",
    "downsample_to_cells",
    "estimate_bytes",
    "human_bytes",
    "open_run",
    "recover",
]

FORMAT = "lca-run"
SCHEMA_VERSION = 1
RECORD_MODES = ("full", "units", "layers")
STATUSES = ("running", "complete", "failed", "interrupted")
STATUS_DTYPE = "S16"
LABEL_BYTES = 32

# Per-step scalar fields under /steps (besides /steps/loss, which has T+1 rows).
STEP_FIELDS: dict[str, str] = {
    "lca": "f8",
    "helped": "f8",
    "hurt": "f8",
    "error": "f8",
    "splits": "i4",
    "evaluations": "i4",
    "kind": "i1",
    "train_step": "i8",
    "seconds_lca": "f8",
    "wall": "f8",
    "label": f"S{LABEL_BYTES}",
}
# Top-level names the store owns; event tables and fixed arrays may not use them.
RESERVED = ("status", "steps", "layers", "units", "params", "series", "totals_rows")

# SWMR needs the HDF5 1.10 file format; capping the format there too keeps files readable by
# HDF5 1.10+ tools (h5dump, MATLAB, older h5py) — 'latest' on HDF5 2.x writes types they reject.
LIBVER = ("v110", "v110")
PARAM_CHUNK_BYTES = 1 << 20  # ≤ 1 MiB per HDF5 chunk: whole-chunk writes, cheap partial reads
NARROW_CHUNK_BYTES = 64 << 10  # narrow tables get taller chunks so long runs stay few chunks
MAX_TIME_MULTIPLE = 32  # ... but at most 32 write-batches tall
BUFFER_BYTES = 256 << 20  # cap on the in-memory per-parameter buffer (full mode)
FIXED_OVERHEAD = 64 << 10  # superblock, root header, names, attributes (estimate)
DATASET_OVERHEAD = 2048  # object header + chunk index of one dataset (estimate)
CHUNK_OVERHEAD = 32  # index entry per chunk (estimate)


class RunFileError(ValueError):
    """A run file cannot be used; the message is one sentence naming the file and the fix."""


class RunTooLargeError(ValueError):
    """The run would not fit in ``max_bytes`` or on the disk; raised before anything is written."""


# ---------------------------------------------------------------------------------------------
# Small helpers.


def human_bytes(n: float) -> str:
    """``1234567`` -> ``"1.23 MB"`` (decimal units, as disks are sold and ``df -H`` shows)."""
    n = float(n)
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            if unit == "B":
                return f"{sign}{int(n)} B"
            digits = 2 if n < 10 else 1 if n < 100 else 0
            return f"{sign}{n:.{digits}f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _version() -> str:
    try:
        from . import __version__  # type: ignore[attr-defined]

        return str(__version__)
    except ImportError:
        pass
    try:
        from importlib.metadata import version

        return version("lca-lab")
    except Exception:  # noqa: BLE001 - not installed as a distribution: fall back
        return "0.1.0"


def _str_attr(obj: h5py.HLObject, key: str, value: str) -> None:
    # Fixed-length UTF-8: SWMR readers and every HDF5 tool read these without a global heap.
    data = value.encode("utf-8")
    obj.attrs.create(key, data=data, dtype=h5py.string_dtype("utf-8", max(1, len(data))))


def _fixed_strings(values: Iterable[str]) -> np.ndarray:
    enc = [v.encode("utf-8") for v in values]
    width = max([1, *(len(e) for e in enc)])
    return np.array(enc, dtype=h5py.string_dtype("utf-8", width))


def _decode(v: Any) -> Any:
    """HDF5 attribute value -> plain Python (bytes -> str, numpy scalars -> numbers)."""
    if isinstance(v, bytes | np.bytes_):
        return bytes(v).decode("utf-8", errors="replace")
    if isinstance(v, np.ndarray):
        if v.dtype.kind == "S":
            return [bytes(x).decode("utf-8", errors="replace") for x in v.ravel()]
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _decode_strings(a: np.ndarray) -> list[str]:
    return [bytes(x).decode("utf-8", errors="replace") for x in np.asarray(a).ravel()]


def _label_bytes(label: str) -> bytes:
    # Cut to LABEL_BYTES without splitting a UTF-8 character.
    return label.encode("utf-8")[:LABEL_BYTES].decode("utf-8", errors="ignore").encode("utf-8")


def _param_key(name: str) -> str:
    """HDF5 link name of a parameter: its own name, with '%' and '/' escaped (dots are fine)."""
    key = name.replace("%", "%25").replace("/", "%2F")
    return key.replace(".", "%2E") if key in ("", ".", "..") else key


def _unit_keys(names: Sequence[str]) -> list[str]:
    """Sanitised, unique group keys for unit groups (names like 'features.0' map back via
    /units/names)."""
    keys: list[str] = []
    seen: set[str] = set()
    for n in names:
        base = re.sub(r"[^0-9A-Za-z_]", "_", n) or "_"
        key, i = base, 2
        while key in seen:
            key, i = f"{base}_{i}", i + 1
        seen.add(key)
        keys.append(key)
    return keys


def _clean_path(path: str, what: str) -> str:
    parts = [p for p in str(path).strip("/").split("/")]
    if not parts or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"The {what} path {path!r} is not a valid HDF5 path like 'techniques/x'.")
    return "/".join(parts)


def _json_fill(v: Any) -> Any:
    """An array's fill value as JSON (numbers as floats, byte strings as text)."""
    if isinstance(v, bytes | np.bytes_):
        return bytes(v).decode("ascii", "replace")
    if isinstance(v, str):
        return v
    return float(v)


def _fill_for(dtype: np.dtype) -> Any:
    if dtype.kind in "SU":
        return b""
    return np.nan if dtype.kind in "fc" else 0


def _chunk_shape(row_shape: tuple[int, ...], itemsize: int, rows: int) -> tuple[int, ...]:
    """Chunk of a (time, *row_shape) dataset: ``rows`` tall (taller for narrow tables), split
    along the tensor dims when one chunk would pass ``PARAM_CHUNK_BYTES``."""
    row_elems = math.prod(row_shape)
    row_bytes = max(1, row_elems * itemsize)
    ct = max(1, rows)
    if row_bytes * ct < NARROW_CHUNK_BYTES:
        ct *= max(1, min(MAX_TIME_MULTIPLE, NARROW_CHUNK_BYTES // (row_bytes * ct)))
    ct = min(ct, max(1, PARAM_CHUNK_BYTES // itemsize))
    sub = [max(1, d) for d in row_shape]
    budget = max(1, PARAM_CHUNK_BYTES // (itemsize * ct))
    while math.prod(sub) > budget:
        i = int(np.argmax(sub))
        sub[i] = -(-sub[i] // 2)
    return (ct, *sub)


@dataclass(frozen=True)
class _PerStep:
    """One dataset that grows by a row per step."""

    path: str
    row_shape: tuple[int, ...]
    dtype: np.dtype
    fill: Any
    chunks: tuple[int, ...]
    extra_rows: int = 0  # /steps/loss has T+1 rows

    def allocated_bytes(self, steps: int) -> int:
        n = steps + self.extra_rows
        ct = self.chunks[0]
        tiles = math.prod(-(-d // c) for d, c in zip(self.row_shape, self.chunks[1:], strict=True))
        chunks = -(-n // ct) * tiles
        return chunks * (math.prod(self.chunks) * self.dtype.itemsize + CHUNK_OVERHEAD)


def _effective_rows(layout: Layout, record: str, chunk_rows: int) -> int:
    # Keep the full-mode buffer (rows × all parameters × 4 bytes) bounded for big models.
    rows = max(1, int(chunk_rows))
    if record == "full":
        row_bytes = max(1, layout.num_params * 4)
        if row_bytes * rows > BUFFER_BYTES:
            rows = max(1, BUFFER_BYTES // row_bytes)
    return rows


def _plan(layout: Layout, record: str, chunk_rows: int) -> tuple[int, list[_PerStep]]:
    """Every per-step dataset of a run, in the order a flush writes them (loss last)."""
    if record not in RECORD_MODES:
        raise ValueError(f"record must be one of {', '.join(RECORD_MODES)}, not {record!r}.")
    rows = _effective_rows(layout, record, chunk_rows)
    plan: list[_PerStep] = []

    def add(path: str, shape: tuple[int, ...], dtype: str, extra: int = 0) -> None:
        dt = np.dtype(dtype)
        plan.append(
            _PerStep(path, tuple(shape), dt, _fill_for(dt), _chunk_shape(shape, dt.itemsize, rows),
                     extra)
        )

    if record == "full":
        for name, shape in zip(layout.names, layout.shapes, strict=True):
            add(f"params/{_param_key(name)}/lca", tuple(shape), "f4")
    if record in ("full", "units"):
        keys = _unit_keys([g.name for g in layout.units])
        for key, g in zip(keys, layout.units, strict=True):
            add(f"units/{key}/lca", (g.size,), "f8")
    add("layers/lca", (len(layout.names),), "f8")
    for path, (dtype, shape) in layout.series.items():
        add(f"series/{_clean_path(path, 'series')}", tuple(shape), dtype)
    for field, dtype in STEP_FIELDS.items():
        add(f"steps/{field}", (), dtype)
    add("steps/loss", (), "f8", extra=1)
    return rows, plan


def estimate_bytes(
    layout: Layout, steps: int, record: str = "units", *, chunk_rows: int = 32
) -> int:
    """Bytes a run of ``steps`` steps will take on disk (allocation is by whole chunks).

    Close to exact for the per-step data, which dominates; the fixed part (names, attributes,
    per-weight totals, declared arrays, one chunk per event table) is added on top.
    """
    rows, plan = _plan(layout, record, chunk_rows)
    steps = max(0, int(steps))
    total = FIXED_OVERHEAD + sum(p.allocated_bytes(steps) + DATASET_OVERHEAD for p in plan)
    total += layout.num_params * (8 + 4) + 2 * DATASET_OVERHEAD * len(layout.names)
    for dtype, shape, _fill in layout.arrays.values():
        total += math.prod(shape) * np.dtype(dtype).itemsize + DATASET_OVERHEAD
    for cols in layout.events.values():
        ct = _chunk_shape((len(cols),), 8, rows)[0]
        total += ct * len(cols) * 8 + DATASET_OVERHEAD
    return int(total)


# ---------------------------------------------------------------------------------------------
# Writer.

_OPEN_WRITERS: weakref.WeakSet[Writer] = weakref.WeakSet()


@atexit.register
def _close_open_writers() -> None:
    # A script that ends without closing its tracker still leaves a clean, readable file.
    for w in list(_OPEN_WRITERS):
        try:
            w.close("interrupted")
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


class Writer:
    """Streams a Tracker's records into an HDF5 run file that readers can open while it grows.

    Implements the Tracker's ``RecordSink`` (``begin``/``append``/``close``). ``record`` chooses
    what is kept per step: ``"layers"`` (per-tensor sums), ``"units"`` (+ per output neuron or
    channel) or ``"full"`` (+ every parameter, float32). Per-weight running totals are kept in
    every mode because they cost a fixed P×12 bytes, not T×P.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        record: str = "units",
        config: dict[str, Any] | None = None,
        chunk_rows: int = 32,
        flush_seconds: float = 1.0,
        max_bytes: int | None = None,
        expected_steps: int | None = None,
        overwrite: bool = False,
    ) -> None:
        if record not in RECORD_MODES:
            raise ValueError(f"record must be one of {', '.join(RECORD_MODES)}, not {record!r}.")
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, not {chunk_rows}.")
        self.path = Path(path)
        self.record = record
        self.config = dict(config or {})
        self.chunk_rows = int(chunk_rows)
        self.flush_seconds = float(flush_seconds)
        self.max_bytes = max_bytes
        self.expected_steps = expected_steps
        self.overwrite = overwrite
        self.estimated_bytes: int | None = None
        self._f: h5py.File | None = None
        self._closed = False
        self._rows = 0  # rows in the file
        self._n = 0  # rows buffered
        self._warned: set[str] = set()
        if self.path.exists() and not overwrite:
            raise self._exists_error()

    def _exists_error(self) -> RunFileError:
        return RunFileError(
            f"{self.path.name} already exists; choose another output name or allow overwriting "
            "(overwrite=True)."
        )

    # -- properties ---------------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        """Rows appended so far (written or still buffered)."""
        return self._rows + self._n

    @property
    def closed(self) -> bool:
        return self._closed

    # -- begin --------------------------------------------------------------------------------
    def begin(self, layout: Layout, loss0: float) -> None:
        """Create the file and every dataset, write the metadata, then start SWMR."""
        if self._f is not None or self._closed:
            raise RuntimeError("Writer.begin() was already called; use one Writer per run.")
        self.layout = layout
        self._validate_layout(layout)
        self.chunk_rows, self._plan = _plan(layout, self.record, self.chunk_rows)
        if self.expected_steps is not None:
            self._check_size(layout)
        if self.path.exists() and not self.overwrite:
            raise self._exists_error()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        f = h5py.File(tmp, "w", libver=LIBVER)
        try:
            self._create(f, layout, float(loss0))
            f.swmr_mode = True
            f.flush()
            os.replace(tmp, self.path)  # readers only ever see a file that is ready for them
        except BaseException:
            f.close()
            tmp.unlink(missing_ok=True)
            raise
        self._f = f
        self._setup_buffers(layout)
        self._last_flush = time.monotonic()
        _OPEN_WRITERS.add(self)

    def _validate_layout(self, layout: Layout) -> None:
        seen: dict[str, str] = {}
        for kind, paths in (("event table", layout.events), ("array", layout.arrays)):
            for p in paths:
                clean = _clean_path(p, kind)
                if clean.split("/")[0] in RESERVED:
                    raise ValueError(
                        f"The {kind} path {p!r} uses the reserved top-level name "
                        f"{clean.split('/')[0]!r}; put it under e.g. 'techniques/'."
                    )
                for other in seen:
                    if clean == other or clean.startswith(other + "/") or other.startswith(
                        clean + "/"
                    ):
                        raise ValueError(f"The {kind} path {p!r} clashes with {other!r}.")
                seen[clean] = kind
        for p, cols in layout.events.items():
            if not cols:
                raise ValueError(f"The event table {p!r} has no columns.")

    def _check_size(self, layout: Layout) -> None:
        est = estimate_bytes(layout, int(self.expected_steps), self.record,
                             chunk_rows=self.chunk_rows)
        self.estimated_bytes = est
        what = (f"{self.expected_steps} steps, record={self.record}, "
                f"{layout.num_params:,} parameters")
        fix = "use --record units or layers, fewer steps, or a smaller model."
        if self.record == "layers":
            fix = "use fewer steps or a smaller model."
        if self.max_bytes is not None and est > self.max_bytes:
            raise RunTooLargeError(
                f"{self.path.name} would need about {human_bytes(est)} ({what}), more than the "
                f"{human_bytes(self.max_bytes)} allowed (max_bytes); {fix}"
            )
        folder = self.path.parent.resolve()
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        free = shutil.disk_usage(folder).free
        if est > free:
            raise RunTooLargeError(
                f"{self.path.name} would need about {human_bytes(est)} ({what}), more than the "
                f"{human_bytes(free)} free on the disk holding {folder}; {fix}"
            )

    def _create(self, f: h5py.File, layout: Layout, loss0: float) -> None:
        import torch  # the writer runs next to the tracker; readers never need torch

        a = f.attrs
        _str_attr(f, "format", FORMAT)
        a["schema_version"] = np.int64(SCHEMA_VERSION)
        _str_attr(f, "config", json.dumps(self.config, sort_keys=True, default=str))
        _str_attr(f, "created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        _str_attr(f, "record", self.record)
        _str_attr(f, "method", layout.method)
        _str_attr(f, "dtype", layout.dtype)
        a["measure_size"] = np.int64(layout.measure_size)
        a["num_params"] = np.int64(layout.num_params)
        _str_attr(f, "lca_lab_version", _version())
        _str_attr(f, "torch_version", torch.__version__)
        _str_attr(f, "h5py_version", h5py.__version__)
        a["record_every"] = np.int64(1)  # every optimizer step is its own segment
        a["chunk_rows"] = np.int64(self.chunk_rows)
        a["expected_steps"] = np.int64(-1 if self.expected_steps is None else self.expected_steps)
        a["writer_pid"] = np.int64(os.getpid())
        _str_attr(f, "writer_host", socket.gethostname())
        _str_attr(f, "series", json.dumps(
            {_clean_path(p, "series"): [np.dtype(d).str, list(s)]
             for p, (d, s) in layout.series.items()}))
        _str_attr(f, "events", json.dumps(
            {_clean_path(p, "event table"): list(c) for p, c in layout.events.items()}))
        _str_attr(f, "arrays", json.dumps(
            {_clean_path(p, "array"): [np.dtype(d).str, list(s), _json_fill(v)]
             for p, (d, s, v) in layout.arrays.items()}))

        f.create_dataset("status", data=np.bytes_(b"running"), dtype=STATUS_DTYPE)
        f.create_dataset("totals_rows", data=np.int64(0))

        # Names and shapes of the parameter tensors.
        names = list(layout.names)
        shapes = [tuple(s) for s in layout.shapes]
        maxdim = max([1, *(len(s) for s in shapes)])
        shape_table = np.full((len(names), maxdim), -1, dtype=np.int64)
        for i, s in enumerate(shapes):
            shape_table[i, : len(s)] = s
        f.create_dataset("layers/names", data=_fixed_strings(names))
        f.create_dataset("layers/shapes", data=shape_table)
        f.create_dataset("layers/ndim", data=np.array([len(s) for s in shapes], dtype=np.int32))
        f.create_dataset("layers/sizes", data=np.array([math.prod(s) for s in shapes],
                                                        dtype=np.int64))

        # Unit groups: metadata in every mode, per-step LCA only in full/units.
        groups = list(layout.units)
        keys = _unit_keys([g.name for g in groups])
        f.create_dataset("units/names", data=_fixed_strings([g.name for g in groups]))
        f.create_dataset("units/keys", data=_fixed_strings(keys))
        f.create_dataset("units/sizes", data=np.array([g.size for g in groups], dtype=np.int64))
        for key, g in zip(keys, groups, strict=True):
            grp = f.require_group(f"units/{key}")
            _str_attr(grp, "name", g.name)
            _str_attr(grp, "params", json.dumps(list(g.params)))
            _str_attr(grp, "dims", json.dumps(list(g.dims)))
            grp.attrs["size"] = np.int64(g.size)

        # Per-weight running totals (every mode), overwritten in place at each flush. Written
        # with data now: a contiguous dataset first allocated after SWMR started would lie past
        # the end of file a reader knows, and its refresh() fails ("invalid dataset size").
        for name, shape in zip(names, shapes, strict=True):
            grp = f.require_group(f"params/{_param_key(name)}")
            _str_attr(grp, "name", name)
            grp.create_dataset("total", data=np.zeros(shape, dtype=np.float64))
            grp.create_dataset("helped_steps", data=np.zeros(shape, dtype=np.int32))

        # Per-step datasets: unlimited along time, chunked, created before SWMR.
        for p in self._plan:
            if p.path == "steps/loss":
                f.create_dataset(p.path, data=np.array([loss0]), maxshape=(None,),
                                 chunks=p.chunks, fillvalue=np.nan)
            else:
                f.create_dataset(p.path, shape=(0, *p.row_shape), maxshape=(None, *p.row_shape),
                                 dtype=p.dtype, chunks=p.chunks, fillvalue=p.fill)

        for path, cols in layout.events.items():
            clean = _clean_path(path, "event table")
            ct = _chunk_shape((len(cols),), 8, self.chunk_rows)[0]
            ds = f.create_dataset(clean, shape=(0, len(cols)), maxshape=(None, len(cols)),
                                  dtype="f8", chunks=(ct, len(cols)), fillvalue=np.nan)
            ds.attrs.create("columns", data=_fixed_strings(cols))
        for path, (dtype, shape, fill) in layout.arrays.items():
            clean = _clean_path(path, "array")
            f.create_dataset(clean, data=np.full(tuple(shape), fill, dtype=np.dtype(dtype)))

    def _setup_buffers(self, layout: Layout) -> None:
        import torch

        f, rows = self._f, self.chunk_rows
        self._targets: list[tuple[h5py.Dataset, np.ndarray, int]] = []
        self._bufs: dict[str, np.ndarray] = {}
        for p in self._plan:
            buf = np.full((rows, *p.row_shape), p.fill, dtype=p.dtype)
            self._bufs[p.path] = buf
            self._targets.append((f[p.path], buf, p.extra_rows))
        self._names = list(layout.names)
        self._shapes = {n: tuple(s) for n, s in zip(layout.names, layout.shapes, strict=True)}
        self._keys = {n: _param_key(n) for n in self._names}
        self._pbuf_keys = {n: f"params/{self._keys[n]}/lca" for n in self._names}
        # Torch views of the float32 buffers, so one copy_ moves and casts from any device.
        self._pviews = (
            {n: torch.from_numpy(self._bufs[f"params/{self._keys[n]}/lca"]) for n in self._names}
            if self.record == "full" else {}
        )
        ukeys = _unit_keys([g.name for g in layout.units])
        self._ubufs = (
            {g.name: self._bufs[f"units/{k}/lca"] for k, g in zip(ukeys, layout.units,
                                                                  strict=True)}
            if self.record in ("full", "units") else {}
        )
        self._series_paths = {p: _clean_path(p, "series") for p in layout.series}
        self._tot: dict[str, Any] = {}
        self._cnt: dict[str, Any] = {}
        self._tot_ds = {n: f[f"params/{self._keys[n]}/total"] for n in self._names}
        self._cnt_ds = {n: f[f"params/{self._keys[n]}/helped_steps"] for n in self._names}
        self._event_cols = {_clean_path(p, "event table"): tuple(c)
                            for p, c in layout.events.items()}
        self._array_paths = {_clean_path(p, "array") for p in layout.arrays}
        self._events: dict[str, list[list[float]]] = {}
        self._arrays: dict[str, np.ndarray] = {}

    # -- append -------------------------------------------------------------------------------
    def append(self, record: StepRecord) -> None:
        """Buffer one segment; whole time-chunks (or what ``flush_seconds`` has gathered) go out."""
        import torch

        if self._closed:
            raise RuntimeError("This Writer is closed.")
        if self._f is None:
            raise RuntimeError("Writer.append() called before begin().")
        i = self._n
        if record.index != self._rows + i:
            raise ValueError(
                f"Record {record.index} arrived but the file expects row {self._rows + i}; "
                "records must come in order, one per segment."
            )
        for name in self._names:
            self._add_param(name, record.per_param[name], i, torch)
        for g, v in self._ubufs.items():
            v[i] = record.per_unit[g]
        b = self._bufs
        b["layers/lca"][i] = record.per_tensor
        for path, clean in self._series_paths.items():
            buf = b[f"series/{clean}"]
            v = record.series.get(path) if record.series else None
            if v is None:
                buf[i] = _fill_for(buf.dtype)
            else:
                if hasattr(v, "detach"):
                    v = v.detach().cpu().numpy()
                buf[i] = np.asarray(v)
        if record.series:
            for key in record.series:
                if key not in self._series_paths and key not in self._warned:
                    self._warned.add(key)
                    warnings.warn(
                        f"Series {key!r} was not declared in the tracker's layout, so it is "
                        "not stored; pass series={...} to lca.Tracker.",
                        stacklevel=2,
                    )
        b["steps/lca"][i] = record.total
        b["steps/helped"][i] = record.helped
        b["steps/hurt"][i] = record.hurt
        b["steps/error"][i] = record.error
        b["steps/splits"][i] = record.splits
        b["steps/evaluations"][i] = record.evaluations
        b["steps/kind"][i] = record.kind
        b["steps/train_step"][i] = record.train_step
        b["steps/seconds_lca"][i] = record.seconds_lca
        b["steps/wall"][i] = record.wall
        b["steps/label"][i] = _label_bytes(record.label or "")
        b["steps/loss"][i] = record.loss_end
        self._n += 1
        if (self._n >= self.chunk_rows - self._rows % self.chunk_rows
                or time.monotonic() - self._last_flush >= self.flush_seconds):
            self._flush()

    def _add_param(self, name: str, a: Any, i: int, torch: Any) -> None:
        """Running totals (+ the full-mode row) of one tensor's LCA for this step.

        CPU tensors go through numpy: single-threaded and predictable, where small torch ops
        pay for thread hand-offs (badly so on a busy machine). In full mode a CPU row is only
        copied into the buffer and the totals are summed from the buffer at flush: one pass
        over the new rows instead of a read-modify-write of the totals every step. GPU tensors
        are summed on the device, so only full mode moves per-weight values to the host.
        """
        shape = self._shapes[name]
        if torch.is_tensor(a) and a.device.type not in ("cpu", "cuda"):
            a = a.detach().cpu()  # e.g. MPS, which has no float64 for the totals
        if torch.is_tensor(a) and _sums_on_device(a):
            with torch.no_grad():
                a = a.detach().reshape(shape)
                tot, cnt = self._tot.get(name), self._cnt.get(name)
                if not torch.is_tensor(tot) or tot.device != a.device:
                    tot = self._tot[name] = torch.as_tensor(
                        np.zeros(shape) if tot is None else _host(tot)).to(a.device)
                    cnt = self._cnt[name] = torch.as_tensor(
                        np.zeros(shape, np.int32) if cnt is None else _host(cnt)).to(a.device)
                tot.add_(a)
                cnt.add_(a < 0)
                if self._pviews:
                    self._pviews[name][i].copy_(a)
            return
        an = (a.detach().numpy() if torch.is_tensor(a) else np.asarray(a)).reshape(shape)
        if self._pviews:  # full mode: the totals are summed from the row buffer at flush
            self._bufs[self._pbuf_keys[name]][i] = an
            return
        tot = self._tot.get(name)
        if tot is None or not isinstance(tot, np.ndarray):
            tot = self._tot[name] = np.zeros(shape) if tot is None else _host(tot)
            self._cnt[name] = (np.zeros(shape, np.int32) if name not in self._cnt
                               else _host(self._cnt[name]))
        np.add(tot, an, out=tot)
        np.add(self._cnt[name], an < 0, out=self._cnt[name])

    def add_event(self, path: str, row: Sequence[float]) -> None:
        """Append a row to an event table declared in ``layout.events`` (written at next flush)."""
        self._require_open()
        clean = _clean_path(path, "event table")
        cols = self._event_cols.get(clean)
        if cols is None:
            raise KeyError(f"The event table {path!r} was not declared in the tracker's layout.")
        row = [float(x) for x in row]
        if len(row) != len(cols):
            raise ValueError(
                f"The event table {path!r} has {len(cols)} columns ({', '.join(cols)}); "
                f"got a row of {len(row)}."
            )
        self._events.setdefault(clean, []).append(row)
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self._flush()

    def set_array(self, path: str, value: np.ndarray) -> None:
        """Overwrite a fixed array declared in ``layout.arrays`` (written at next flush)."""
        self._require_open()
        clean = _clean_path(path, "array")
        if clean not in self._array_paths:
            raise KeyError(f"The array {path!r} was not declared in the tracker's layout.")
        ds = self._f[clean]
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        value = np.asarray(value)
        try:
            value = np.broadcast_to(value, ds.shape).astype(ds.dtype)
        except ValueError:
            raise ValueError(
                f"The array {path!r} has shape {ds.shape}; got a value of shape {value.shape}."
            ) from None
        self._arrays[clean] = np.array(value)
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self._flush()

    def _require_open(self) -> None:
        if self._closed:
            raise RuntimeError("This Writer is closed.")
        if self._f is None:
            raise RuntimeError("The Writer has not begun yet (the tracker calls begin()).")

    # -- flush, status, close -------------------------------------------------------------
    def flush(self) -> None:
        """Write everything buffered now (rows, totals, events, arrays) and make it visible."""
        self._require_open()
        self._flush()

    def _flush(self) -> None:
        # Ctrl-C waits until the flush is whole: an interrupted flush followed by the flush in
        # close() would otherwise write the buffered rows, and add them to the totals, twice.
        with _defer_interrupt():
            self._flush_now()

    def _flush_now(self) -> None:
        f, n = self._f, self._n
        if n:
            t0, t1 = self._rows, self._rows + n
            # Resize-then-write dataset by dataset, loss last: a reader's T (the shortest
            # dataset) only covers rows that are written everywhere.
            for ds, buf, extra in self._targets:
                ds.resize(t1 + extra, axis=0)
                ds[t0 + extra: t1 + extra] = buf[:n]
            if self._pviews:
                self._sum_buffered_totals(n)
            for name in self._names:
                self._tot_ds[name][()] = _host(self._tot[name])
                self._cnt_ds[name][()] = _host(self._cnt[name])
            f["totals_rows"][()] = t1
            self._rows, self._n = t1, 0
        for path, rows in self._events.items():
            ds = f[path]
            e = ds.shape[0]
            ds.resize(e + len(rows), axis=0)
            ds[e:] = np.asarray(rows, dtype=np.float64)
        self._events = {}
        for path, value in self._arrays.items():
            f[path][()] = value
        self._arrays = {}
        f.flush()
        self._last_flush = time.monotonic()

    def _sum_buffered_totals(self, n: int) -> None:
        # Full mode on CPU: Σ and the helped count over the n buffered rows (float64 sums of the
        # float32 values stored, so the totals equal Σ_t of /params/<name>/lca).
        for name in self._names:
            if isinstance(self._tot.get(name), np.ndarray) or name not in self._tot:
                rows = self._bufs[self._pbuf_keys[name]][:n]
                shape = self._shapes[name]
                tot = self._tot.setdefault(name, np.zeros(shape))
                cnt = self._cnt.setdefault(name, np.zeros(shape, np.int32))
                tot += rows.sum(axis=0, dtype=np.float64)
                cnt += (rows < 0).sum(axis=0, dtype=np.int32)

    def set_status(self, status: str) -> None:
        """Record ``status`` now (after writing what is buffered, so the two agree)."""
        self._require_open()
        _check_status(status)
        self._flush()
        self._f["status"][()] = np.bytes_(status.encode())
        self._f.flush()

    def close(self, status: str = "complete") -> None:
        """Flush, record ``status`` and close the file. Closing twice does nothing."""
        _check_status(status)
        if self._closed:
            return
        self._closed = True
        _OPEN_WRITERS.discard(self)
        f = self._f
        if f is None:
            return
        try:
            self._flush()
            f["status"][()] = np.bytes_(status.encode())
            f.flush()
        finally:
            f.close()
            self._f = None

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        from .allocate import exit_status

        self.close(exit_status(exc_type))

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._f is not None else "new")
        return f"Writer({str(self.path)!r}, record={self.record!r}, {state}, {self.num_steps} rows)"


@contextlib.contextmanager
def _defer_interrupt() -> Iterator[None]:
    """Hold back SIGINT for the duration of the block (main thread only), then raise it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[object] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda *args: caught.append(args))
    except ValueError:  # not allowed here (e.g. an embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            raise KeyboardInterrupt


def _sums_on_device(a: Any) -> bool:
    """Whether a step's per-weight LCA is summed where it lies (a GPU) rather than on the host.

    One function so the tests can send CPU tensors down the device path too: the sums and
    counts it keeps must equal the host path's, whichever device the tensors are on.
    """
    return a.device.type == "cuda"


def _host(x: Any) -> np.ndarray:
    """A numpy array on the host, from a numpy array or a torch tensor on any device."""
    return x if isinstance(x, np.ndarray) else x.detach().cpu().numpy()


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}.")


# ---------------------------------------------------------------------------------------------
# Reader.


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:160]


def _check_path(path: Path) -> None:
    """The checks that need no HDF5: the file exists, is a file, is readable, is HDF5."""
    name = path.name
    if not path.exists():
        raise RunFileError(
            f"There is no run file {name!r} (looked at {path}); check the path or pick a run "
            "from the runs folder."
        )
    if path.is_dir():
        raise RunFileError(f"{name!r} is a folder, not a run file; choose a .h5 file inside it.")
    if not os.access(path, os.R_OK):
        raise RunFileError(f"{name!r} cannot be read (permission denied); check its permissions.")
    try:
        is_h5 = h5py.is_hdf5(str(path))
    except OSError:
        is_h5 = False
    if not is_h5:
        raise RunFileError(
            f"{name!r} is not an HDF5 file, so it is not an LCA run; choose a .h5 file written "
            "by LCA Lab."
        )


def _is_flag_error(e: OSError) -> bool:
    # HDF5 refuses files whose superblock says a writer still has them open.
    text = str(e)
    return "already open" in text or "consistency flags" in text


def _refuse_truncated(path: Path) -> None:
    """Refuse a file shorter than its own superblock says (a cut-off copy or download).

    A plain read-only open makes HDF5 compare the file's size with the end address it stored,
    and fails at once. SWMR reading skips that check (a live file grows), and a later read past
    the real end then blocks for good while holding h5py's global lock, freezing every other
    reader in the process (every app session). A file a writer holds open (a live run, or one
    whose writer was killed) refuses the plain open; SWMR is the only way to read it.
    """
    try:
        h5py.File(path, "r").close()
    except OSError as e:
        text = str(e)
        if "truncated file" not in text:
            return  # held by a writer, or another problem the SWMR open reports itself
        sizes = re.search(r"eof = (\d+).*stored_eof = (\d+)", text)
        got = f" ({int(sizes[1]):,} of {int(sizes[2]):,} bytes)" if sizes else ""
        raise RunFileError(
            f"{path.name!r} is cut short{got}, so it cannot be read; copy the whole file "
            "again from where it was recorded."
        ) from None


def _open_checked(path: Path) -> h5py.File:
    """Open ``path`` as an LCA run (SWMR read), or raise a RunFileError whose one sentence
    names the file and the fix."""
    _check_path(path)
    name = path.name
    _refuse_truncated(path)
    try:
        f = h5py.File(path, "r", swmr=True)
    except OSError as e:
        raise RunFileError(
            f"{name!r} could not be opened ({_short(e)}); if the program writing it was killed, "
            f"repair it with: python -m lca recover {name}"
        ) from None
    try:
        _check_header(f, name)
    except BaseException:
        f.close()
        raise
    return f


def _check_header(f: h5py.File, name: str) -> int:
    fmt = _decode(f.attrs.get("format"))
    if fmt != FORMAT:
        raise RunFileError(
            f"{name!r} is an HDF5 file but not an LCA run (it has no format=\"{FORMAT}\" "
            "attribute); choose a file written by LCA Lab."
        )
    try:
        version = int(_decode(f.attrs.get("schema_version")))
    except (TypeError, ValueError):
        version = -1
    if version > SCHEMA_VERSION:
        raise RunFileError(
            f"{name!r} was written by a newer LCA Lab (schema {version}); this version reads "
            f"schema {SCHEMA_VERSION} — upgrade LCA Lab."
        )
    if version < 1:
        raise RunFileError(
            f"{name!r} has no valid schema_version attribute, so it cannot be read as an LCA "
            "run; record the run again."
        )
    return version


def _technique_names(spec: Any) -> list[str]:
    """Names from a config's technique list, whatever its form ('prune:0.9', {name: ...}, …)."""
    out: list[str] = []
    if spec is None:
        return out
    if isinstance(spec, str):
        spec = [spec]
    if isinstance(spec, dict):
        spec = [{"name": k} if not isinstance(v, dict) else {"name": k, **v}
                for k, v in spec.items()]
    for item in spec:
        if isinstance(item, str):
            m = re.match(r"\s*([A-Za-z0-9_+\-.]+)", item)
            if m:
                out.append(m.group(1))
        elif isinstance(item, dict):
            n = item.get("name") or item.get("type") or item.get("kind") or item.get("technique")
            if n:
                out.append(str(n))
    return out


def _config_name(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, dict):
        v = v.get("name")
    return None if v is None else str(v)


class _SharedFile:
    """One open h5py.File (and one handle per dataset) per run file per process.

    Two app sessions viewing the same live run open it in one server process; HDF5 shares the
    underlying file, and two handles on one dataset break each other after ``refresh()``. So
    Readers of the same file (same device and inode: a replaced file gets a fresh entry) share
    handles, counted, and the file closes when the last Reader closes.
    """

    _open: ClassVar[dict[tuple[str, int, int], _SharedFile]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, key: tuple[str, int, int], file: h5py.File) -> None:
        self.key, self.file, self.refs = key, file, 0
        self._datasets: dict[str, h5py.Dataset] | None = None

    @classmethod
    def acquire(cls, path: Path) -> _SharedFile:
        try:
            st = path.stat()
            key = (str(path.resolve()), st.st_dev, st.st_ino)
        except OSError:
            key = None
        with cls._lock:
            shared = cls._open.get(key) if key is not None else None
            if shared is None or not shared.file.id.valid:
                shared = cls(key or (str(path), -1, -1), _open_checked(path))
                if key is not None:
                    cls._open[key] = shared
            shared.refs += 1
            return shared

    def datasets(self) -> dict[str, h5py.Dataset]:
        with self._lock:
            if self._datasets is None:
                found: dict[str, h5py.Dataset] = {}
                self.file.visititems(
                    lambda n, o: found.__setitem__(n, o) if isinstance(o, h5py.Dataset) else None
                )
                self._datasets = found
            return self._datasets

    def release(self) -> None:
        with self._lock:
            self.refs -= 1
            if self.refs > 0:
                return
            if self._open.get(self.key) is self:
                del self._open[self.key]
        self.file.close()


class Reader:
    """Read-only view of a run file, live (SWMR) or finished.

    ``refresh()`` re-reads what the writer has added; every accessor is bounded by ``num_steps``
    as of the last refresh, so arrays read between two refreshes always agree in length.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._shared: _SharedFile | None = _SharedFile.acquire(self.path)
        self._f: h5py.File | None = self._shared.file
        try:
            self._load()
            self.refresh()
        except RunFileError:
            self.close()
            raise
        except (KeyError, ValueError, OSError, RuntimeError) as e:
            self.close()
            raise RunFileError(
                f"{self.path.name!r} is an LCA run file but part of it is missing or damaged "
                f"({_short(e)}); try: python -m lca recover {self.path.name}"
            ) from None

    # -- loading ----------------------------------------------------------------------------
    def _load(self) -> None:
        f = self._f
        self.attrs: dict[str, Any] = {k: _decode(v) for k, v in f.attrs.items()}
        self.schema_version = int(self.attrs["schema_version"])
        self.config: dict[str, Any] = json.loads(self.attrs.get("config") or "{}")
        self.record: str = self.attrs.get("record", "layers")
        self.method: str = self.attrs.get("method", "")
        self.dtype: str = self.attrs.get("dtype", "")
        self.measure_size: int = int(self.attrs.get("measure_size", 0))
        self.created: str = self.attrs.get("created", "")
        self.names: list[str] = _decode_strings(f["layers/names"][()])
        table = f["layers/shapes"][()]
        ndim = f["layers/ndim"][()]
        self.shapes: dict[str, tuple[int, ...]] = {
            n: tuple(int(x) for x in table[i, : int(ndim[i])]) for i, n in enumerate(self.names)
        }
        self.num_params: int = int(self.attrs.get(
            "num_params", sum(math.prod(s) for s in self.shapes.values())))
        unames = _decode_strings(f["units/names"][()])
        ukeys = _decode_strings(f["units/keys"][()])
        self._ukeys = dict(zip(unames, ukeys, strict=True))
        self.units: list[tuple[str, int, tuple[str, ...]]] = []
        for n, k in self._ukeys.items():
            g = f[f"units/{k}"]
            self.units.append(
                (n, int(g.attrs["size"]), tuple(json.loads(_decode(g.attrs["params"]))))
            )
        self._pkeys = {n: _param_key(n) for n in self.names}
        self.series_layout: dict[str, tuple[str, tuple[int, ...]]] = {
            p: (d, tuple(s)) for p, (d, s) in json.loads(self.attrs.get("series") or "{}").items()
        }
        self.event_layout: dict[str, tuple[str, ...]] = {
            p: tuple(c) for p, c in json.loads(self.attrs.get("events") or "{}").items()
        }
        self.array_layout: dict[str, tuple[str, tuple[int, ...], float]] = {
            p: (d, tuple(s), v)
            for p, (d, s, v) in json.loads(self.attrs.get("arrays") or "{}").items()
        }

        # One handle per dataset per process (shared by every Reader of this file): HDF5 reopens
        # a dataset on refresh(), and a second open handle to the same dataset then fails to
        # read ("can't insert duplicate key").
        self._ds: dict[str, h5py.Dataset] = self._shared.datasets()
        ds = self._ds
        self._status = ds["status"]
        self._loss = ds["steps/loss"]
        self._steps = {k: ds[f"steps/{k}"] for k in STEP_FIELDS if f"steps/{k}" in ds}
        self._layers = ds["layers/lca"]
        self._units = {n: ds[f"units/{k}/lca"] for n, k in self._ukeys.items()
                       if f"units/{k}/lca" in ds}
        self._params = {n: ds[f"params/{k}/lca"] for n, k in self._pkeys.items()
                        if f"params/{k}/lca" in ds}
        self._series = {p: ds[f"series/{p}"] for p in self.series_layout if f"series/{p}" in ds}
        self._per_step: list[h5py.Dataset] = [
            *self._steps.values(), self._layers, *self._units.values(), *self._params.values(),
            *self._series.values(),
        ]
        self._totals_rows = ds.get("totals_rows")

    # -- live -------------------------------------------------------------------------------
    def refresh(self) -> int:
        """Pick up what the writer added (``dset.refresh()`` on every dataset); return T."""
        self._require()
        for ds in self._ds.values():
            for attempt in range(3):
                try:
                    ds.refresh()
                    break
                except (OSError, RuntimeError) as e:  # caught the writer mid-flush: retry
                    if attempt == 2:
                        raise RunFileError(
                            f"{self.path.name!r} could not be re-read ({_short(e)}); reopen it, "
                            f"or if its writer was killed: python -m lca recover {self.path.name}"
                        ) from None
                    time.sleep(0.02)
        self.status: str = _decode(self._status[()]).rstrip("\x00")
        t = min([self._loss.shape[0] - 1, *(ds.shape[0] for ds in self._per_step)])
        t = max(t, 0)
        if t > 0:
            # Loss values are always finite in a run (the tracker stops on NaN/inf), so a
            # trailing non-finite value is a fill value not yet overwritten: not a whole row.
            lo = max(0, t - 2 * int(self.attrs.get("chunk_rows", 32)))
            tail = self._loss[lo: t + 1]
            finite = np.flatnonzero(np.isfinite(tail))
            t = int(lo + finite[-1]) if len(finite) else lo
        self.num_steps: int = t
        return t

    def _require(self) -> h5py.File:
        if self._f is None:
            raise RuntimeError(f"The run file {self.path.name!r} is closed.")
        return self._f

    def close(self) -> None:
        if self._shared is not None:
            self._shared.release()
            self._shared = None
        self._f = None

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._f is None:
            return f"Reader({str(self.path)!r}, closed)"
        return (f"Reader({str(self.path)!r}, {self.num_steps} steps, record={self.record!r}, "
                f"status={self.status!r})")

    # -- per-step data --------------------------------------------------------------------
    @property
    def totals_rows(self) -> int:
        """How many rows the per-weight totals cover (equals T once the run is closed)."""
        if self._totals_rows is None:
            return self.num_steps
        return int(self._totals_rows[()])

    def _range(self, start: int | None, stop: int | None, n: int | None = None) -> tuple[int, int]:
        s, e, _ = slice(start, stop).indices(self.num_steps if n is None else n)
        return s, max(s, e)

    @staticmethod
    def _rows(ds: h5py.Dataset, s: int, e: int) -> np.ndarray:
        if e <= s:
            return np.zeros((0, *ds.shape[1:]), dtype=ds.dtype)
        return ds[s:e]

    def steps(self, field: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """One per-step field (see STEP_FIELDS); ``"loss"`` has T+1 entries (L_0 .. L_T)."""
        self._require()
        if field == "loss":
            s, e = self._range(start, stop, self.num_steps + 1)
            return self._rows(self._loss, s, e)
        if field not in self._steps:
            raise KeyError(
                f"No step field {field!r}; the fields are loss, {', '.join(self._steps)}."
            )
        s, e = self._range(start, stop)
        out = self._rows(self._steps[field], s, e)
        if field == "label":
            return np.array(_decode_strings(out), dtype=object) if len(out) else np.array(
                [], dtype=object)
        return out

    def layer_lca(
        self, start: int | None = None, stop: int | None = None, cumulative: bool = False
    ) -> np.ndarray:
        """(steps, L) per-tensor LCA; ``cumulative`` gives running sums from step 0."""
        self._require()
        s, e = self._range(start, stop)
        if not cumulative:
            return self._rows(self._layers, s, e).astype(np.float64, copy=False)
        return np.cumsum(self._rows(self._layers, 0, e), axis=0)[s:e]

    def layer_totals(self) -> np.ndarray:
        """(L,) Σ_t LCA per tensor over the whole run so far."""
        return self.layer_lca().sum(axis=0)

    def unit_lca(self, group: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """(steps, U) LCA per output unit of one unit group (modes full and units)."""
        self._require()
        if not self._units:
            raise RunFileError(
                f"{self.path.name!r} was recorded with record={self.record}, so it has no "
                "per-unit LCA; record the run with --record units or full."
            )
        if group not in self._units:
            raise KeyError(
                f"No unit group {group!r}; the groups are {', '.join(self._units)}."
            )
        s, e = self._range(start, stop)
        return self._rows(self._units[group], s, e)

    def _param_name(self, name: str) -> str:
        if name not in self._pkeys:
            raise KeyError(f"No parameter {name!r}; the parameters are {', '.join(self.names)}.")
        return name

    def param_lca(
        self,
        name: str,
        start: int | None = None,
        stop: int | None = None,
        index: int | Sequence[int] | None = None,
    ) -> np.ndarray:
        """Per-weight LCA (float32) of one tensor: (steps, *shape), or (steps,) for one weight
        given by a flat ``index`` or an index tuple."""
        self._require()
        if self.record != "full":
            raise RunFileError(
                f"{self.path.name!r} was recorded with record={self.record}, so it has no "
                "per-weight LCA over time; record the run with --record full (per-weight totals "
                "are available from param_totals)."
            )
        self._param_name(name)
        ds = self._params[name]
        s, e = self._range(start, stop)
        if index is None:
            return self._rows(ds, s, e)
        shape = self.shapes[name]
        idx = (np.unravel_index(int(index), shape) if np.ndim(index) == 0 and shape
               else tuple(index) if np.ndim(index) else ())
        if e <= s:
            return np.zeros(0, dtype=ds.dtype)
        return ds[(slice(s, e), *(int(i) for i in idx))]

    def param_totals(self, name: str) -> np.ndarray:
        """Σ_t LCA of every weight of one tensor (float64, the tensor's shape)."""
        self._require()
        return self._ds[f"params/{self._pkeys[self._param_name(name)]}/total"][()]

    def param_helped_steps(self, name: str) -> np.ndarray:
        """Number of steps on which each weight of one tensor helped (LCA < 0)."""
        self._require()
        return self._ds[f"params/{self._pkeys[self._param_name(name)]}/helped_steps"][()]

    def series(self, path: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """A per-step series declared by the tracker: (steps, *shape)."""
        self._require()
        clean = path.strip("/")
        if clean.startswith("series/"):
            clean = clean[len("series/"):]
        if clean not in self._series:
            known = ", ".join(self._series) or "none"
            raise KeyError(f"No series {path!r}; the series are {known}.")
        s, e = self._range(start, stop)
        return self._rows(self._series[clean], s, e)

    def events(self, path: str) -> dict[str, np.ndarray]:
        """An event table as column name -> (E,) float64 array."""
        self._require()
        ds = self._ds.get(path.strip("/"))
        if ds is None or "columns" not in ds.attrs:
            known = ", ".join(self.event_layout) or "none"
            raise KeyError(f"No event table {path!r}; the tables are {known}.")
        cols = _decode_strings(ds.attrs["columns"][()])
        data = ds[()] if ds.shape[0] else np.zeros((0, len(cols)))
        return {c: data[:, j] for j, c in enumerate(cols)}

    def array(self, path: str) -> np.ndarray:
        """A fixed array declared by the tracker (e.g. a technique's mask)."""
        self._require()
        ds = self._ds.get(path.strip("/"))
        if ds is None:
            raise KeyError(f"No array {path!r} in {self.path.name}.")
        return ds[()]

    def has(self, path: str) -> bool:
        """Whether ``path`` (a group or dataset) exists in the file."""
        return path.strip("/") in self._require()

    # -- summary ------------------------------------------------------------------------------
    def technique_summaries(self) -> dict[str, dict[str, Any]]:
        """What each technique did and saved (its summary() when the run ended), or {}."""
        if not self.has("technique_summaries"):
            return {}
        raw = self.array("technique_summaries")
        raw = raw.item() if hasattr(raw, "item") else raw
        try:
            value = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
        except (ValueError, UnicodeDecodeError):
            return {}
        return value if isinstance(value, dict) else {}

    def summary(self, top: int = 5) -> dict[str, Any]:
        """The run at a glance, all computed from the file (for `inspect`, the app, notebooks)."""
        self._require()
        t = self.num_steps
        loss = self.steps("loss")
        err = self.steps("error")
        kind = self.steps("kind")
        helped = self.steps("helped")
        loss0 = float(loss[0])
        loss_final = float(loss[-1])
        cons = math.fsum(err.tolist())
        change = loss_final - loss0
        steps_mask = kind == 0
        totals = self.layer_totals() if t else np.zeros(len(self.names))
        order = np.argsort(totals, kind="stable")
        # Below a millionth of the largest layer's total is float rounding (e.g. conv biases
        # before BatchNorm, whose true gradient is 0), not a layer that helped or hurt.
        floor = 1e-6 * float(np.abs(totals).max()) if len(totals) else 0.0
        helping = [(self.names[i], float(totals[i])) for i in order if totals[i] < -floor][:top]
        hurting = [(self.names[i], float(totals[i])) for i in order[::-1]
                   if totals[i] > floor][:top]
        techniques = _technique_names(
            self.config.get("techniques", self.config.get("technique"))
        )
        if "techniques" in self._f and isinstance(self._f["techniques"], h5py.Group):
            techniques += [n for n in self._f["techniques"] if n not in techniques]
        out: dict[str, Any] = {
            "file": self.path.name,
            "created": self.created,
            "dataset": _config_name(self.config.get("dataset")),
            "model": _config_name(self.config.get("model")),
            "techniques": techniques,
            "steps": int(steps_mask.sum()),
            "segments": t,
            "interventions": int((kind == 1).sum()),
            "status": self.status,
            "loss0": loss0,
            "loss_final": loss_final,
            "loss_change": change,
            "conservation_error": cons,
            "relative_error": (abs(cons) / abs(change)) if change != 0 else None,
            "max_step_error": float(np.abs(err).max()) if t else 0.0,
            "mean_helped": (float(helped[steps_mask].mean()) if steps_mask.any()
                            else float(helped.mean()) if t else None),
            "duration_s": float(self.steps("wall")[-1]) if t else 0.0,
            "seconds_lca": float(self.steps("seconds_lca").sum()),
            "record": self.record,
            "method": self.method,
            "dtype": self.dtype,
            "num_params": self.num_params,
            "measure_size": self.measure_size,
            "train_acc": None,
            "test_acc": None,
            "test_loss": None,
            "top_helping": helping,
            "top_hurting": hurting,
            "technique_summaries": self.technique_summaries(),
        }
        if self.has("eval"):
            try:
                ev = self.events("eval")
            except KeyError:
                ev = {}
            for key in ("train_acc", "test_acc", "test_loss"):
                col = ev.get(key)
                if col is not None and len(col):
                    out[key] = float(col[-1])
        return out


def open_run(path: str | os.PathLike[str]) -> Reader:
    """Open a run file for reading (live or finished); same as ``Reader(path)``."""
    return Reader(path)


# ---------------------------------------------------------------------------------------------
# Recovery.


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & 0xFFFFFFFF


def _lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 hash (public domain), the checksum HDF5 puts on its superblock."""
    m = 0xFFFFFFFF
    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & m
    k = 0
    while n > 12:
        a = (a + int.from_bytes(data[k: k + 4], "little")) & m
        b = (b + int.from_bytes(data[k + 4: k + 8], "little")) & m
        c = (c + int.from_bytes(data[k + 8: k + 12], "little")) & m
        a = (a - c) & m; a ^= _rot(c, 4); c = (c + b) & m  # noqa: E702
        b = (b - a) & m; b ^= _rot(a, 6); a = (a + c) & m  # noqa: E702
        c = (c - b) & m; c ^= _rot(b, 8); b = (b + a) & m  # noqa: E702
        a = (a - c) & m; a ^= _rot(c, 16); c = (c + b) & m  # noqa: E702
        b = (b - a) & m; b ^= _rot(a, 19); a = (a + c) & m  # noqa: E702
        c = (c - b) & m; c ^= _rot(b, 4); b = (b + a) & m  # noqa: E702
        n -= 12
        k += 12
    if n == 0:
        return c
    tail = data[k: k + n] + bytes(12 - n)
    a = (a + int.from_bytes(tail[0:4], "little")) & m
    b = (b + int.from_bytes(tail[4:8], "little")) & m
    c = (c + int.from_bytes(tail[8:12], "little")) & m
    c ^= b; c = (c - _rot(b, 14)) & m  # noqa: E702
    a ^= c; a = (a - _rot(c, 11)) & m  # noqa: E702
    b ^= a; b = (b - _rot(a, 25)) & m  # noqa: E702
    c ^= b; c = (c - _rot(b, 16)) & m  # noqa: E702
    a ^= c; a = (a - _rot(c, 4)) & m  # noqa: E702
    b ^= a; b = (b - _rot(a, 14)) & m  # noqa: E702
    c ^= b; c = (c - _rot(b, 24)) & m  # noqa: E702
    return c


_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _clear_open_flags(path: Path) -> bool:
    """Clear the "open for (SWMR) write" flags a killed writer left in the superblock, as the
    HDF5 tool ``h5clear -s --increment=0`` does, so the file can be opened for writing again.

    Only a version 2/3 superblock at offset 0 with 8-byte addresses whose checksum we can verify
    is touched; anything else returns False and the caller rebuilds the file by copying. The end
    of file address is raised to the real file size, so space the killed writer used is never
    handed out again.
    """
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        raw = bytearray(fh.read(48))
        if len(raw) < 48 or raw[:8] != _SIGNATURE or raw[8] not in (2, 3) or raw[9] != 8 \
                or raw[10] != 8:
            return False
        if struct.unpack_from("<I", raw, 44)[0] != _lookup3(bytes(raw[:44])):
            return False
        base, _ext, eoa, _root = struct.unpack_from("<QQQQ", raw, 12)
        if base != 0:
            return False
        raw[11] = 0
        struct.pack_into("<Q", raw, 28, max(eoa, size))
        struct.pack_into("<I", raw, 44, _lookup3(bytes(raw[:44])))
        if size < eoa:
            fh.truncate(eoa)  # space allocated but never written: make it exist (zeros)
        fh.seek(0)
        fh.write(raw)
        fh.flush()
        os.fsync(fh.fileno())
    return True


def _writer_alive(attrs: dict[str, Any]) -> int | None:
    pid = attrs.get("writer_pid")
    if not isinstance(pid, int) or pid <= 0 or attrs.get("writer_host") != socket.gethostname():
        return None
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    except OSError:
        return None
    return pid


def _repair(f: h5py.File, name: str) -> str:
    """Trim every per-step dataset of an open (r+) run to the last whole step; finish it."""
    status = _decode(f["status"][()]).rstrip("\x00")
    per_step: list[h5py.Dataset] = []
    for grp in ("steps", "layers", "units", "params", "series"):
        if grp not in f:
            continue

        def visit(n: str, o: Any, grp: str = grp) -> None:
            if not isinstance(o, h5py.Dataset) or o.maxshape[:1] != (None,):
                return
            if grp == "steps" and n == "loss":
                return
            per_step.append(o)

        f[grp].visititems(visit)
    loss = f["steps/loss"]
    t = max(0, min([loss.shape[0] - 1, *(ds.shape[0] for ds in per_step)]))
    if t > 0:
        vals = loss[: t + 1]
        finite = np.flatnonzero(np.isfinite(vals))
        t = int(finite[-1]) if len(finite) else 0
    longest = max([loss.shape[0] - 1, *(ds.shape[0] for ds in per_step)])
    dropped = longest - t
    changed = dropped > 0
    for ds in per_step:
        if ds.shape[0] != t:
            ds.resize(t, axis=0)
    if loss.shape[0] != t + 1:
        loss.resize(t + 1, axis=0)
    record = _decode(f.attrs.get("record"))
    rows_ds = f["totals_rows"] if "totals_rows" in f else None
    totals_rows = int(rows_ds[()]) if rows_ds is not None else t
    note = ""
    if status == "running" or changed or totals_rows != t:
        if record == "full" and "params" in f:
            for key in f["params"]:
                g = f["params"][key]
                if "lca" not in g:
                    continue
                ds = g["lca"]
                tot = np.zeros(ds.shape[1:], dtype=np.float64)
                cnt = np.zeros(ds.shape[1:], dtype=np.int64)
                step = max(1, ds.chunks[0] if ds.chunks else 256)
                for s in range(0, t, step):
                    block = ds[s: min(t, s + step)]
                    tot += block.sum(axis=0, dtype=np.float64)
                    cnt += (block < 0).sum(axis=0)
                g["total"][()] = tot
                g["helped_steps"][()] = cnt.astype(np.int32)
            if rows_ds is not None:
                rows_ds[()] = t
            totals_rows = t
        elif totals_rows != t:
            note = f"; per-weight totals cover {min(totals_rows, t)} of the {t} steps"
    new_status = "interrupted" if status == "running" else status
    if new_status != status:
        f["status"][()] = np.bytes_(new_status.encode())
    if not changed and new_status == status:
        return f"{name}: already clean, {t} steps, status {status}{note}."
    parts = [f"kept {t} whole steps"]
    if dropped:
        parts.append(f"dropped {dropped} partial row{'s' if dropped != 1 else ''}")
    parts.append(f"status {status} -> {new_status}" if new_status != status
                 else f"status {status}")
    return f"{name}: " + ", ".join(parts) + note + "."


def recover(path: str | os.PathLike[str], *, force: bool = False) -> str:
    """Make a run file whose writer was killed clean again; return a one-line summary.

    Keeps the last whole step (the shortest per-step dataset, with loss one longer), trims
    everything else to it, recomputes the per-weight totals in full mode, turns status "running"
    into "interrupted" and closes the file normally. A clean file is left as it is. A file whose
    writer process still runs on this machine is refused unless ``force``.
    """
    p = Path(path)
    name = p.name
    _check_path(p)
    attrs: dict[str, Any] = {}
    status, readable = "?", True
    try:
        with h5py.File(p, "r", swmr=True) as g:  # what a killed SWMR writer leaves can be read
            _check_header(g, name)
            attrs = {k: _decode(v) for k, v in g.attrs.items()}
            status = _decode(g["status"][()]).rstrip("\x00") if "status" in g else "?"
    except OSError as e:
        if not _is_flag_error(e):
            raise RunFileError(f"{name!r} could not be opened for repair ({_short(e)}).") from None
        readable = False  # open for writing without SWMR: nothing can be checked first
    try:
        f = h5py.File(p, "r+", libver=LIBVER)
    except OSError as e:
        if not _is_flag_error(e):
            raise RunFileError(f"{name!r} could not be opened for repair ({_short(e)}).") from None
        if not readable and not force:
            raise RunFileError(
                f"{name!r} is marked as open by a program that wrote it without SWMR, so it "
                "cannot be checked first; if nothing writes it any more, repair it with "
                "lca.store.recover(path, force=True)."
            ) from None
        pid = _writer_alive(attrs)
        if pid is not None and not force and status == "running":
            raise RunFileError(
                f"{name!r} is still being written by process {pid}; stop that run (or wait for "
                "it to finish) before recovering it."
            ) from None
        if _clear_open_flags(p):
            f = h5py.File(p, "r+", libver=LIBVER)
        elif readable:
            return _recover_by_copy(p)
        else:
            raise RunFileError(
                f"{name!r} cannot be repaired here; clear its open flag with the HDF5 tool "
                f"'h5clear -s {name}' and run recover again."
            ) from None
    with f:
        return _repair_checked(f, name)


def _repair_checked(f: h5py.File, name: str) -> str:
    _check_header(f, name)
    try:
        return _repair(f, name)
    except KeyError as e:
        raise RunFileError(
            f"{name!r} lacks part of an LCA run ({_short(e)}), so it cannot be repaired; record "
            "the run again."
        ) from None


def _recover_by_copy(p: Path) -> str:
    """Fallback when the superblock cannot be patched: copy the readable file (SWMR read) into a
    fresh one, repair the copy and swap it in."""
    tmp = p.with_name(f".{p.name}.{os.getpid()}.recover.tmp")
    try:
        with h5py.File(p, "r", swmr=True) as src, h5py.File(tmp, "w", libver=LIBVER) as dst:
            for k, v in src.attrs.items():
                dst.attrs.create(k, data=v, dtype=src.attrs.get_id(k).dtype)
            for key in src:
                src.copy(src[key], dst, name=key)
            msg = _repair_checked(dst, p.name)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return msg
