"""Training jobs: each run trains in its own subprocess (``python -m lca train``).

Why a subprocess and not a thread of the app: training is CPU-heavy Python that would stall the
Streamlit server for every user, a crash or a NaN must not take the app down, and Stop must work
like Ctrl-C in a terminal (SIGINT: the run ends with status "interrupted" and keeps every step).
A trainer that ignores SIGINT (started by a server that was started in the background, or under
``nohup``-like wrappers) still stops: Stop escalates to SIGTERM (handled like Ctrl-C) and then
SIGKILL (the file is then recovered, so it too ends "interrupted"), a grace period apart.
The run file is the only channel: the job writes it in SWMR mode, pages read it while it grows.

The jobs of a runs folder are listed in ``<runs>/.jobs.json`` (a small registry guarded by a
file lock), so they survive Streamlit reruns, new browser sessions and a restarted server. A cap
on concurrent jobs (``$LCA_MAX_JOBS``, default 2) keeps a class sharing one server usable.

A job may run on a pre-started warm worker (``prewarm``, lca/warm.py) instead of a new
interpreter: same command, same registry entry, same Stop; only the first step comes sooner.

No Streamlit here: the app, notebooks and tests share these rules.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import data

from . import models, priority, runs, warm
from .allocate import Layout, model_layout, tracker_declarations
from .config import RunConfig
from .store import estimate_bytes as store_estimate

try:  # POSIX: a real lock shared by every process using the runs folder
    import fcntl
except ImportError:  # pragma: no cover - Windows: the thread lock alone
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_MAX_JOBS",
    "MAX_JOBS_ENV",
    "MAX_RUN_BYTES_ENV",
    "Job",
    "JobError",
    "JobLimitError",
    "active",
    "check_size",
    "compatible_models",
    "dataset_shape",
    "demo_config",
    "estimate_bytes",
    "find",
    "forget",
    "is_live",
    "jobs",
    "large_run_notice",
    "last_error",
    "max_jobs",
    "max_run_bytes",
    "poll",
    "prewarm",
    "run_layout",
    "start",
    "stop",
    "stop_grace",
    "wait",
]

MAX_JOBS_ENV = "LCA_MAX_JOBS"
MAX_RUN_BYTES_ENV = "LCA_MAX_RUN_BYTES"
DEFAULT_MAX_RUN_BYTES = 4 << 30  # one app run may write at most this much (4 GiB)
THREADS_ENV = "LCA_JOB_THREADS"
DEFAULT_MAX_JOBS = 2
REGISTRY = ".jobs.json"
LOCK = ".jobs.lock"
JOBS_DIR = ".jobs"  # per-job config, stdout and stderr files
KEEP_ENDED = 50  # ended jobs remembered in the registry (newest first)
STOP_GRACE_ENV = "LCA_STOP_GRACE_S"
DEFAULT_STOP_GRACE_S = 10.0  # between SIGINT, SIGTERM and SIGKILL when a run does not stop
_NEXT_SIGNAL = {int(signal.SIGINT): int(signal.SIGTERM), int(signal.SIGTERM): int(signal.SIGKILL)}
PROJECT_ROOT = Path(__file__).resolve().parent.parent

_THREAD_LOCK = threading.RLock()
_POPENS: dict[int, subprocess.Popen] = {}  # children started by this process, to reap them


class JobError(RuntimeError):
    """A job could not be started or found; the message is one sentence with the fix."""


class JobLimitError(JobError):
    """Too many runs are training at once on this server."""


@dataclass
class Job:
    """One training subprocess and the run file it writes."""

    name: str  # run name, relative to the runs folder
    path: str  # the run file
    pid: int
    started: float  # time.time() at start
    log: str  # stderr of the subprocess (its last line explains a failure)
    out: str  # stdout of the subprocess
    config_file: str
    steps: int  # steps the run was asked for
    ended: float | None = None
    returncode: int | None = None
    stop_requested: bool = False
    folder: str = ""  # the runs folder whose registry lists this job
    stop_signal: int = 0  # the last signal Stop sent (SIGINT, then SIGTERM, then SIGKILL)
    stop_sent: float | None = None  # time.time() it was sent
    stop_grace: float = DEFAULT_STOP_GRACE_S  # seconds before the next one
    worker: str = ""  # started on a warm worker (lca.warm): the ticket in its command line
    # ``--pack N``: N > 1 models in this one process, run files NAME-0 … NAME-(N−1); then
    # ``name`` is NAME-0 (the one a live view watches) and ``path`` the --out the job was given.
    pack: int = 1

    @property
    def run_names(self) -> list[str]:
        """Every run this job writes: its own name, or each packed model's."""
        if self.pack <= 1:
            return [self.name]
        stem = self.name.removesuffix(runs.SUFFIX).removesuffix("-0")
        return [f"{stem}-{i}{runs.SUFFIX}" for i in range(self.pack)]

    @property
    def alive(self) -> bool:
        """True until the process was seen to end (call ``poll`` for a fresh answer)."""
        return self.ended is None

    @property
    def state(self) -> str:
        """running | complete | interrupted | failed | ended (exit status unknown)."""
        if self.ended is None:
            return "running"
        rc = self.returncode
        if rc == 0:
            return "complete"
        if rc in (130, 143, -signal.SIGINT, -signal.SIGTERM) or self.stop_requested:
            return "interrupted"  # Stop, Ctrl-C or SIGTERM (a kill after Stop is recovered)
        if rc is None:
            return "ended"
        return "failed"

    @property
    def seconds(self) -> float:
        return (self.ended or time.time()) - self.started


# ---------------------------------------------------------------------------------------------
# Registry.


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    with _THREAD_LOCK:
        if fcntl is None:  # pragma: no cover
            yield
            return
        with open(folder / LOCK, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _load(folder: Path) -> list[Job]:
    try:
        raw = json.loads((folder / REGISTRY).read_text())
    except (OSError, ValueError):
        return []
    fields = {f.name for f in dataclasses.fields(Job)}
    out = []
    for item in raw if isinstance(raw, list) else []:
        if isinstance(item, dict) and fields >= set(item) and "pid" in item:
            with contextlib.suppress(TypeError):
                out.append(Job(**item))
    return out


def _save(folder: Path, items: list[Job]) -> None:
    live = [j for j in items if j.ended is None]
    ended = sorted((j for j in items if j.ended is not None), key=lambda j: -j.started)
    keep = live + ended[:KEEP_ENDED]
    tmp = folder / f".{REGISTRY}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps([dataclasses.asdict(j) for j in keep], indent=1))
    os.replace(tmp, folder / REGISTRY)


def _cmdline(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _check(job: Job) -> bool:
    """Whether the job's process still runs; records its end (and exit code when known)."""
    if job.ended is not None:
        return False
    popen = _POPENS.get(job.pid)
    if popen is not None:
        rc = popen.poll()
        if rc is None:
            return True
        _POPENS.pop(job.pid, None)
        job.ended, job.returncode = time.time(), rc
        return False
    try:  # our child from before a module reload: reap it so it does not stay a zombie
        pid, status = os.waitpid(job.pid, os.WNOHANG)
        if pid == job.pid:
            job.ended, job.returncode = time.time(), _exit_code(status)
            return False
    except ChildProcessError:
        pass  # not our child (another server process started it): look at the process table
    except OSError:
        pass
    try:
        os.kill(job.pid, 0)
    except ProcessLookupError:
        job.ended = time.time()
        return False
    except PermissionError:
        return True
    cmd = _cmdline(job.pid)
    if cmd is not None and (job.worker or job.path) not in cmd:  # the pid was reused
        job.ended = time.time()
        return False
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{job.pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":  # a zombie someone else must reap
            job.ended = time.time()
            return False
    return True


def _reap(job: Job) -> bool:
    """Fill in the exit status of our child ``job`` that another process (which cannot reap
    it) already recorded as ended; whether the record changed."""
    popen = _POPENS.get(job.pid)
    rc = None if popen is None else popen.poll()
    if rc is None:
        return False
    _POPENS.pop(job.pid, None)
    job.returncode = rc
    return True


def _refreshed(folder: Path) -> list[Job]:
    """The registry with every job's liveness checked and saved (call with the lock held); a
    stop that was not obeyed within its grace period escalates here."""
    items = _load(folder)
    changed = False
    for j in items:
        if j.ended is None:
            changed |= _follow_up(j)
        elif j.returncode is None and j.pid in _POPENS:  # another process saw our child end
            changed |= _reap(j)
    if changed:
        _save(folder, items)
    return items


def _follow_up(job: Job) -> bool:
    """Check a live job; escalate its stop if due; recover its file if Stop had to kill it.
    Returns whether the job record changed."""
    if not _check(job):
        if job.stop_signal == signal.SIGKILL:  # killed mid-write: the file says "running"
            if job.pack > 1:
                for name in job.run_names:
                    _recover_quietly(str(Path(job.path).with_name(name)))
            else:
                _recover_quietly(job.path)
        return True
    if not job.stop_requested or job.stop_sent is None:
        return False
    if time.time() - job.stop_sent < job.stop_grace:
        return False
    nxt = _NEXT_SIGNAL.get(job.stop_signal)
    if nxt is None:
        return False
    try:
        os.kill(job.pid, nxt)
    except ProcessLookupError:
        return False
    job.stop_signal, job.stop_sent = nxt, time.time()
    return True


def _recover_quietly(path: str) -> None:
    """Make a killed run's file clean ("interrupted", every whole step); never raises."""
    from .store import recover

    with contextlib.suppress(Exception):
        recover(path)


def jobs(folder: str | Path | None = None) -> list[Job]:
    """Every job the runs folder remembers, newest first, with fresh liveness."""
    root = runs.runs_dir(folder)
    with _locked(root):
        items = _refreshed(root)
    return sorted(items, key=lambda j: -j.started)


def active(folder: str | Path | None = None) -> list[Job]:
    """The jobs whose process is still running, newest first."""
    return [j for j in jobs(folder) if j.alive]


def find(name: str, folder: str | Path | None = None) -> Job | None:
    """The newest job that wrote (or writes) run ``name``, or None."""
    for j in jobs(folder):
        if j.name == name or (j.pack > 1 and name in j.run_names):
            return j
    return None


def is_live(name: str, folder: str | Path | None = None) -> bool:
    """Whether a running job is writing run ``name`` right now."""
    j = find(name, folder)
    return j is not None and j.alive


def _folder_of(job: Job) -> Path:
    return runs.runs_dir(job.folder or Path(job.path).parent)


def poll(job: Job, folder: str | Path | None = None) -> Job:
    """The same job with fresh liveness (reaps the process when it has ended)."""
    root = runs.runs_dir(folder) if folder is not None else _folder_of(job)
    with _locked(root):
        items = _refreshed(root)
    for j in items:
        if j.pid == job.pid and j.started == job.started:
            return j
    if job.ended is None:  # not in this registry (e.g. it was forgotten): check directly
        _follow_up(job)
    return job


def forget(name: str, folder: str | Path | None = None) -> None:
    """Drop the ended jobs of run ``name`` and their log files (after the run was deleted)."""
    root = runs.runs_dir(folder)
    with _locked(root):
        items = _refreshed(root)
        keep = []
        for j in items:
            if j.name == name and j.ended is not None:
                for p in (j.log, j.out, j.config_file):
                    with contextlib.suppress(OSError):
                        Path(p).unlink()
            else:
                keep.append(j)
        _save(root, keep)


# ---------------------------------------------------------------------------------------------
# Start, stop, wait.


def max_jobs() -> int:
    """How many runs may train at once ($LCA_MAX_JOBS, default 2)."""
    try:
        n = int(os.environ.get(MAX_JOBS_ENV, DEFAULT_MAX_JOBS))
    except ValueError:
        return DEFAULT_MAX_JOBS
    return max(1, n)


def _threads() -> int:
    """CPU threads per job: the cores shared fairly by the allowed concurrent jobs."""
    try:
        return max(1, int(os.environ[THREADS_ENV]))
    except (KeyError, ValueError):
        return max(1, (os.cpu_count() or 1) // max_jobs())


def config_json(config: RunConfig) -> str:
    """The config as the JSON file the job's ``--config`` reads back to the same RunConfig
    (``out`` is left to the job's ``--out``)."""
    return RunConfig.from_dict({**config.to_dict(), "out": None}).to_json()


def start(config: RunConfig, name: str | None = None, folder: str | Path | None = None) -> Job:
    """Start training ``config`` in a subprocess that writes run ``name`` in the runs folder.

    Raises JobLimitError when ``max_jobs()`` runs already train, JobError when the name is taken
    or unusable. The subprocess is ``python -m lca train --config <file.json> --out <run>
    --quiet``; when a warm worker is ready (``prewarm``), that same command runs in it instead
    of a new interpreter, so the first step comes seconds sooner; a new worker warms once that
    job has ended or run a minute.
    """
    root = runs.runs_dir(folder)
    if name is None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        name = runs.safe_name(f"{config.dataset}-{config.model}-{stamp}", root)
    if not name.endswith(runs.SUFFIX):
        name += runs.SUFFIX
    try:
        path = runs.resolve(name, root)
    except runs.RunNameError as e:
        raise JobError(str(e)) from None
    pack = int(getattr(config, "pack", 1) or 1)
    base = name.removesuffix(runs.SUFFIX)
    members = [f"{base}-{i}{runs.SUFFIX}" for i in range(pack)] if pack > 1 else [name]
    with _locked(root):
        items = _refreshed(root)
        live = [j for j in items if j.alive]
        if any(n in j.run_names for j in live for n in members):
            raise JobError(f"{name} is already training; wait for it or stop it first.")
        taken = [n for n in members if (root / n).exists()] if pack > 1 else []
        if taken:
            raise JobError(
                f"A run named {taken[0]} already exists, and this pack of {pack} would write "
                f"{members[0]} … {members[-1]}; choose another name or delete the old runs on "
                "the Runs page."
            )
        if path.exists():
            raise JobError(
                f"A run named {name} already exists; choose another name or delete the old run "
                "on the Runs page."
            )
        cap = max_jobs()
        if len(live) >= cap:
            running = ", ".join(j.name for j in live)
            raise JobLimitError(
                f"{len(live)} runs are already training on this server ({running}) and the "
                f"limit is {cap}; wait for one to finish or stop one, then start again."
            )
        jobs_dir = root / JOBS_DIR
        jobs_dir.mkdir(exist_ok=True)
        stem = f"{path.stem}.{int(time.time() * 1000)}"
        config_file = jobs_dir / f"{stem}.json"
        config_file.write_text(config_json(config))
        err, out = jobs_dir / f"{stem}.err", jobs_dir / f"{stem}.out"
        argv = ["train", "--config", str(config_file), "--out", str(path), "--quiet"]
        env = _job_env()
        popen, ticket = _start_warm(argv, out, err, env)
        if popen is None:
            with open(out, "wb") as fo, open(err, "wb") as fe:
                # From the spawner thread: the job trains at the server's original priority
                # even when the page threads run lower (lca.priority).
                popen = priority.spawn(
                    subprocess.Popen,  # noqa: S603 - our own interpreter and module
                    [sys.executable, "-m", "lca", *argv],
                    cwd=str(PROJECT_ROOT),
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=fo,
                    stderr=fe,
                )
        _POPENS[popen.pid] = popen
        _YOUNG[popen.pid] = (popen, time.monotonic())
        job = Job(
            name=members[0],
            path=str(path),
            pid=popen.pid,
            started=time.time(),
            log=str(err),
            out=str(out),
            config_file=str(config_file),
            steps=int(config.steps),
            folder=str(root),
            worker=ticket,
            pack=pack,
        )
        items.append(job)
        _save(root, items)
    if ticket:  # the warm worker is taken: warm the next one once this job is under way
        threading.Thread(
            target=_prewarm_after, args=(job, env, root), daemon=True, name="lca-warm"
        ).start()
    return job


def _job_env() -> dict[str, str]:
    """The environment of a job's process: this one's, with the project importable, output
    unbuffered and the CPU threads of one job (a warm worker must have been started with it)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    threads = str(_threads())
    env.setdefault("OMP_NUM_THREADS", threads)
    env.setdefault("MKL_NUM_THREADS", threads)
    return env


def _start_warm(
    argv: list[str], out: Path, err: Path, env: dict[str, str]
) -> tuple[subprocess.Popen | None, str]:
    """(process, ticket) of the warm worker now running ``python -m lca <argv>``, or (None, "")
    when there is no live warm worker for ``env``: the caller then starts the job cold."""
    worker = warm.take(env)
    if worker is None:
        return None, ""
    try:
        out.write_bytes(b"")
        err.write_bytes(b"")
    except OSError:
        worker.end()
        raise
    if not worker.hand(argv, str(out), str(err)):
        worker.end()  # it died: reap it, start cold
        return None, ""
    return worker.popen, worker.ticket


REPLACE_AFTER_S = 60.0  # no new warm worker while a job started here is younger than this
_YOUNG: dict[int, tuple[subprocess.Popen, float]] = {}  # jobs started here: process, start time


def _starting_job() -> bool:
    """Whether a job this process started is still running and younger than REPLACE_AFTER_S.

    Meanwhile no warm worker is started: its warm-up (several CPU-seconds) would be taken from
    the very seconds a class waits for the new run's first steps and charts.
    """
    now = time.monotonic()
    for pid, (popen, since) in list(_YOUNG.items()):
        if popen.poll() is not None or now - since >= REPLACE_AFTER_S:  # poll() keeps the
            _YOUNG.pop(pid, None)  # exit status for _check: no reaping race
    return bool(_YOUNG)


def _prewarm_after(job: Job, env: dict[str, str], root: Path) -> None:
    """Start the next warm worker once ``job`` (which took the last one) has ended or has run
    REPLACE_AFTER_S seconds, whichever comes first."""
    entry = _YOUNG.get(job.pid)
    deadline = time.monotonic() + REPLACE_AFTER_S
    while entry is not None and entry[0].poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    _prewarm(env, root)


def _prewarm(env: dict[str, str], root: Path) -> int | None:
    if _starting_job():
        worker = warm.current()
        return worker.pid if worker is not None and worker.alive else None
    try:
        worker = warm.ensure(env, root)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None  # no warm worker: jobs start cold, as they always could
    return None if worker is None else worker.pid


def prewarm(folder: str | Path | None = None) -> int | None:
    """Keep one pre-started job process ready (lca.warm), so the next ``start`` records its
    first step in a fraction of a second; returns its pid (None when $LCA_WARM_WORKER=0, while
    a job started here is in its first REPLACE_AFTER_S seconds, or when it cannot be started).
    Cheap when it is already there: the app calls it on every page view. Never raises: without
    a warm worker a job starts cold."""
    try:
        root = runs.runs_dir(folder)
    except OSError:
        return None
    return _prewarm(_job_env(), root)


def stop_grace() -> float:
    """Seconds Stop waits before the next signal ($LCA_STOP_GRACE_S, default 10)."""
    try:
        return max(0.0, float(os.environ.get(STOP_GRACE_ENV, DEFAULT_STOP_GRACE_S)))
    except ValueError:
        return DEFAULT_STOP_GRACE_S


def stop(job: Job, *, wait_s: float | None = None, grace_s: float | None = None) -> Job:
    """Ask the job to stop, as Ctrl-C would (SIGINT): the run ends "interrupted", steps kept.

    A run still going ``grace_s`` seconds later (default ``stop_grace()``) gets SIGTERM, which
    it handles like Ctrl-C, and ``grace_s`` after that SIGKILL, after which its file is
    recovered. The escalation happens whenever the job is looked at (``poll``, ``jobs``,
    ``wait``) and in a background thread, so a trainer that ignores SIGINT never runs on.
    With ``wait_s``, wait up to that many seconds for the process to end.
    """
    grace = stop_grace() if grace_s is None else float(grace_s)
    root = _folder_of(job)
    with _locked(root):
        items = _refreshed(root)
        for j in items:
            if j.pid == job.pid and j.started == job.started:
                job = j
        if job.alive and _check(job) and not job.stop_requested:
            with contextlib.suppress(ProcessLookupError):
                os.kill(job.pid, signal.SIGINT)
            job.stop_requested = True
            job.stop_signal, job.stop_sent, job.stop_grace = int(signal.SIGINT), time.time(), grace
        _save(root, items)
    if wait_s is not None:
        job = wait(job, wait_s)
    if job.alive:
        threading.Thread(target=_watch, args=(job,), daemon=True, name="lca-stop").start()
    return job


def _watch(job: Job) -> None:
    """Follow a stopped job until it has ended (escalating on the way)."""
    while job.alive:
        time.sleep(min(0.5, max(0.05, job.stop_grace / 4)))
        with contextlib.suppress(Exception):
            job = poll(job)


def wait(job: Job, timeout: float) -> Job:
    """Wait up to ``timeout`` seconds for the job to end; return it refreshed."""
    deadline = time.monotonic() + timeout
    while True:
        job = poll(job)
        if not job.alive or time.monotonic() >= deadline:
            return job
        time.sleep(0.1)


def _tail_lines(path: str, limit: int = 8192) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            text = fh.read().decode(errors="replace")
    except OSError:
        return []
    return [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]


def last_error(job: Job) -> str | None:
    """One sentence on why an ended job did not complete (None when it completed or runs)."""
    if job.alive or job.state == "complete":
        return None
    err = _tail_lines(job.log)
    for line in reversed(err):
        if line.startswith("error:"):
            return line.removeprefix("error:").strip()
    out = _tail_lines(job.out)
    if out and out[-1].split(":", 1)[0] in ("failed", "interrupted"):
        return out[-1].split(":", 1)[1].split(" Run file:")[0].strip()
    if job.state == "interrupted":
        return f"{job.name} was stopped before it finished; every recorded step is kept."
    if err:
        return err[-1]
    if job.returncode is not None and job.returncode < 0:
        return (
            f"The training process for {job.name} was killed (signal {-job.returncode}); "
            "recover the run file on the Runs page."
        )
    if job.returncode is not None:
        return f"The training process for {job.name} ended with exit status {job.returncode}."
    return f"The training process for {job.name} ended; its exit status is unknown."


# ---------------------------------------------------------------------------------------------
# Sizing a run before it starts.


@functools.lru_cache(maxsize=64)
def _shape_of(name: str, options_json: str, data_dir: str | None) -> tuple[tuple[int, ...], int]:
    info = data.info(name)
    if info.on_disk:  # sized from the registry, so the app can size a run without the files
        return info.input_shape, info.num_classes
    ds = data.load(name, data_dir=data_dir, **json.loads(options_json))
    return tuple(ds.input_shape), int(ds.num_classes)


def dataset_shape(
    name: str, options: dict[str, Any] | None = None, data_dir: str | None = None
) -> tuple[tuple[int, ...], int]:
    """(input shape, class count) of a dataset; folder datasets answer without their files."""
    return _shape_of(name, json.dumps(options or {}, sort_keys=True), data_dir)


@functools.lru_cache(maxsize=64)
def _compatible(shape: tuple[int, ...], classes: int) -> tuple[str, ...]:
    ok = []
    for m in models.names():
        try:
            with torch.device("meta"):
                models.build(m, shape, classes)
        except Exception:  # noqa: BLE001 - any refusal means "not for this input"
            continue
        ok.append(m)
    return tuple(ok)


def compatible_models(dataset: str, options: dict[str, Any] | None = None) -> list[str]:
    """Model names that accept the dataset's input shape (e.g. no CNN on tabular data)."""
    shape, classes = dataset_shape(dataset, options)
    return list(_compatible(tuple(shape), classes))


def run_layout(config: RunConfig) -> tuple[Layout, int]:
    """(layout, segments) of the run ``config`` will write, before anything trains.

    Builds the model (on the meta device: no memory, no time) to learn its tensors, and declares
    what the run's tracker will: the loop's own series and event tables, the held-out set's
    series and per-weight totals (``measure_val``), the error estimate (``error_every``) and the
    saved weights (``save_weights``). Raises the dataset's or model's one-sentence ValueError
    when the config cannot train.
    """
    from .hooks import Hooks
    from .posthoc import weight_declarations
    from .train import _declarations

    shape, classes = dataset_shape(config.dataset, config.dataset_options, config.data_dir)
    with torch.device("meta"):
        model = models.build(config.model, shape, classes, **config.model_options)
    named = list(model.named_parameters())
    shapes = [(n, tuple(p.shape)) for n, p in named]
    # The loop's own declarations (a technique's own are small next to the per-step data).
    series, events, arrays = _declarations(None, Hooks([]), collapse=True)  # type: ignore[arg-type]
    if config.save_weights:
        dtype = torch.float64 if config.measure_dtype == "float64" else torch.float32
        w_series, w_arrays = weight_declarations(shapes, dtype)
        series.update(w_series)
        arrays.update(w_arrays)
    series, arrays = tracker_declarations(
        len(named),
        sum(p.numel() for _, p in named),
        series,
        arrays,
        val=config.measure_val,
        error_every=config.error_every,
    )
    layout = model_layout(
        model,
        method=config.method,
        dtype=config.measure_dtype,
        measure_size=config.measure_size or 0,
        series=series,
        events=events,
        arrays=arrays,
    )
    return layout, config.steps + (min(config.steps, 64) if config.techniques else 0)


def estimate_bytes(config: RunConfig) -> tuple[int, int]:
    """(estimated run-file bytes, parameter count) of ``config``, before anything trains."""
    layout, steps = run_layout(config)
    return store_estimate(layout, steps, config.record), layout.num_params


def large_run_notice(config: RunConfig) -> str | None:
    """The sentence the Train page shows for a run that fits but writes a large file (the
    writer's ``size_notice``: the figure, and what record = units / layers would write), or
    None for a run of ordinary size."""
    from .store.schema import size_notice

    layout, steps = run_layout(config)
    return size_notice(layout, steps, config.record, option="record =")


def max_run_bytes() -> int:
    """The largest run file the app starts ($LCA_MAX_RUN_BYTES, default 4 GiB)."""
    try:
        return max(1, int(float(os.environ.get(MAX_RUN_BYTES_ENV, DEFAULT_MAX_RUN_BYTES))))
    except ValueError:
        return DEFAULT_MAX_RUN_BYTES


def check_size(config: RunConfig, folder: str | Path | None = None) -> tuple[int, int]:
    """(estimated bytes, parameter count); raises JobError with one sentence when the run would
    not fit under ``max_run_bytes()`` (or ``config.max_bytes``) or on the disk."""
    from .store.schema import size_refusal

    est, params = estimate_bytes(config)
    refusal = size_refusal(
        "This run",
        est,
        steps=config.steps,
        record=config.record,
        params=params,
        cap=min(max_run_bytes(), config.max_bytes or max_run_bytes()),
        cap_name="a run may use here",
        free=runs.free_bytes(folder) // max(1, int(getattr(config, "pack", 1) or 1)),  # N files
        where="in the runs folder",
        verb="choose",
        record_option="record = units or layers",
    )
    if refusal:
        raise JobError(refusal)
    return est, params


def demo_config() -> RunConfig:
    """The classroom demo: a two-hidden-layer net on the real 8x8 digits, recorded per weight.

    Sized so a class can watch it learn (several seconds of live training) yet it finishes in
    well under a minute on two CPU cores: about 10-15 s on an idle machine, about 20 MB. The
    measurement set is the whole training split (1,438 images), as in the LCA paper.
    """
    return RunConfig(
        dataset="digits",
        model="mlp",
        model_options={"hidden": [64, 32]},
        optimizer="momentum",
        lr=0.01,  # the loss falls over the first few hundred steps: long enough to watch
        momentum=0.9,
        batch_size=64,
        steps=800,
        measure_size=None,
        eval_every=20,
        record="full",
        device="cpu",
    )
