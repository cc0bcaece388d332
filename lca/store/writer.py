"""The Writer a Tracker streams into: creates every dataset before SWMR starts, writes whole
time-chunks, and leaves a file readers can open whatever happens to the process."""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import math
import os
import shutil
import signal
import socket
import threading
import time
import warnings
import weakref
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from .lock import RunBusyError, WriteLock, acquire, holder
from .schema import (
    FORMAT,
    LIBVER,
    RECORD_MODES,
    RESERVED,
    SCHEMA_VERSION,
    STATUS_DTYPE,
    STATUSES,
    LargeRunNotice,
    RunFileError,
    RunTooLargeError,
    _chunk_shape,
    _clean_path,
    _fill_for,
    _fixed_strings,
    _json_fill,
    _label_bytes,
    _param_key,
    _plan,
    _str_attr,
    _unit_keys,
    _version,
    estimate_bytes,
    size_notice,
    size_refusal,
)

if TYPE_CHECKING:
    from ..allocate import Layout, StepRecord

# ---------------------------------------------------------------------------------------------
# Writer.

_OPEN_WRITERS: weakref.WeakSet[Writer] = weakref.WeakSet()
WRITE_CHUNK_CACHE = 64 << 10  # bytes of HDF5 chunk cache per open dataset while writing


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
        self._whole_rows = 0  # ... of which a flush has completed (what a full disk keeps)
        self._n = 0  # rows buffered
        self._warned: set[str] = set()
        self._lock: WriteLock | None = None
        self._reserve_ok = hasattr(os, "posix_fallocate")
        if self.path.exists() and not overwrite:
            raise self._exists_error()
        who = holder(self.path)  # refuse at once, before the caller trains anything
        if who is not None:
            raise RunBusyError(
                f"Cannot write {self.path}: it is still being written by {who.describe()}; wait "
                "for that run to finish or stop it first."
            )

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
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._os_error(e, "create") from None
        # One writer per file: held from here to close(), refused at once if another holds it.
        # Taken before the existence check, so two writers racing for a new name cannot both
        # pass it, and an --overwrite cannot replace a file another writer is writing.
        self._lock = acquire(self.path)
        try:
            if self.path.exists() and not self.overwrite:
                raise self._exists_error()
            f = self._create_file(layout, float(loss0))
        except BaseException:
            self._release_lock()
            raise
        self._f = f
        self._setup_buffers(layout)
        self._last_flush = time.monotonic()
        _OPEN_WRITERS.add(self)

    def _create_file(self, layout: Layout, loss0: float) -> h5py.File:
        """Build the file under a hidden name, start SWMR, then rename it into place (readers only
        ever see a file that is ready for them). Errors name the run, never the hidden file."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            # A small chunk cache per dataset: the writer writes whole chunks and never reads
            # them back, and HDF5's default (1 MiB for every open dataset) kept ~16 B per
            # parameter resident in full mode (benchmarks/memory.py); narrow chunks still fit.
            f = h5py.File(tmp, "w", libver=LIBVER, rdcc_nbytes=WRITE_CHUNK_CACHE)
        except (OSError, RuntimeError) as e:
            tmp.unlink(missing_ok=True)
            if _is_io_error(e):
                raise self._os_error(e, "create") from None
            raise
        try:
            self._create(f, layout, loss0)
            f.swmr_mode = True
            f.flush()
            os.replace(tmp, self.path)
        except BaseException as e:
            with contextlib.suppress(Exception):
                f.close()
            tmp.unlink(missing_ok=True)
            if _is_io_error(e):
                raise self._os_error(e, "create") from None
            raise
        return f

    def _os_error(self, e: BaseException, doing: str) -> RunFileError:
        """An OS or HDF5 error while making the file as one sentence about the run's path."""
        if _is_disk_full(e):
            return DiskFullError(
                f"The disk holding {self.path} is full, so the run could not start; free space "
                "and train again."
            )
        code = getattr(e, "errno", None) or _hdf5_errno(str(e))
        reason = os.strerror(code).lower() if code else "the file system refused it"
        return RunFileError(
            f"Cannot {doing} {self.path} ({reason}); choose another --out in a folder you can "
            "write to."
        )

    def _release_lock(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

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
                    if (
                        clean == other
                        or clean.startswith(other + "/")
                        or other.startswith(clean + "/")
                    ):
                        raise ValueError(f"The {kind} path {p!r} clashes with {other!r}.")
                seen[clean] = kind
        for p, cols in layout.events.items():
            if not cols:
                raise ValueError(f"The event table {p!r} has no columns.")

    def _check_size(self, layout: Layout) -> None:
        est = estimate_bytes(
            layout, int(self.expected_steps), self.record, chunk_rows=self.chunk_rows
        )
        self.estimated_bytes = est
        folder = self.path.parent.resolve()
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        refusal = size_refusal(
            self.path.name,
            est,
            steps=self.expected_steps,
            record=self.record,
            params=layout.num_params,
            cap=self.max_bytes,
            cap_name="allowed (max_bytes)",
            free=shutil.disk_usage(folder).free,
            where=f"on the disk holding {folder}",
            verb="use",
            record_option="--record units or layers",
        )
        if refusal:
            raise RunTooLargeError(refusal)
        notice = size_notice(
            layout, int(self.expected_steps), self.record, chunk_rows=self.chunk_rows
        )
        if notice:
            warnings.warn(LargeRunNotice(notice), stacklevel=4)

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
        _str_attr(
            f,
            "series",
            json.dumps(
                {
                    _clean_path(p, "series"): [np.dtype(d).str, list(s)]
                    for p, (d, s) in layout.series.items()
                }
            ),
        )
        _str_attr(
            f,
            "events",
            json.dumps({_clean_path(p, "event table"): list(c) for p, c in layout.events.items()}),
        )
        _str_attr(
            f,
            "arrays",
            json.dumps(
                {
                    _clean_path(p, "array"): [np.dtype(d).str, list(s), _json_fill(v)]
                    for p, (d, s, v) in layout.arrays.items()
                }
            ),
        )

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
        f.create_dataset(
            "layers/sizes", data=np.array([math.prod(s) for s in shapes], dtype=np.int64)
        )

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
                f.create_dataset(
                    p.path,
                    data=np.array([loss0]),
                    maxshape=(None,),
                    chunks=p.chunks,
                    fillvalue=np.nan,
                )
            else:
                f.create_dataset(
                    p.path,
                    shape=(0, *p.row_shape),
                    maxshape=(None, *p.row_shape),
                    dtype=p.dtype,
                    chunks=p.chunks,
                    fillvalue=p.fill,
                )

        for path, cols in layout.events.items():
            clean = _clean_path(path, "event table")
            ct = _chunk_shape((len(cols),), 8, self.chunk_rows)[0]
            ds = f.create_dataset(
                clean,
                shape=(0, len(cols)),
                maxshape=(None, len(cols)),
                dtype="f8",
                chunks=(ct, len(cols)),
                fillvalue=np.nan,
            )
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
        # Bytes one time-block of chunks takes on disk, per dataset: what a flush may allocate.
        self._chunk_sizes: list[tuple[int, int]] = []
        for ds, buf, _extra in self._targets:
            chunks = ds.chunks or (1, *buf.shape[1:])
            per_block = math.prod(
                -(-s // c) for s, c in zip(buf.shape[1:], chunks[1:], strict=True)
            )
            self._chunk_sizes.append((chunks[0], per_block * math.prod(chunks) * buf.itemsize))
        self._names = list(layout.names)
        self._shapes = {n: tuple(s) for n, s in zip(layout.names, layout.shapes, strict=True)}
        self._keys = {n: _param_key(n) for n in self._names}
        self._pbuf_keys = {n: f"params/{self._keys[n]}/lca" for n in self._names}
        # Torch views of the float32 buffers, so one copy_ moves and casts from any device.
        self._pviews = (
            {n: torch.from_numpy(self._bufs[f"params/{self._keys[n]}/lca"]) for n in self._names}
            if self.record == "full"
            else {}
        )
        ukeys = _unit_keys([g.name for g in layout.units])
        self._ubufs = (
            {g.name: self._bufs[f"units/{k}/lca"] for k, g in zip(ukeys, layout.units, strict=True)}
            if self.record in ("full", "units")
            else {}
        )
        self._series_paths = {p: _clean_path(p, "series") for p in layout.series}
        self._tot: dict[str, Any] = {}
        self._cnt: dict[str, Any] = {}
        self._tot_ds = {n: f[f"params/{self._keys[n]}/total"] for n in self._names}
        self._cnt_ds = {n: f[f"params/{self._keys[n]}/helped_steps"] for n in self._names}
        self._event_cols = {
            _clean_path(p, "event table"): tuple(c) for p, c in layout.events.items()
        }
        self._array_paths = {_clean_path(p, "array") for p in layout.arrays}
        self._events: dict[str, list[list[float]]] = {}
        self._event_rows = {p: 0 for p in self._event_cols}  # rows each table has whole
        self._arrays: dict[str, np.ndarray] = {}

    # -- append -------------------------------------------------------------------------------
    def append(self, record: StepRecord) -> None:
        """Buffer one segment; whole time-chunks (or what ``flush_seconds`` has gathered) go out.

        Ctrl-C and SIGTERM wait until the row is whole in the buffer (``num_steps`` then counts
        it, and close() writes it)."""
        with _defer_interrupt():
            self._append(record)

    def _append(self, record: StepRecord) -> None:
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
        # The very first step goes out at once: a live view (the demo) draws its first chart
        # as soon as one step exists, instead of waiting for flush_seconds to pass.
        if (
            self._n >= self.chunk_rows - self._rows % self.chunk_rows
            or self._rows == 0
            or time.monotonic() - self._last_flush >= self.flush_seconds
        ):
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
                        np.zeros(shape) if tot is None else _host(tot)
                    ).to(a.device)
                    cnt = self._cnt[name] = torch.as_tensor(
                        np.zeros(shape, np.int32) if cnt is None else _host(cnt)
                    ).to(a.device)
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
            self._cnt[name] = (
                np.zeros(shape, np.int32) if name not in self._cnt else _host(self._cnt[name])
            )
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
        # Ctrl-C and SIGTERM wait until the flush is whole: an interrupted flush followed by the
        # flush in close() would otherwise write the buffered rows, and add them to the totals,
        # twice.
        with _defer_interrupt():
            try:
                self._reserve_space()
                self._flush_now()
            except Exception as e:
                if not _is_disk_full(e):
                    raise
                self._fail_disk_full()

    def _reserve_space(self) -> None:
        """Make sure the disk has room for this flush before HDF5 writes a byte of it.

        HDF5 cut off half-way by a full disk leaves its metadata and raw data out of step (and
        h5py may crash on the way out), so the space is claimed first, with posix_fallocate,
        past HDF5's end of file: a full disk then fails here, with the file untouched since the
        last whole flush. HDF5 writes into the claimed space later; close() trims what is left.
        """
        if not self._reserve_ok or self._f is None:
            return
        need = _RESERVE_MARGIN + _RESERVE_PER_DATASET * (len(self._targets) + len(self._events))
        n = self._n
        if n:
            for c, chunk_bytes in self._chunk_sizes:
                need += (n // c + 2) * chunk_bytes
        for rows in self._events.values():
            need += (len(rows) + 64) * 8 * max(1, len(rows[0]) if rows else 1)
        try:
            fd = self._f.id.get_vfd_handle()
            end = self._f.id.get_filesize() + need
            size = os.fstat(fd).st_size
            if end > size:
                os.posix_fallocate(fd, size, end - size)
        except OSError as e:
            if _is_disk_full(e):
                raise
            self._reserve_ok = False  # not possible here (file system, driver): write as before
        except (TypeError, ValueError, RuntimeError):
            self._reserve_ok = False

    def _fail_disk_full(self) -> None:
        """End the run after a full disk: status "failed", the file closed with every whole step
        written before, then one sentence (DiskFullError) for the caller."""
        kept = self._whole_rows
        f, self._f = self._f, None
        self._closed = True
        _OPEN_WRITERS.discard(self)
        clean = True
        if f is not None:
            # Only when HDF5 itself met the full disk (the reservation fell short): take back the
            # rows the cut-off flush announced, so no reader meets rows that were never written,
            # then overwrite the status in place (no new space needed) and close.
            with contextlib.suppress(Exception):
                for ds, _buf, extra in self._targets:
                    if ds.shape[0] != kept + extra:
                        ds.resize(kept + extra, axis=0)
                for path, rows in self._event_rows.items():
                    if f[path].shape[0] != rows:
                        f[path].resize(rows, axis=0)
            with contextlib.suppress(Exception):
                f["status"][()] = np.bytes_(b"failed")
            try:
                f.flush()
                f.close()
            except Exception:  # noqa: BLE001 - HDF5 could not write what it holds
                # Its objects must then never be freed (h5py crashes freeing them), so they
                # stay referenced; the CLI leaves the process at once (DiskFullError.clean).
                clean = False
                _UNCLOSABLE.append((f, self._targets, self._tot_ds, self._cnt_ds))
            else:
                _trim_to_eoa(self.path)
            self._targets, self._tot_ds, self._cnt_ds = [], {}, {}
        self._release_lock()
        error = DiskFullError(
            f"The disk holding {self.path} is full after step {kept}; every whole step before "
            "it is kept (status failed), so free space and train again."
        )
        error.clean = clean
        raise error

    def _flush_now(self) -> None:
        f, n = self._f, self._n
        t1 = self._rows + n
        if n:
            t0 = self._rows
            # Resize-then-write dataset by dataset, loss last: a reader's T (the shortest
            # dataset) only covers rows that are written everywhere.
            for ds, buf, extra in self._targets:
                ds.resize(t1 + extra, axis=0)
                ds[t0 + extra : t1 + extra] = buf[:n]
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
        written = {path: f[path].shape[0] for path in self._events}
        self._events = {}
        for path, value in self._arrays.items():
            f[path][()] = value
        self._arrays = {}
        f.flush()
        self._whole_rows = t1  # on disk, whole, only now (a full disk above keeps the old count)
        self._event_rows.update(written)
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
        """Flush, record ``status`` and close the file. Closing twice does nothing.

        Signals wait until the file is closed, so a SIGTERM at the end still leaves the status.
        """
        _check_status(status)
        if self._closed:
            return
        with _defer_interrupt():
            self._closed = True
            _OPEN_WRITERS.discard(self)
            try:
                f = self._f
                if f is None:
                    return
                try:
                    self._flush()  # a full disk closes the file itself and raises DiskFullError
                    f["status"][()] = np.bytes_(status.encode())
                    f.flush()
                finally:
                    if self._f is not None:
                        self._f = None
                        f.close()
                        _trim_to_eoa(self.path)
            finally:
                self._release_lock()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        from ..allocate import exit_status

        self.close(exit_status(exc_type))

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._f is not None else "new")
        return f"Writer({str(self.path)!r}, record={self.record!r}, {state}, {self.num_steps} rows)"


_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _defer_interrupt() -> Iterator[None]:
    """Hold back SIGINT and SIGTERM for the duration of the block (main thread only), then act
    on them as their handlers would have: KeyboardInterrupt for Ctrl-C, the CLI's SIGTERM
    handler, or the default action (the process ends, with the file whole)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous: dict[int, Any] = {}
    try:
        for sig in _HELD_SIGNALS:
            handler = signal.getsignal(sig)
            if handler is None or handler == signal.SIG_IGN:
                continue  # installed outside Python, or ignored: leave it alone
            previous[sig] = signal.signal(sig, lambda n, _frame: caught.append(n))
    except ValueError:  # not allowed here (e.g. an embedded interpreter)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(caught):
            handler = previous[sig]
            if handler == signal.SIG_DFL:
                os.kill(os.getpid(), sig)
            elif callable(handler):
                handler(sig, None)


_RESERVE_MARGIN = 256 << 10  # metadata a flush may add (chunk index, object headers): generous
_RESERVE_PER_DATASET = 8 << 10  # ... and per dataset it touches
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(RunFileError):
    """The disk filled up: the run ended with status "failed" and every whole step kept.

    ``clean`` is False in the rare case HDF5 met the full disk itself and could not close the
    file: the process should then end soon (``os._exit`` after saying so, as the CLI does),
    since HDF5 cannot finish its clean-up without space.
    """

    clean = True


_UNCLOSABLE: list[object] = []  # HDF5 objects that could not be closed (see DiskFullError)


def _hdf5_errno(text: str) -> int | None:
    """The errno an HDF5 message carries ("... errno = 28, error message = ..."), if any."""
    import re

    m = re.search(r"errno = (\d+)", text)
    return int(m[1]) if m else None


def _is_io_error(e: BaseException) -> bool:
    """An error of the file system under HDF5 (not a bug): an OSError, or HDF5's own error
    with an errno in its text (h5py raises some of those as RuntimeError)."""
    if isinstance(e, OSError):
        return True
    return isinstance(e, RuntimeError) and _hdf5_errno(str(e)) is not None


def _is_disk_full(e: BaseException) -> bool:
    if not isinstance(e, OSError | RuntimeError):
        return False
    code = getattr(e, "errno", None) or _hdf5_errno(str(e))
    return code in _NO_SPACE or "No space left" in str(e)


def _trim_to_eoa(path: Path) -> None:
    """Cut a closed run file back to the end address its superblock records, dropping the
    space ``_reserve_space`` claimed and HDF5 did not use (HDF5 trims only what it wrote).

    Only a version 2/3 superblock at offset 0 with 8-byte addresses (what the Writer makes) is
    read; anything else is left alone.
    """
    import struct

    with contextlib.suppress(OSError):
        with open(path, "r+b") as fh:
            raw = fh.read(48)
            if (
                len(raw) < 48
                or raw[:8] != b"\x89HDF\r\n\x1a\n"
                or raw[8] not in (2, 3)
                or raw[9] != 8
                or raw[11] != 0
            ):
                return
            base, _ext, eoa = struct.unpack_from("<QQQ", raw, 12)
            size = os.fstat(fh.fileno()).st_size
            if base == 0 and 48 <= eoa < size:
                fh.truncate(eoa)


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
