"""How many bytes an object graph holds in tensors and arrays: the memory benchmark and its
test ask the same question of the tracker and the writer, so they share one answer."""

from __future__ import annotations

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
