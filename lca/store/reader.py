"""The Reader the app and notebooks read runs through: checks a file before trusting it, shares
one HDF5 handle per file per process, and bounds every read by the completed step count."""

from __future__ import annotations

import json
import math
import os
import re
import stat
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import h5py
import numpy as np

from . import filecheck
from .schema import (
    FORMAT,
    SCHEMA_VERSION,
    STEP_FIELDS,
    RunFileError,
    _decode,
    _decode_strings,
    _param_key,
)

if TYPE_CHECKING:
    pass

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
    if not stat.S_ISREG(path.stat().st_mode):  # opening a pipe or a device would block
        raise RunFileError(
            f"{name!r} is not a regular file (a pipe or a device), so LCA Lab does not read it; "
            "choose a .h5 run file."
        )
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
    checked = filecheck.check(path)  # in a process of its own, cached: before anything is read
    _refuse_truncated(path)
    try:
        f = h5py.File(path, "r", swmr=True)
    except OSError as e:
        raise RunFileError(
            f"{name!r} could not be opened ({_short(e)}); if the program writing it was killed, "
            f"repair it with: python -m lca recover {name}"
        ) from None
    try:
        opened = os.fstat(f.id.get_vfd_handle())
        if checked is not None and (opened.st_dev, opened.st_ino) != checked:
            raise RunFileError(f"{name!r} was replaced while it was being opened; open it again.")
        _check_header(f, name)
    except BaseException:
        f.close()
        raise
    return f


def _check_header(f: h5py.File, name: str) -> int:
    fmt = _decode(f.attrs.get("format"))
    if fmt != FORMAT:
        raise RunFileError(
            f'{name!r} is an HDF5 file but not an LCA run (it has no format="{FORMAT}" '
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
        spec = [
            {"name": k} if not isinstance(v, dict) else {"name": k, **v} for k, v in spec.items()
        ]
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


def _all_datasets(f: h5py.File) -> dict[str, h5py.Dataset]:
    """Every dataset of a checked file by path, opened group by group.

    h5py's ``visititems`` walks the whole file in one call under h5py's process-wide lock, so a
    file with tens of thousands of objects froze every other session's reads for as long; here
    each call is short and other threads' reads go on in between. (The file check has refused
    soft and external links, so every link is a hard link inside the file.)
    """
    found: dict[str, h5py.Dataset] = {}
    queue: list[tuple[str, h5py.Group]] = [("", f)]
    seen = {h5py.h5o.get_info(f.id).addr}  # the check refuses a second link; never loop anyway
    while queue:
        prefix, group = queue.pop()
        for name in list(group):
            obj = group[name]
            path = f"{prefix}{name}"
            if isinstance(obj, h5py.Dataset):
                found[path] = obj
            elif isinstance(obj, h5py.Group) and path.count("/") < filecheck.MAX_DEPTH:
                addr = h5py.h5o.get_info(obj.id).addr
                if addr not in seen:
                    seen.add(addr)
                    queue.append((f"{path}/", obj))
    return found


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
        self._walk_lock = threading.Lock()

    @classmethod
    def acquire(cls, path: Path) -> _SharedFile:
        # Checked before the lock: a slow or hostile file never holds up other readers.
        _check_path(path)
        filecheck.check(path)
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
        # Per file, not the class lock: a big file's walk never holds up other files' readers.
        with self._walk_lock:
            if self._datasets is None:
                self._datasets = _all_datasets(self.file)
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
        self.num_params: int = int(
            self.attrs.get("num_params", sum(math.prod(s) for s in self.shapes.values()))
        )
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
        self._units = {
            n: ds[f"units/{k}/lca"] for n, k in self._ukeys.items() if f"units/{k}/lca" in ds
        }
        self._params = {
            n: ds[f"params/{k}/lca"] for n, k in self._pkeys.items() if f"params/{k}/lca" in ds
        }
        self._series = {p: ds[f"series/{p}"] for p in self.series_layout if f"series/{p}" in ds}
        self._per_step: list[h5py.Dataset] = [
            *self._steps.values(),
            self._layers,
            *self._units.values(),
            *self._params.values(),
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
        try:
            size = os.fstat(self._f.id.get_vfd_handle()).st_size
        except (OSError, ValueError, TypeError):
            size = self.path.stat().st_size
        too_large = filecheck.declared_too_large(self._ds.values(), size, self.path.name)
        if too_large:
            raise RunFileError(too_large)
        self.status: str = _decode(self._status[()]).rstrip("\x00")
        t = min([self._loss.shape[0] - 1, *(ds.shape[0] for ds in self._per_step)])
        t = max(t, 0)
        if t > 0:
            # Loss values are always finite in a run (the tracker stops on NaN/inf), so a
            # trailing non-finite value is a fill value not yet overwritten: not a whole row.
            lo = max(0, t - 2 * int(self.attrs.get("chunk_rows", 32)))
            tail = self._loss[lo : t + 1]
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
        return (
            f"Reader({str(self.path)!r}, {self.num_steps} steps, record={self.record!r}, "
            f"status={self.status!r})"
        )

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
            return (
                np.array(_decode_strings(out), dtype=object)
                if len(out)
                else np.array([], dtype=object)
            )
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
            raise KeyError(f"No unit group {group!r}; the groups are {', '.join(self._units)}.")
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
        idx = (
            np.unravel_index(int(index), shape)
            if np.ndim(index) == 0 and shape
            else tuple(index)
            if np.ndim(index)
            else ()
        )
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
            clean = clean[len("series/") :]
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

    # -- the held-out set (runs measured with measure_val; docs/FORMAT.md "LCA of the held-out
    # loss") ----------------------------------------------------------------------------------
    @property
    def has_val(self) -> bool:
        """Whether LCA of the held-out loss was measured (older files: False)."""
        return "lca_val/lca" in self._series and "lca_val/loss0" in self._ds

    def val_steps(
        self, field: str, start: int | None = None, stop: int | None = None
    ) -> np.ndarray:
        """A per-step field of the held-out set: ``lca``, ``error``, ``helped``, ``hurt``, or
        ``loss`` (T+1 entries, L_val(θ_0) first, as ``steps("loss")``)."""
        if not self.has_val:
            raise RunFileError(
                f"{self.path.name!r} has no LCA of the held-out loss; record the run with "
                "--measure-val."
            )
        if field == "loss":
            s, e = self._range(start, stop, self.num_steps + 1)
            loss0 = np.atleast_1d(np.asarray(self.array("lca_val/loss0"), dtype=np.float64))
            whole = np.concatenate([loss0, self.series("lca_val/loss", 0, self.num_steps)])
            return whole[s:e]
        return self.series(f"lca_val/{field}", start, stop)

    def val_layer_lca(self, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """(steps, L) per-tensor LCA of the held-out loss."""
        return np.asarray(self.val_steps("layers", start, stop), dtype=np.float64)

    def val_param_totals(self, name: str) -> np.ndarray:
        """Σ_t LCA of the held-out loss of every weight of one tensor (float64, its shape)."""
        self.val_steps("lca", 0, 0)  # the one sentence for a file without it
        self._param_name(name)
        offset = 0
        for n in self.names:
            size = math.prod(self.shapes[n])
            if n == name:
                flat = self._ds["lca_val/total"][offset : offset + size]
                return np.asarray(flat, dtype=np.float64).reshape(self.shapes[name])
            offset += size
        raise KeyError(name)

    # -- Stanza and data parallel (docs/FORMAT.md "Stanza and data parallel") ------------------
    def parallel(self) -> dict[str, Any] | None:
        """The run's /parallel records as written, or None for a run trained in one process.

        ``{"bytes_sent": array, "bytes_received": array, "info": dict}``; the arrays are
        returned as stored (shapes unchecked: ``lca.views.parallel_view`` checks them), ``info``
        is ``{}`` when its JSON is empty or unreadable.
        """
        self._require()
        info_ds = self._ds.get("parallel/info")
        if info_ds is None:
            return None
        out: dict[str, Any] = {}
        for leaf in ("bytes_sent", "bytes_received"):
            found = self._ds.get(f"parallel/{leaf}")
            out[leaf] = None if found is None else np.asarray(found[()])
        raw = info_ds[()]
        try:  # a scalar string as written; anything else (an array, a number) reads as {}
            raw = raw.item() if hasattr(raw, "item") else raw
            info = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
        except (ValueError, UnicodeDecodeError, TypeError):
            info = {}
        out["info"] = info if isinstance(info, dict) else {}
        return out

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

    def _accuracy_summary(self) -> dict[str, Any]:
        """The held-out set's loss and conservation, and the per-parameter error estimate
        (median and worst ‖A₁ − A₂‖/‖A₂‖, worst sign agreement); None where not recorded."""
        out: dict[str, Any] = dict.fromkeys(
            (
                "val_loss0",
                "val_loss_final",
                "val_conservation_error",
                "panel_error_median",
                "panel_error_worst",
                "panel_sign_agreement_worst",
            )
        )
        if self.has_val:
            loss = self.val_steps("loss")
            out["val_loss0"], out["val_loss_final"] = float(loss[0]), float(loss[-1])
            out["val_conservation_error"] = math.fsum(self.val_steps("error").tolist())
        rel_path, sign_path = "lca/panel_error_rel", "lca/panel_sign_agreement"
        if rel_path in self._series and sign_path in self._series:
            rel, signs = self.series(rel_path), self.series(sign_path)
            keep = np.isfinite(rel) & np.isfinite(signs)
            if keep.any():
                out["panel_error_median"] = float(np.median(rel[keep]))
                out["panel_error_worst"] = float(rel[keep].max())
                out["panel_sign_agreement_worst"] = float(signs[keep].min())
        return out

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
        hurting = [(self.names[i], float(totals[i])) for i in order[::-1] if totals[i] > floor][
            :top
        ]
        techniques = _technique_names(self.config.get("techniques", self.config.get("technique")))
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
            "mean_helped": (
                float(helped[steps_mask].mean())
                if steps_mask.any()
                else float(helped.mean())
                if t
                else None
            ),
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
            **self._accuracy_summary(),
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
