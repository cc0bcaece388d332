"""What tracking costs in memory: how many bytes an object graph holds in tensors and arrays
(the memory benchmark and its test ask the same question of the tracker and the writer, so they
share one answer), and giving the memory a tracked step freed back to the operating system."""

from __future__ import annotations

import ctypes
import sys

import numpy as np
import torch


def held_tensor_bytes(*owners: object, skip: tuple[str, ...] = ()) -> int:
    """Bytes of every torch tensor / numpy array reachable from ``owners`` through attributes,
    dicts, lists and tuples (each storage counted once); attributes named in ``skip`` are left
    out (e.g. the measurement set, which belongs to the caller)."""
    seen: set[int] = set()
    storages: dict[int, int] = {}

    def walk(obj: object, depth: int) -> None:
        if id(obj) in seen or depth > 6:
            return
        seen.add(id(obj))
        if torch.is_tensor(obj):
            s = obj.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
        elif isinstance(obj, np.ndarray):
            base = obj
            while isinstance(base.base, np.ndarray):
                base = base.base
            storages[base.__array_interface__["data"][0]] = base.nbytes
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v, depth + 1)
        elif isinstance(obj, list | tuple):
            for v in obj:
                walk(v, depth + 1)
        elif hasattr(obj, "__dict__") and not isinstance(obj, torch.nn.Module | type):
            for k, v in vars(obj).items():
                if k not in skip:
                    walk(v, depth + 1)

    for o in owners:
        walk(o, 0)
    return sum(storages.values())


# ---------------------------------------------------------------------------------------------
# Giving freed memory back to the operating system.

# A tracked step of a model this big frees several parameter-sized buffers (the step's points
# and gradients); below it, what glibc keeps is a few MiB at most and not worth a call.
RELEASE_MIN_BYTES = 1 << 20

_TRIM: object = None  # glibc's malloc_trim once looked up; False where there is none


def _malloc_trim():
    global _TRIM
    if _TRIM is None:
        _TRIM = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None)
                trim = libc.malloc_trim  # glibc only (musl has no such function)
                trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
                _TRIM = trim
            except (OSError, AttributeError):
                pass
    return _TRIM or None


def release_free_memory() -> bool:
    """Hand the pages the C allocator holds free back to the operating system (glibc's
    ``malloc_trim(0)``); False where there is no such call (macOS, Windows, musl), which then
    does nothing.

    Why: PyTorch's CPU tensors come from malloc. glibc serves a large block from its own mmap
    only while the block is above a threshold that it raises to the size of every large block
    freed (up to 32 MiB), so from the second step on a tracked step's parameter-sized buffers
    (the points on the segment, their gradients, the weighted sum) are carved out of the heap,
    and freeing them leaves them resident: the process keeps the step's peak after the step
    (``benchmarks/memory.py``). Trimming returns those pages, so other processes (the other jobs
    of a class server) can use them; the next step's buffers fault fresh pages in again, which
    the benchmark measures as part of a step's time. Values are untouched: only free memory is
    released.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
