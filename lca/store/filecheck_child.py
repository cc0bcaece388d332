"""The structure check of run files, run as a short-lived process of its own.

``lca.store.filecheck`` starts ``python -I filecheck_child.py LIMITS_JSON PATH...``; it
caps its own memory and CPU time *before* it touches the file, imports only h5py and numpy,
walks the file's links and object headers with h5py's low-level API (it never follows a soft or
external link, never opens a dataset's data except a few small schema datasets), and prints one
JSON line per file: ``{"ok": true, ...}`` or ``{"refuse": CODE, ...details}``. The parent turns that
into one sentence. Whatever a hostile file does to this process (hang, crash, eat memory) costs
the parent one killed child, never a server thread or HDF5's process-wide lock.

It must not import ``lca`` (run with ``-I``, nothing but the standard library, h5py and numpy
is on its path), so it takes its limits from the command line.
"""

from __future__ import annotations

import json
import math
import os
import resource
import stat
import sys


class Refuse(Exception):  # noqa: N818 - a verdict, not an error
    """A verdict: the file breaks a rule (``code``), with details for the parent's sentence."""

    def __init__(self, code: str, **detail: object) -> None:
        super().__init__(code)
        self.code, self.detail = code, detail


def _cap(memory: int, cpu: int) -> None:
    """Bound this process before the file is opened: address space, CPU seconds, no writes."""
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def _path(parts: list[str]) -> str:
    text = "/" + "/".join(parts)
    return text if len(text) <= 80 else text[:77] + "..."


class Walker:
    """Breadth-first walk over hard links only, with every limit checked before the work."""

    def __init__(self, fid, limits: dict, file_size: int) -> None:
        import h5py  # noqa: F401 - imported after the caps

        self.fid, self.lim, self.size = fid, limits, file_size
        self.objects = 0
        self.attrs = 0
        self.attr_bytes = 0
        self.declared = 0
        self.per_step: list[tuple[str, int, int]] = []  # (path, rows, chunk rows)
        self.loss_rows: int | None = None
        self.seen: set[int] = set()

    # -- types --------------------------------------------------------------------------------
    def _check_type(self, tid, where: str) -> None:
        from h5py import h5t

        cls = tid.get_class()
        if cls == h5t.REFERENCE:
            raise Refuse("references", path=where)
        if cls == h5t.VLEN or (cls == h5t.STRING and tid.is_variable_str()):
            raise Refuse("vlen", path=where)
        if cls == h5t.STRING and tid.get_size() > self.lim["max_string_bytes"]:
            raise Refuse("string", path=where, bytes=tid.get_size())
        if cls == h5t.COMPOUND:
            for i in range(tid.get_nmembers()):
                self._check_type(tid.get_member_type(i), where)
        elif cls == h5t.ARRAY:
            self._check_type(tid.get_super(), where)
        elif cls not in (h5t.INTEGER, h5t.FLOAT, h5t.STRING, h5t.ENUM, h5t.BITFIELD):
            raise Refuse("dtype", path=where)

    # -- attributes ---------------------------------------------------------------------------
    def _check_attrs(self, obj, n: int, where: str) -> None:
        from h5py import h5a

        if n > self.lim["max_attrs_per_object"]:
            raise Refuse("attrs-per-object", path=where, count=n)
        self.attrs += n
        if self.attrs > self.lim["max_attrs"]:
            raise Refuse("attrs-total", count=self.attrs)
        for i in range(n):
            a = h5a.open(obj, index=i)
            self._check_type(a.get_type(), where)
            size = max(a.get_storage_size(), math.prod(a.shape or ()) * a.get_type().get_size())
            if size > self.lim["max_attr_bytes"]:
                raise Refuse("attr-size", path=where, bytes=size)
            self.attr_bytes += size
            if self.attr_bytes > self.lim["max_all_attr_bytes"]:
                raise Refuse("attr-bytes-total", bytes=self.attr_bytes)

    # -- datasets -----------------------------------------------------------------------------
    def _check_dataset(self, ds, parts: list[str]) -> None:
        from h5py import h5d, h5z

        where = _path(parts)
        dcpl = ds.get_create_plist()
        if dcpl.get_external_count() > 0:
            raise Refuse("external-storage", path=where)
        layout = dcpl.get_layout()
        if layout == h5d.VIRTUAL:
            raise Refuse("virtual", path=where)
        compressed = False
        allowed = {
            h5z.FILTER_DEFLATE,
            h5z.FILTER_SHUFFLE,
            h5z.FILTER_FLETCHER32,
            h5z.FILTER_SZIP,
            h5z.FILTER_LZF,
        }
        for i in range(dcpl.get_nfilters()):
            fid = dcpl.get_filter(i)[0]
            if fid not in allowed:
                raise Refuse("filter", path=where, filter=int(fid))
            compressed |= fid in (h5z.FILTER_DEFLATE, h5z.FILTER_SZIP, h5z.FILTER_LZF)
        tid = ds.get_type()
        self._check_type(tid, where)
        itemsize = tid.get_size()
        shape = tuple(ds.shape or ())
        declared = math.prod(shape) * itemsize
        stored = ds.get_storage_size()
        slack = self.lim["dataset_slack_bytes"]
        if layout == h5d.CHUNKED:
            chunks = dcpl.get_chunk()
            chunk_bytes = math.prod(chunks) * itemsize
            if chunk_bytes > self.lim["max_chunk_bytes"]:
                raise Refuse("chunk", path=where, bytes=chunk_bytes)
            # A write batch the writer has declared but not yet written: at most two chunk rows.
            row_bytes = math.prod(shape[1:]) * itemsize if shape else itemsize
            slack += 2 * chunks[0] * row_bytes
        factor = self.lim["compression_factor"] if compressed else 1
        if declared > stored * factor + slack:
            raise Refuse(
                "declared",
                path=where,
                declared=declared,
                stored=stored,
                rows=shape[0] if shape else 1,
            )
        self.declared += declared
        if self.declared > self.lim["declared_factor"] * self.size + self.lim["declared_slack"]:
            raise Refuse("declared-total", declared=self.declared)
        grows = layout == h5d.CHUNKED and len(shape) >= 1
        per_step = parts[0] in ("steps", "series") or (
            parts[0] in ("layers", "units", "params") and parts[-1] == "lca"
        )
        if parts == ["steps", "loss"] and len(shape) == 1:
            self.loss_rows = shape[0]
        elif grows and per_step:
            self.per_step.append((where, shape[0], dcpl.get_chunk()[0]))

    # -- the walk -----------------------------------------------------------------------------
    def walk(self) -> None:
        from h5py import h5l, h5o

        root = h5o.open(self.fid, b"/")
        info = h5o.get_info(root)
        self.seen.add(info.addr)
        self._check_attrs(root, info.num_attrs, "/")
        # Groups wait as paths, not open handles: 10,000 open groups would cost ~150 MB.
        queue: list[tuple[bytes, list[str]]] = [(b"/", [])]
        max_name = self.lim["max_name_bytes"]
        while queue:
            gpath, parts = queue.pop(0)
            group = h5o.open(self.fid, gpath)
            depth = len(parts) + 1
            n = group.get_num_objs()
            if self.objects + n > self.lim["max_objects"]:
                raise Refuse("objects", count=self.objects + n)
            links: list[tuple[bytes, int]] = []

            def collect(name: bytes, linfo, links=links) -> None:
                links.append((name, linfo.type))

            group.links.iterate(collect, info=True)
            for name, kind in links:
                text = name.decode("utf-8", "replace")
                where = _path([*parts, text])
                if len(name) > max_name:
                    raise Refuse("name", bytes=len(name))
                if kind == h5l.TYPE_EXTERNAL:
                    raise Refuse("external-link", path=where)
                if kind == h5l.TYPE_SOFT:
                    raise Refuse("soft-link", path=where)
                if kind != h5l.TYPE_HARD:
                    raise Refuse("ud-link", path=where)
                if depth > self.lim["max_depth"]:
                    raise Refuse("depth", depth=depth)
                self.objects += 1
                obj = h5o.open(group, name)
                oinfo = h5o.get_info(obj)
                if oinfo.addr in self.seen:  # a second link to one object (maybe a cycle)
                    raise Refuse("hard-link", path=where)
                self.seen.add(oinfo.addr)
                self._check_attrs(obj, oinfo.num_attrs, where)
                if oinfo.type == h5o.TYPE_GROUP:
                    queue.append((gpath.rstrip(b"/") + b"/" + name, [*parts, text]))
                elif oinfo.type == h5o.TYPE_DATASET:
                    self._check_dataset(obj, [*parts, text])
                else:
                    raise Refuse("named-type", path=where)

    def check_rows(self) -> None:
        """Per-step datasets agree with /steps/loss (T+1 rows) within one unwritten batch."""
        if self.loss_rows is None:
            return
        t = self.loss_rows - 1
        for where, rows, chunk_rows in self.per_step:
            if rows > t + 2 * chunk_rows:
                raise Refuse("rows", path=where, rows=rows, steps=t)


def _open(path: str):
    """Open read-only with the default (single file) driver; SWMR only for a file a writer
    holds, and never SWMR for a cut-off file (a read past its end would block)."""
    from h5py import h5f

    try:
        return h5f.open(path.encode(), h5f.ACC_RDONLY)
    except OSError as e:
        text = str(e)
        if "truncated" in text:
            raise Refuse("cannot-open") from None
        try:
            return h5f.open(path.encode(), h5f.ACC_RDONLY | h5f.ACC_SWMR_READ)
        except OSError:
            raise Refuse("cannot-open") from None


def _dry_read(fid) -> str:
    """Read what the Reader reads first (small schema datasets, root attributes), here, so a
    parsing problem in them shows here; returns the status."""
    import h5py

    f = h5py.File(fid)
    for key in f.attrs:
        f.attrs[key]  # noqa: B018 - parse every root attribute's value
    for p in ("layers/names", "layers/shapes", "layers/ndim", "units/names", "units/keys"):
        if p in f and isinstance(f[p], h5py.Dataset):
            f[p][()]
    status = ""
    if "status" in f and isinstance(f["status"], h5py.Dataset) and f["status"].shape == ():
        raw = f["status"][()]
        status = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    if "steps/loss" in f and isinstance(f["steps/loss"], h5py.Dataset):
        loss = f["steps/loss"]
        if loss.ndim == 1 and loss.shape[0]:
            loss[max(0, loss.shape[0] - 65536) :]
    return status.rstrip("\x00")


def check(path: str, limits: dict) -> dict:
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise Refuse("not-regular")
    from h5py import h5fd

    fid = _open(path)
    if fid.get_access_plist().get_driver() != h5fd.SEC2:
        raise Refuse("driver")
    opened = os.fstat(fid.get_vfd_handle())
    if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
        raise Refuse("changed")  # replaced between stat and open: the parent checks again
    walker = Walker(fid, limits, st.st_size)
    walker.walk()
    walker.check_rows()
    status = _dry_read(fid)
    return {
        "ok": True,
        "objects": walker.objects,
        "attrs": walker.attrs,
        "status": status,
        "inode": [opened.st_dev, opened.st_ino],
    }


def _peak_rss_kb() -> int:
    """This process's peak resident memory since exec (VmHWM; ru_maxrss would include the
    parent's size at fork)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _verdict(path: str, limits: dict) -> dict:
    try:
        return check(path, limits)
    except Refuse as r:
        return {"refuse": r.code, **r.detail}
    except MemoryError:
        return {"refuse": "memory"}
    except (OSError, KeyError, ValueError, RuntimeError, TypeError):  # RecursionError too
        return {"refuse": "broken"}


def main(argv: list[str]) -> int:
    """``filecheck_child.py LIMITS_JSON PATH...``: one JSON line per path, flushed as soon as
    it is known (a batch killed half-way keeps the verdicts it printed)."""
    limits, paths = json.loads(argv[1]), argv[2:]
    _cap(int(limits["memory_bytes"]), int(limits["cpu_seconds"]))
    for path in paths:
        verdict = _verdict(path, limits)
        verdict["file"] = path
        verdict["peak_rss_kb"] = _peak_rss_kb()
        sys.stdout.write(json.dumps(verdict) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
