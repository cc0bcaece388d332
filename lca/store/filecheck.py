"""The check every run file passes before this process reads any of it.

A run file comes from anyone who can upload to a class server, so before the Reader (or
``recover``) opens it, its structure is checked in a short-lived process of its own
(``filecheck_child.py``, capped in memory and CPU time, killed after ``CHECK_WALL_SECONDS``):

* it is read only from itself: no external raw storage, external or soft or user-defined links,
  virtual datasets, filters other than HDF5's built-in ones, references, variable-length data,
  or special file drivers (a file split across several files);
* it cannot cost more than it is worth: depth, objects, attributes, string and chunk sizes are
  bounded by limits derived from the schema, and every dataset declares no more bytes than the
  file stores for it (a dataset resized to 2e8 rows with nothing written is refused, not read
  as 1.6 GB of fill values), and per-step datasets agree with ``/steps/loss`` on T.

The verdict is cached per file version (device, inode, size, modification time), so a run is
checked once, not on every page view; a live run that grows keeps its structure verdict (SWMR
writers cannot add objects) and the Reader re-checks its declared sizes in-process on every
refresh (``declared_too_large``). Limits are documented in docs/FORMAT.md ("Limits").
"""

from __future__ import annotations

import json
import math
import os
import signal
import stat
import subprocess
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .schema import RunFileError, human_bytes

CHILD = Path(__file__).with_name("filecheck_child.py")

# -- limits (docs/FORMAT.md, "Limits") --------------------------------------------------------
MAX_DEPTH = 8  # the schema needs 4 (/series/techniques/<n>/<leaf>); room for event tables
MAX_OBJECTS = 100_000  # ~8 objects per parameter tensor: 10,000+ tensors fit
MAX_ATTRS_PER_OBJECT = 256  # the root has ~20
MAX_ATTRS = 100_000  # ~1 per tensor group + 4 per unit group
MAX_ATTR_BYTES = 4 << 20  # one attribute (the config and layout JSON of a big model)
MAX_ALL_ATTR_BYTES = 16 << 20
MAX_STRING_BYTES = 4 << 20  # one fixed-length string (the layout JSON of a very large model)
MAX_NAME_BYTES = 1024  # one link name (a parameter name)
MAX_CHUNK_BYTES = 16 << 20  # the writer's chunks are ≤ 1 MiB
COMPRESSION_FACTOR = 32  # declared bytes per stored byte of a compressed dataset
DATASET_SLACK_BYTES = 64 << 10  # declared but unwritten bytes allowed per dataset (+ 2 chunk rows)
DECLARED_FACTOR = 32  # all datasets together declare at most 32 × the file's size ...
DECLARED_SLACK = 64 << 20  # ... plus 64 MiB
CHECK_MEMORY_BYTES = 1 << 30  # address space of the checking process
CHECK_CPU_SECONDS = 30
CHECK_WALL_SECONDS = 120  # killed after this, whatever it is waiting for

LIMITS: dict[str, int] = {
    "max_depth": MAX_DEPTH,
    "max_objects": MAX_OBJECTS,
    "max_attrs_per_object": MAX_ATTRS_PER_OBJECT,
    "max_attrs": MAX_ATTRS,
    "max_attr_bytes": MAX_ATTR_BYTES,
    "max_all_attr_bytes": MAX_ALL_ATTR_BYTES,
    "max_string_bytes": MAX_STRING_BYTES,
    "max_name_bytes": MAX_NAME_BYTES,
    "max_chunk_bytes": MAX_CHUNK_BYTES,
    "compression_factor": COMPRESSION_FACTOR,
    "dataset_slack_bytes": DATASET_SLACK_BYTES,
    "declared_factor": DECLARED_FACTOR,
    "declared_slack": DECLARED_SLACK,
    "memory_bytes": CHECK_MEMORY_BYTES,
    "cpu_seconds": CHECK_CPU_SECONDS,
}

_AGAIN = "record the run again with LCA Lab"
_SELF = "export it without external links (h5repack, or copy the data into the file)"


def _sentence(name: str, v: dict[str, Any]) -> str | None:
    """One sentence for a refusal verdict (None when the file may be opened)."""
    code = v.get("refuse")
    where = repr(str(v.get("path", "")))
    n = repr(name)
    if code is None or code == "cannot-open":
        return None  # opening reports its own sentence (cut short, held by a writer, ...)
    text = {
        "not-regular": f"{n} is not a regular file (a pipe, device or folder), so LCA Lab "
        "does not read it; choose a .h5 run file",
        "driver": f"{n} is split across several files (a special HDF5 file driver), which LCA "
        f"Lab never reads; {_SELF}",
        "external-storage": f"{n} keeps the data of {where} in other files (external storage), "
        f"which LCA Lab never reads; {_AGAIN} or {_SELF}",
        "external-link": f"{n} links to another file ({where} is an external link), which LCA "
        f"Lab never follows; {_AGAIN} or {_SELF}",
        "virtual": f"{n} takes the data of {where} from other files (a virtual dataset), which "
        f"LCA Lab never reads; {_AGAIN} or {_SELF}",
        "hard-link": f"{n} links one object from two places ({where} is a second link), which "
        f"LCA Lab run files never do; {_AGAIN}",
        "soft-link": f"{n} has a soft link ({where}), which LCA Lab run files never contain; "
        f"{_AGAIN}",
        "ud-link": f"{n} has a link of a kind LCA Lab never follows ({where}); {_AGAIN}",
        "filter": f"{n} needs a decompression filter that is not built into HDF5 (filter "
        f"{v.get('filter')} on {where}); save it without that filter (h5repack -f NONE)",
        "references": f"{n} holds object or region references ({where}), which LCA Lab run "
        f"files never contain; {_AGAIN}",
        "vlen": f"{n} holds variable-length data ({where}), which LCA Lab run files never "
        f"contain; {_AGAIN}",
        "dtype": f"{n} holds a data type LCA Lab run files never contain ({where}); {_AGAIN}",
        "named-type": f"{n} holds an object LCA Lab run files never contain ({where}); {_AGAIN}",
        "string": f"{n} has a string of {human_bytes(v.get('bytes', 0))} ({where}), more than "
        f"the {human_bytes(MAX_STRING_BYTES)} a run file needs; {_AGAIN}",
        "name": f"{n} has a name of {v.get('bytes')} bytes, more than the {MAX_NAME_BYTES} a run "
        f"file needs; {_AGAIN}",
        "depth": f"{n} nests groups deeper than {MAX_DEPTH} levels (an LCA run needs 4), so it "
        f"is not an LCA run file; {_AGAIN}",
        "objects": f"{n} has more than {MAX_OBJECTS:,} objects, far more than an LCA run needs; "
        f"{_AGAIN}",
        "attrs-per-object": f"{n} has {v.get('count', 0):,} attributes on {where}, more than "
        f"the {MAX_ATTRS_PER_OBJECT} an LCA run needs; {_AGAIN}",
        "attrs-total": f"{n} has more than {MAX_ATTRS:,} attributes, far more than an LCA run "
        f"needs; {_AGAIN}",
        "attr-size": f"{n} has an attribute of {human_bytes(v.get('bytes', 0))} on {where}, "
        f"more than the {human_bytes(MAX_ATTR_BYTES)} an LCA run needs; {_AGAIN}",
        "attr-bytes-total": f"{n} has more than {human_bytes(MAX_ALL_ATTR_BYTES)} of "
        f"attributes, far more than an LCA run needs; {_AGAIN}",
        "chunk": f"{n} stores {where} in chunks of {human_bytes(v.get('bytes', 0))}, more than "
        f"the {human_bytes(MAX_CHUNK_BYTES)} LCA Lab reads at once; {_AGAIN}",
        "declared": f"{n} declares {v.get('rows', 0):,} rows "
        f"({human_bytes(v.get('declared', 0))}) for {where} but stores only "
        f"{human_bytes(v.get('stored', 0))} of them, so it is damaged or crafted; {_AGAIN}",
        "declared-total": f"{n} declares {human_bytes(v.get('declared', 0))} of data, far more "
        f"than its own size, so it is damaged or crafted; {_AGAIN}",
        "rows": f"{n} has {v.get('rows', 0):,} rows in {where} but only {v.get('steps', 0):,} "
        f"steps in /steps/loss, so it is damaged or crafted; {_AGAIN}",
        "memory": f"{n} needs more than {human_bytes(CHECK_MEMORY_BYTES)} just to be checked, "
        f"so it is damaged or crafted; {_AGAIN}",
        "changed": f"{n} was replaced while it was being checked; open it again",
        "timeout": f"{n} could not be checked within {CHECK_WALL_SECONDS} s, so it is refused; "
        f"{_AGAIN}",
        "crashed": f"{n} made the HDF5 library fail while it was being checked, so it is "
        f"damaged or crafted; {_AGAIN}",
        "broken": f"{n} has a damaged HDF5 structure that could not be checked; {_AGAIN}",
    }.get(str(code), f"{n} could not be checked ({code}); {_AGAIN}")
    return text + "."


# -- the cache ----------------------------------------------------------------------------------
_CACHE_SIZE = 4096
_cache: OrderedDict[tuple[int, int, int, int], dict[str, Any]] = OrderedDict()
_live: dict[tuple[int, int], int] = {}  # (dev, ino) of a checked "running" file -> its size
_lock = threading.Lock()
_inflight: dict[tuple[int, int, int, int], threading.Lock] = {}


def _key(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _same_file(key: tuple[int, int, int, int], verdict: dict[str, Any]) -> bool:
    """Whether the child checked the file (device, inode) the verdict is to be cached for."""
    inode = verdict.get("inode")
    return not verdict.get("ok") or (isinstance(inode, list) and tuple(inode) == key[:2])


def _remember(key: tuple[int, int, int, int], verdict: dict[str, Any]) -> None:
    with _lock:
        _cache[key] = verdict
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
        inode = key[:2]
        if verdict.get("ok") and verdict.get("status") == "running":
            _live[inode] = key[2]
        else:
            _live.pop(inode, None)


def forget() -> None:
    """Drop every cached verdict (tests; a server never needs it: new versions get new keys)."""
    with _lock:
        _cache.clear()
        _live.clear()


def _run_child(paths: list[Path]) -> dict[str, dict[str, Any]]:
    """Check ``paths`` in one process of their own; path -> verdict for every file the child
    finished (a child killed half-way keeps the verdicts it printed)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HDF5_PLUGIN_PRELOAD": "::",  # never load a filter plugin from disk
    }
    if "HDF5_USE_FILE_LOCKING" in os.environ:
        env["HDF5_USE_FILE_LOCKING"] = os.environ["HDF5_USE_FILE_LOCKING"]
    cmd = [sys.executable, "-I", "-B", str(CHILD), json.dumps(LIMITS), *map(str, paths)]
    timed_out = False
    try:
        done = subprocess.run(  # noqa: S603 - fixed command, the paths are arguments
            cmd,
            capture_output=True,
            text=True,
            timeout=CHECK_WALL_SECONDS,
            env=env,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        out, err, code = done.stdout, done.stderr, done.returncode
    except subprocess.TimeoutExpired as e:  # killed: keep what it printed
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err, code, timed_out = "", None, True
    verdicts: dict[str, dict[str, Any]] = {}
    for line in out.splitlines():
        try:
            v = json.loads(line)
        except ValueError:
            continue
        if isinstance(v, dict) and isinstance(v.get("file"), str):
            verdicts[v.pop("file")] = v
    pending = [str(p) for p in paths if str(p) not in verdicts]
    if pending:  # the file being checked when the child died: that one is to blame
        if timed_out or code in (-signal.SIGKILL, -signal.SIGXCPU):
            verdicts[pending[0]] = {"refuse": "timeout"}
        elif "MemoryError" in err:
            verdicts[pending[0]] = {"refuse": "memory"}
        else:
            verdicts[pending[0]] = {"refuse": "crashed"}
    return verdicts


def _spawn(path: Path) -> dict[str, Any]:
    """Check one file in a process of its own; its verdict."""
    return _run_child([path]).get(str(path), {"refuse": "crashed"})


def prefetch(paths: Iterable[str | os.PathLike[str]]) -> None:
    """Check every not yet checked file of ``paths`` in one child process (a listing of the runs
    folder: one Python start for all of them instead of one per file). Files the child could
    not finish are checked one by one when they are opened."""
    todo: list[tuple[Path, tuple[int, int, int, int]]] = []
    for p in map(Path, paths):
        try:
            st = os.stat(p)
        except OSError:
            continue
        key = _key(st)
        with _lock:
            known = key in _cache or _live.get(key[:2], st.st_size + 1) <= st.st_size
        if stat.S_ISREG(st.st_mode) and not known:
            todo.append((p, key))
    if len(todo) < 2:
        return  # one file: checked when it is opened
    found = _run_child([p for p, _ in todo])
    for p, key in todo:
        v = found.get(str(p))
        if (
            v is not None
            and v.get("refuse") not in ("timeout", "crashed", "memory", "changed")
            and _same_file(key, v)
        ):
            _remember(key, v)  # a file blamed for a dead batch is checked again on its own


def verdict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The (cached) verdict on ``path`` as it is now: ``{"ok": True, ...}`` or
    ``{"refuse": code, ...}``. Never reads the file in this process."""
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError:
        return {"refuse": "cannot-open"}  # opening reports it (missing, permission)
    if not stat.S_ISREG(st.st_mode):
        return {"refuse": "not-regular"}
    key = _key(st)
    with _lock:
        cached = _cache.get(key)
        live_size = _live.get(key[:2])
        if cached is None and live_size is not None and st.st_size >= live_size:
            # A live run that grew: SWMR writers cannot add objects, so its structure stands;
            # the Reader re-checks the declared sizes in-process (declared_too_large).
            cached = {"ok": True, "status": "running", "grown": True, "inode": list(key[:2])}
        if cached is not None:
            return cached
        gate = _inflight.setdefault(key, threading.Lock())
    with gate:  # one check per file version; other files and readers go on meanwhile
        with _lock:
            cached = _cache.get(key)
        if cached is None:
            cached = _spawn(p)
            if _same_file(key, cached):
                _remember(key, cached)
            elif cached.get("ok"):
                cached = {"refuse": "changed"}  # the child saw another file than we stat'ed
    with _lock:
        _inflight.pop(key, None)
    return cached


def check(path: str | os.PathLike[str], name: str | None = None) -> tuple[int, int] | None:
    """Raise RunFileError (one sentence naming ``name`` or the file, and the fix) unless the file
    passed the structure check; nothing of it is read in this process. Returns the (device,
    inode) that was checked, so the caller can make sure it opens that very file."""
    p = Path(path)
    v = verdict(p)
    sentence = _sentence(name or p.name, v)
    if sentence is not None:
        raise RunFileError(sentence)
    inode = v.get("inode")
    return tuple(inode) if isinstance(inode, list) else None


def declared_too_large(datasets: Iterable[Any], file_size: int, name: str) -> str | None:
    """In-process re-check for a live file that grew: the sentence if its datasets together
    declare more than the limit allows for its current size, else None (metadata only)."""
    declared = 0
    for ds in datasets:
        declared += math.prod(ds.shape or ()) * ds.dtype.itemsize
    if declared > DECLARED_FACTOR * file_size + DECLARED_SLACK:
        return _sentence(name, {"refuse": "declared-total", "declared": declared})
    return None
