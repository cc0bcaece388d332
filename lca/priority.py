"""The app server gives way to training: its page runs run at a lower CPU priority, jobs and the
event loop not.

Why: on a class server the teacher's training run and 30 students' page views share a few cores.
A page that takes 0.1 s longer is not noticed; a training run at half speed is. Linux schedules
by weight (nice 0: 1024, nice 10: 110), so a server thread at nice 10 gets the CPU the
training run leaves, and all of it when nothing trains.

How (Linux; elsewhere nothing changes):

* On Linux the nice value belongs to each thread, and a new thread or child process starts with
  the value of the thread that made it. Streamlit makes a new thread for every script run and
  every fragment rerun, from its main thread; each lowers itself as it starts
  (``lower_page_run``, called by app.py and by the live fragments). The main thread, Streamlit's
  event loop, is not lowered: it only serves the app's static files and sends the messages the
  page runs made (a few % of the server's CPU), and a browser opening the app should not wait
  for them behind the training run. (In ``benchmarks/classroom.py`` the chromium tabs' first
  loads stayed at 17-38 s either way: there the tabs' own CPU on the same 2 cores is what they
  wait for.)
* A process cannot raise its own priority back without privileges, so a job started from a
  lowered thread would train at the lowered priority for good. Before lowering anything,
  ``lower_page_run`` starts one *spawner* thread at the server's original priority, and
  ``spawn`` makes the job and warm-worker processes from that thread (lca.jobs, lca.warm).
  Without ``lower_page_run`` (the CLI, tests, a single script) ``spawn`` just calls.
* ``$LCA_SERVER_NICE`` sets by how much (default 10; 0 turns it off).

No Streamlit here: the app decides when it is a real server.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

ENV_NICE = "LCA_SERVER_NICE"
DEFAULT_NICE = 10
T = TypeVar("T")

_LOCK = threading.Lock()
_SPAWNER: _Spawner | None = None
_LOWERED_BY = 0  # how much lower_page_run lowers page runs (0: not done)


def supported() -> bool:
    """Whether nice values are per thread here (Linux), which all of this relies on."""
    return sys.platform.startswith("linux")


def server_nice(environ: dict[str, str] | None = None) -> int:
    """How much lower the server's page threads run ($LCA_SERVER_NICE, 0-19, default 10; a
    value that is not a whole number means the default)."""
    value = (os.environ if environ is None else environ).get(ENV_NICE, "").strip()
    try:
        n = int(value) if value else DEFAULT_NICE
    except ValueError:
        n = DEFAULT_NICE
    return min(19, max(0, n))


def thread_nice(native_id: int | None = None) -> int:
    """The nice value of a thread (the calling one by default), by its native id."""
    return os.getpriority(os.PRIO_PROCESS, native_id or threading.get_native_id())


class _Spawner(threading.Thread):
    """A thread kept at the original priority that runs the calls handed to it (process starts),
    so what it starts inherits that priority."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="lca-spawner")
        self.calls: queue.SimpleQueue[tuple[Callable[[], Any], Future]] = queue.SimpleQueue()

    def run(self) -> None:
        while True:
            call, future = self.calls.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as e:  # noqa: BLE001 - handed back to the caller
                future.set_exception(e)


def lower_page_run(by: int | None = None) -> int:
    """Lower the calling thread (a page run or a fragment rerun) below the main thread's
    priority by the amount the first call set (``by``, default ``server_nice()``); the first
    time, before that, start the spawner at the server's original priority. Returns by how
    much page runs are lowered (0 when turned off or not on Linux). The main thread is never
    lowered; a thread already as low is left alone, so calling it again costs two system
    calls."""
    global _SPAWNER, _LOWERED_BY
    with _LOCK:
        if not _LOWERED_BY:  # the first page run: the amount is set once per process
            by = server_nice() if by is None else min(19, max(0, by))
            if by == 0 or not supported():
                return 0
            spawner = _Spawner()
            spawner.start()  # at this thread's (the server's) priority, before it is lowered
            _SPAWNER = spawner
            _LOWERED_BY = by
    target = min(19, thread_nice(threading.main_thread().native_id) + _LOWERED_BY)
    if thread_nice() < target:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), target)
    return _LOWERED_BY


def lowered() -> int:
    """By how much ``lower_page_run`` lowers page runs (0: it was not called, or is off)."""
    return _LOWERED_BY


def spawn(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``call(*args, **kwargs)`` on the spawner thread when the server lowered its priority (so
    a process it starts trains at the original priority), else here. Exceptions are raised
    here as they are."""
    spawner = _SPAWNER
    if spawner is None or threading.current_thread() is spawner:
        return call(*args, **kwargs)
    future: Future = Future()
    spawner.calls.put((lambda: call(*args, **kwargs), future))
    return future.result()
