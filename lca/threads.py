"""How many CPU threads a run uses: the cores this process may run on, shared by the app's jobs.

torch's default is one thread per core of the machine, whatever else runs there. On a 2-core
machine shared with other work that is the worst choice: the fc-mnist measurement gradient took
158 ms with 1 thread and 425–1,299 ms with 2 (issue 15), because threads that wait for a busy
core stall the whole matmul. So a run's ``threads = "auto"`` means: the cores in this process's
CPU affinity (never more than ``os.cpu_count()``), capped by an explicit ``OMP_NUM_THREADS``
(set by the user, or by the app's job launcher for each job) and by any ``capped`` block, divided
by the number of the app's training jobs now running (this one included), and at least 1.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

AUTO = "auto"
F = TypeVar("F", bound=Callable[..., Any])
_CAP: list[int] = []  # caps set by ``capped`` (innermost last): "auto" never exceeds them


@contextlib.contextmanager
def capped(threads: int) -> Iterator[None]:
    """Within the block, ``auto`` chooses at most ``threads`` (e.g. experiments that train many
    small runs in one process, where one thread is fastest)."""
    _CAP.append(max(1, int(threads)))
    try:
        yield
    finally:
        _CAP.pop()


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity where the OS has one, else cpu_count."""
    count = os.cpu_count() or 1
    try:
        count = min(count, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on macOS / Windows
        pass
    return max(1, count)


def _omp_cap() -> int | None:
    """OMP_NUM_THREADS as an int when set to one, else None."""
    try:
        value = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return value if value >= 1 else None


def app_jobs_running() -> int:
    """The app's training jobs running now, this process counted once (so at least 1)."""
    from pathlib import Path

    from . import jobs, runs

    folder = Path(os.environ.get(runs.RUNS_ENV) or "runs").expanduser()
    if not (folder / jobs.REGISTRY).is_file():  # no app has started a job here: none to share
        return 1
    try:
        others = [j for j in jobs.active(folder) if j.pid != os.getpid()]
    except (OSError, ValueError):  # an unreadable registry: nothing we know to share with
        others = []
    return 1 + len(others)


def auto_threads(jobs_running: int | None = None) -> int:
    """The ``auto`` thread count (see the module docstring)."""
    cores = available_cores()
    for cap in (_omp_cap(), *_CAP):
        if cap is not None:
            cores = min(cores, cap)
    running = app_jobs_running() if jobs_running is None else max(1, int(jobs_running))
    return max(1, cores // running)


def resolve(threads: int | str | None) -> int:
    """A run's thread count: an explicit positive int as given, ``auto`` (or None) chosen."""
    if threads is None or threads == AUTO:
        return auto_threads()
    return int(threads)


def using_config_threads(fn: F) -> F:
    """Decorate ``fn(config, ...)`` to run with ``config.threads`` torch threads, restoring the
    previous count after (so a notebook or test that trains in-process keeps its own)."""

    @functools.wraps(fn)
    def wrapper(config, *args, **kwargs):
        import torch

        old = torch.get_num_threads()
        torch.set_num_threads(resolve(getattr(config, "threads", AUTO)))
        try:
            return fn(config, *args, **kwargs)
        finally:
            torch.set_num_threads(old)

    return wrapper  # type: ignore[return-value]
