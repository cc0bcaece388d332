"""Recovery of a run file whose writer was killed: trim to the last whole step, mark it
"interrupted", clear the superblock's open flags, and close it cleanly."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from . import filecheck
from .lock import held, is_hdf5_lock_error, open_elsewhere_sentence
from .reader import _check_header, _check_path, _is_flag_error, _short
from .schema import LIBVER, RunFileError, _decode

if TYPE_CHECKING:
    pass

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
        a = (a + int.from_bytes(data[k : k + 4], "little")) & m
        b = (b + int.from_bytes(data[k + 4 : k + 8], "little")) & m
        c = (c + int.from_bytes(data[k + 8 : k + 12], "little")) & m
        a = (a - c) & m
        a ^= _rot(c, 4)
        c = (c + b) & m
        b = (b - a) & m
        b ^= _rot(a, 6)
        a = (a + c) & m
        c = (c - b) & m
        c ^= _rot(b, 8)
        b = (b + a) & m
        a = (a - c) & m
        a ^= _rot(c, 16)
        c = (c + b) & m
        b = (b - a) & m
        b ^= _rot(a, 19)
        a = (a + c) & m
        c = (c - b) & m
        c ^= _rot(b, 4)
        b = (b + a) & m
        n -= 12
        k += 12
    if n == 0:
        return c
    tail = data[k : k + n] + bytes(12 - n)
    a = (a + int.from_bytes(tail[0:4], "little")) & m
    b = (b + int.from_bytes(tail[4:8], "little")) & m
    c = (c + int.from_bytes(tail[8:12], "little")) & m
    c ^= b
    c = (c - _rot(b, 14)) & m
    a ^= c
    a = (a - _rot(c, 11)) & m
    b ^= a
    b = (b - _rot(a, 25)) & m
    c ^= b
    c = (c - _rot(b, 16)) & m
    a ^= c
    a = (a - _rot(c, 4)) & m
    b ^= a
    b = (b - _rot(a, 14)) & m
    c ^= b
    c = (c - _rot(b, 24)) & m
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
        if (
            len(raw) < 48
            or raw[:8] != _SIGNATURE
            or raw[8] not in (2, 3)
            or raw[9] != 8
            or raw[10] != 8
        ):
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
                    block = ds[s : min(t, s + step)]
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
    parts.append(f"status {status} -> {new_status}" if new_status != status else f"status {status}")
    return f"{name}: " + ", ".join(parts) + note + "."


def recover(path: str | os.PathLike[str], *, force: bool = False) -> str:
    """Make a run file whose writer was killed clean again; return a one-line summary.

    Keeps the last whole step (the shortest per-step dataset, with loss one longer), trims
    everything else to it, recomputes the per-weight totals in full mode, turns status "running"
    into "interrupted" and closes the file normally. A clean file is left as it is. A file a
    writer still holds (its lock, see ``lock.py``) is refused, ``force`` or not: repairing under
    a live writer would lose steps.
    """
    p = Path(path)
    _check_path(p)
    filecheck.check(p)  # read only from itself, bounded: before anything is read or written
    with held(p, doing="recover"):  # RunBusyError, naming the writer, while one holds it
        return _recover(p, force=force)


def _recover(p: Path, *, force: bool) -> str:
    name = p.name
    readable = True
    try:
        with h5py.File(p, "r", swmr=True) as g:  # what a killed SWMR writer leaves can be read
            _check_header(g, name)
    except OSError as e:
        if is_hdf5_lock_error(e):
            raise RunFileError(open_elsewhere_sentence(p, "recover")) from None
        if not _is_flag_error(e):
            raise RunFileError(f"{name!r} could not be opened for repair ({_short(e)}).") from None
        readable = False  # open for writing without SWMR: nothing can be checked first
    try:
        f = h5py.File(p, "r+", libver=LIBVER)
    except OSError as e:
        if is_hdf5_lock_error(e):
            raise RunFileError(open_elsewhere_sentence(p, "recover")) from None
        if not _is_flag_error(e):
            raise RunFileError(f"{name!r} could not be opened for repair ({_short(e)}).") from None
        if not readable and not force:
            raise RunFileError(
                f"{name!r} is marked as open by a program that wrote it without SWMR, so it "
                "cannot be checked first; if nothing writes it any more, repair it with "
                "lca.store.recover(path, force=True)."
            ) from None
        if _clear_open_flags(p):
            filecheck.check(p)  # now it opens: check what could not be checked before
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
