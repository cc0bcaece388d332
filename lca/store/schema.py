"""What a run file holds: names, dtypes, chunking, the size estimate, and the string codecs.

Shared by the writer, the reader and recovery, so the three agree on one layout (docs/FORMAT.md).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

if TYPE_CHECKING:
    from ..allocate import Layout


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
# Cap on the writer's in-memory per-parameter buffer (full mode, rows × P × 4 bytes). At 256 MiB
# a 1.08 M-parameter MLP kept 32 rows = 128 B per parameter, four times the tracker's own state
# (benchmarks/memory.py); at 16 MiB it keeps 3 rows (12 B per parameter). Models up to ~130 k
# parameters keep the full 32 rows.
BUFFER_BYTES = 16 << 20
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
        from ..version import __version__

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
            _PerStep(
                path, tuple(shape), dt, _fill_for(dt), _chunk_shape(shape, dt.itemsize, rows), extra
            )
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


# A run file this large is said before it is written, even when it fits (a 60,000-step full
# record of the paper's fc-mnist is ~20 GB): users rarely need every weight of every step.
LARGE_RUN_BYTES = 1 << 30


class LargeRunNotice(UserWarning):
    """A run that fits but will write a large file; the one sentence gives the figure and
    what the smaller record modes would write (the CLI prints it as a notice)."""


def size_notice(
    layout: Layout, steps: int, record: str, *, chunk_rows: int = 32, option: str = "--record"
) -> str | None:
    """The sentence saying a run of ``steps`` will write at least ``LARGE_RUN_BYTES``, with
    the sizes of the smaller record modes; None for a smaller run."""
    est = estimate_bytes(layout, steps, record, chunk_rows=chunk_rows)
    if est < LARGE_RUN_BYTES:
        return None
    smaller = [
        f"{option} {mode}: about {human_bytes(estimate_bytes(layout, steps, mode))}"
        for mode in RECORD_MODES[RECORD_MODES.index(record) + 1 :]
    ]
    return (
        f"This run will write about {human_bytes(est)} ({steps:,} steps, record={record}, "
        f"{layout.num_params:,} parameters)" + (f"; {', '.join(smaller)}." if smaller else ".")
    )


def size_refusal(
    subject: str,
    estimate: int,
    *,
    steps: int,
    record: str,
    params: int,
    cap: int | None,
    cap_name: str,
    free: int,
    where: str,
    verb: str,
    record_option: str,
) -> str | None:
    """The one sentence refusing a run of ``estimate`` bytes (``estimate_bytes``) that is over
    ``cap`` or the ``free`` bytes of its disk, or None when it fits.

    The one size check of a run, whoever starts it: the Writer (its ``max_bytes``, the disk it
    writes to; advice in CLI flags) and the app before it starts a job ($LCA_MAX_RUN_BYTES, the
    runs folder's disk; advice in form words) say it to their reader through ``subject``,
    ``cap_name``, ``where``, ``verb`` and ``record_option``.
    """
    if cap is not None and estimate > cap:
        limit = f"the {human_bytes(cap)} {cap_name}"
    elif estimate > free:
        limit = f"the {human_bytes(free)} free {where}"
    else:
        return None
    fix = (
        f"{verb} {record_option}, fewer steps, or a smaller model"
        if record != "layers"
        else f"{verb} fewer steps or a smaller model"
    )
    return (
        f"{subject} would write about {human_bytes(estimate)} ({steps} steps, "
        f"record={record}, {params:,} parameters), more than {limit}; {fix}."
    )
