"""Shared fixtures: small real runs made by the real training loop, cached per test session;
subprocesses that are always ended, whatever the test did."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from lca.config import RunConfig

# No warm job process (lca.warm) behind every AppTest of app.py: tests that want one turn it on.
os.environ["LCA_WARM_WORKER"] = "0"


@pytest.fixture(scope="session")
def run_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs-cache")


@pytest.fixture(scope="session")
def make_run(run_cache):
    """make_run(name="x.h5", folder=None, **config) -> path of a finished run file.

    Runs are made once per session per (config, name) and copied into ``folder`` if given.
    Defaults: digits, mlp with hidden (16,), 30 steps, measurement set of 300, record full.
    """
    import shutil

    from lca.train import run

    made: dict[str, Path] = {}

    def factory(name: str = "run.h5", folder: Path | None = None, **overrides) -> Path:
        values = {
            "dataset": "digits",
            "model": "mlp",
            "model_options": {"hidden": [16]},
            "steps": 30,
            "measure_size": 300,
            "eval_every": 10,
            "record": "full",
            "device": "cpu",
            **overrides,
        }
        key = json.dumps(values, sort_keys=True, default=str) + name
        if key not in made:
            path = run_cache / f"{len(made)}-{name}"
            run(RunConfig.from_dict(values), out=path)
            made[key] = path
        if folder is None:
            return made[key]
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / name
        shutil.copy(made[key], target)
        return target

    return factory


@pytest.fixture
def runs_folder(tmp_path, monkeypatch) -> Path:
    """An empty runs folder the app and lca.runs use (via LCA_RUNS_DIR)."""
    folder = tmp_path / "runs"
    folder.mkdir()
    monkeypatch.setenv("LCA_RUNS_DIR", str(folder))
    return folder


# ---------------------------------------------------------------------------------------------
# Subprocesses: every one a test starts is ended in teardown, with everything it started.

GRACE_S = 10.0  # after SIGTERM, how long a process group may take to exit before SIGKILL


def end_process_group(proc: subprocess.Popen, grace: float = GRACE_S) -> None:
    """End ``proc`` (started with ``start_new_session=True``) and every process in its group:
    SIGTERM, then SIGKILL if it has not exited after ``grace`` seconds; close its pipes."""

    def signal_group(sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):  # the group is gone already
            pass

    if proc.poll() is None:
        signal_group(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            signal_group(signal.SIGKILL)
            proc.wait()
    signal_group(signal.SIGKILL)  # anything the leader started and left in its group
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


class Processes:
    """Starts subprocesses in their own process group and ends every group on ``end_all``."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def start(self, args: list[str], **kwargs) -> subprocess.Popen:
        kwargs["start_new_session"] = True  # one group per process: ended with its children
        proc = subprocess.Popen(args, **kwargs)
        self.started.append(proc)
        return proc

    def end_all(self) -> None:
        for proc in self.started:
            end_process_group(proc)


@pytest.fixture
def processes() -> Iterator[Processes]:
    """``processes.start(args, **popen_kwargs)``: a Popen ended (with its group) at teardown."""
    procs = Processes()
    try:
        yield procs
    finally:
        procs.end_all()


@pytest.fixture(scope="module")
def module_processes() -> Iterator[Processes]:
    """As ``processes``, for module-scoped fixtures (a server shared by a module's tests)."""
    procs = Processes()
    try:
        yield procs
    finally:
        procs.end_all()


def _running_children() -> set[int]:
    """Pids of this process's children that are still running (not zombies), from /proc."""
    me, out = os.getpid(), set()
    try:
        entries = os.listdir("/proc")
    except OSError:  # no procfs (not Linux): nothing to check
        return out
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # exited meanwhile
            continue
        state, ppid = stat[stat.rindex(b")") + 2 :].split(maxsplit=2)[:2]  # after "pid (comm) "
        if int(ppid) == me and state != b"Z":
            out.add(int(entry))
    return out


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return "?"


def _end_pid(pid: int) -> None:
    """SIGTERM, then SIGKILL once ``GRACE_S`` has passed: a child no fixture ended."""
    for sig, wait in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, 0.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while pid in _running_children() and time.monotonic() < deadline:
            time.sleep(0.05)  # polls the child's state; the deadline only bounds a stuck one


# Helpers Python's multiprocessing keeps for the interpreter's lifetime (torch's mp.spawn starts
# the resource tracker): they end with pytest itself.
_INTERPRETER_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


@pytest.fixture(autouse=True, scope="module")
def _no_process_left_behind() -> Iterator[None]:
    """The safety net under ``processes``: a child a test module started and left running (a
    trainer job, a server) is ended after the module, and named in a warning. (Per module: a
    scan of /proc per test would cost the fast loop seconds.)"""
    before = _running_children()
    yield
    for pid in _running_children() - before:
        cmd = _command(pid)
        if any(helper in cmd for helper in _INTERPRETER_HELPERS):
            continue
        warnings.warn(f"a test left process {pid} running ({cmd[:120]}); ended it", stacklevel=1)
        _end_pid(pid)


@pytest.fixture(autouse=True)
def _main_module_restored() -> Iterator[None]:
    """Put back ``sys.modules['__main__']`` after each test.

    Why: Streamlit's script runner installs the page it runs as ``__main__`` (AppTest included)
    and leaves it there; a later test that spawns processes (torch.multiprocessing, gloo ranks)
    then makes every child re-run that page script as its main module, and the child dies.
    """
    import sys

    main = sys.modules.get("__main__")
    yield
    if main is not None and sys.modules.get("__main__") is not main:
        sys.modules["__main__"] = main
