"""A pre-started training process, so a run started from the app records its first step at once.

Why: a job started cold (``python -m lca train``) spends 5-7 s on a two-core server before its
first step: the interpreter and torch, lca, scikit-learn and the demo's digits, torch._dynamo
(imported by the first optimizer), and the first call of every kernel. A class watching the
demo sees only "Starting…" meanwhile. A warm worker pays all of that before anyone clicks.

How (the server side lives in ``lca.jobs``, which keeps every rule of a started job):

* The app server starts ``python -m lca.warm TICKET`` with the environment a job would get and
  a pipe as its stdin. The worker imports what a job imports, builds the demo config (data,
  model, optimizer, tracker; nothing recorded) and trains three steps, writes ``TICKET.ready``
  (its pid) and waits for one line on stdin.
* To start a job on it, ``jobs.start`` writes one JSON line (the ``python -m lca`` arguments
  and the job's stdout and stderr files) and closes the pipe. The worker points its stdout and
  stderr at those files and runs exactly what the cold job runs, ``lca.cli.main(argv)``, in
  this process, then exits with its status. The job is registered with the worker's pid, so
  Stop (SIGINT, then SIGTERM, then SIGKILL), the live panel, the run file's lock and the job
  cap work as for a cold start; ``TICKET`` in the worker's command line is what proves the pid
  is still that job's process.
* An idle worker never outlives its server: the server holds the only write end of the pipe,
  and the kernel closes it however the server ends (even SIGKILL), so the worker reads EOF and
  exits; it also leaves when its parent changes (reparented). PR_SET_PDEATHSIG is not used:
  it fires when the *thread* that started the child ends, and Streamlit starts processes from
  short-lived script threads.

The server keeps at most one idle worker (``ensure``); ``take`` hands it out once. A worker
that died, or was started with another environment, is ended and the job starts cold.
``$LCA_WARM_WORKER=0`` turns the whole thing off.

No Streamlit here.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lca import priority

ENV_SWITCH = "LCA_WARM_WORKER"
READY_SUFFIX = ".ready"
WARMUP_STEPS = 3  # the demo's first steps, trained once and thrown away: first-call costs
PARENT_CHECK_S = 1.0  # an idle worker looks at its parent this often
PROJECT_ROOT = Path(__file__).resolve().parent.parent

_LOCK = threading.Lock()
_WORKER: Worker | None = None
_COUNT = 0  # workers this process started (part of each ticket)


def enabled(environ: dict[str, str] | None = None) -> bool:
    """Whether the app keeps a warm worker ($LCA_WARM_WORKER, on unless 0/false/no/off; POSIX
    only: the worker waits on its pipe with select)."""
    value = (os.environ if environ is None else environ).get(ENV_SWITCH, "1")
    return os.name == "posix" and value.strip().lower() not in ("0", "false", "no", "off")


@dataclass
class Worker:
    """One idle pre-started process (server side)."""

    popen: subprocess.Popen
    ticket: str  # in its command line; ``ticket + ".ready"`` appears once it is warm
    env: dict[str, str] = field(repr=False)
    started: float = field(default_factory=time.time)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def ready(self) -> bool:
        """Whether it has finished warming up (a job handed over earlier waits for that)."""
        return Path(self.ticket + READY_SUFFIX).exists()

    def hand(self, argv: list[str], stdout: str, stderr: str) -> bool:
        """Give it the job ``python -m lca <argv>``; False when it cannot take it (it died)."""
        if not self.alive:
            return False
        line = json.dumps({"argv": argv, "stdout": stdout, "stderr": stderr}) + "\n"
        try:
            assert self.popen.stdin is not None
            self.popen.stdin.write(line.encode())
            self.popen.stdin.close()  # one job per worker
        except (OSError, ValueError):  # BrokenPipeError: it ended meanwhile
            return False
        return self.alive

    def end(self) -> None:
        """Make an idle worker leave (EOF on its stdin), then make sure it did."""
        with contextlib.suppress(OSError, ValueError):
            if self.popen.stdin is not None:
                self.popen.stdin.close()
        with contextlib.suppress(OSError):
            self.popen.terminate()
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                self.popen.kill()
            self.popen.wait()
        with contextlib.suppress(OSError):
            Path(self.ticket + READY_SUFFIX).unlink()


def _spawn(env: dict[str, str], folder: Path) -> Worker:
    global _COUNT
    where = folder / ".jobs"
    where.mkdir(parents=True, exist_ok=True)
    _COUNT += 1
    ticket = str(where / f"warm-{os.getpid()}-{_COUNT}-{int(time.time() * 1000)}")
    # From the spawner thread: the job it will run trains at the server's original priority
    # even when the page threads run lower (lca.priority).
    popen = priority.spawn(
        subprocess.Popen,  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "lca.warm", ticket],
        cwd=str(PROJECT_ROOT),
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    return Worker(popen=popen, ticket=ticket, env=dict(env))


def ensure(env: dict[str, str], folder: Path) -> Worker | None:
    """The idle warm worker for jobs started with ``env``, started now if there is none (None
    when warm workers are off). Cheap when one is there: call it on every page view."""
    global _WORKER
    with _LOCK:
        old = _WORKER
        if old is not None and old.alive and old.env == env and enabled(env):
            return old
        _WORKER = None
    if old is not None:
        old.end()  # dead, or started for another environment
    if not enabled(env):
        return None
    with _LOCK:
        if _WORKER is None:  # another thread may have started one meanwhile
            _WORKER = _spawn(env, folder)
        return _WORKER


def take(env: dict[str, str]) -> Worker | None:
    """Hand out the idle worker if it was started with ``env`` and still runs (once)."""
    global _WORKER
    with _LOCK:
        worker, _WORKER = _WORKER, None
    if worker is None:
        return None
    if worker.alive and worker.env == env and enabled(env):
        return worker
    worker.end()
    return None


def current() -> Worker | None:
    """The idle worker, if any (for tests and diagnostics)."""
    with _LOCK:
        return _WORKER


def shutdown() -> None:
    """End the idle worker (tests; a server's worker also ends by itself with the server)."""
    global _WORKER
    with _LOCK:
        worker, _WORKER = _WORKER, None
    if worker is not None:
        worker.end()


def ready_pids(folder: Path) -> list[int]:
    """Pids of the warm workers of runs folder ``folder`` that are warm and idle now (for the
    benchmark, which is not the server process)."""
    out = []
    for f in sorted((folder / ".jobs").glob(f"warm-*{READY_SUFFIX}")):
        try:
            pid = int(f.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            continue
        out.append(pid)
    return out


# ---------------------------------------------------------------------------------------------
# The worker process.


def warm_up() -> None:
    """Run once, recording to a throw-away file, the command the demo's job runs: imports
    (torch, lca, every technique, scikit-learn, h5py), the argument parser, the digits, the
    model, the optimizer (torch._dynamo), the run file and the first steps' kernels."""
    import tempfile

    from lca import cli, jobs
    from lca.config import RunConfig

    # threads given: "auto" would look at the runs folder's jobs, and a worker warming up is
    # no job (nor may it record the end of one, which only the job's parent can reap).
    config = RunConfig.from_dict(
        {**jobs.demo_config().to_dict(), "steps": WARMUP_STEPS, "threads": 1}
    )
    with tempfile.TemporaryDirectory(prefix="lca-warm-") as tmp:
        config_file = Path(tmp) / "warm.json"
        config_file.write_text(jobs.config_json(config))
        argv = ["train", "--config", str(config_file), "--out", str(Path(tmp) / "warm.h5")]
        with contextlib.redirect_stdout(None):
            cli.main([*argv, "--quiet"])
    gc.collect()


def _wait_for_job(parent: int) -> str | None:
    """One line from stdin; None on EOF or when the parent is gone."""
    fd, buf = sys.stdin.fileno(), b""
    while True:
        if os.getppid() != parent:
            return None
        readable, _, _ = select.select([fd], [], [], PARENT_CHECK_S)
        if not readable:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        buf += chunk
        if b"\n" in buf:
            return buf.split(b"\n", 1)[0].decode()


def _redirect(stdout: str, stderr: str) -> None:
    """Point fds 0, 1 and 2 where a cold job's are: /dev/null and the job's two files."""
    sys.stdout.flush()
    sys.stderr.flush()
    for target, path, flags in (
        (0, os.devnull, os.O_RDONLY),
        (1, stdout, os.O_WRONLY | os.O_CREAT | os.O_APPEND),
        (2, stderr, os.O_WRONLY | os.O_CREAT | os.O_APPEND),
    ):
        fd = os.open(path, flags, 0o644)
        os.dup2(fd, target)
        os.close(fd)


def serve(ticket: str) -> int:
    """The worker: warm up, say so, wait for one job and run it as ``python -m lca`` would."""
    parent = os.getppid()
    ready = Path(ticket + READY_SUFFIX)
    try:
        try:
            warm_up()
        except Exception as e:  # noqa: BLE001 - a partly warm worker still saves time
            print(f"lca.warm: warm-up failed ({type(e).__name__}: {e})", file=sys.stderr)
        with contextlib.suppress(OSError):
            ready.write_text(str(os.getpid()))
        line = _wait_for_job(parent)
    except KeyboardInterrupt:  # Ctrl-C in the server's terminal, or Stop before the job began
        line = None
        code = 130
    else:
        code = 0
    finally:
        with contextlib.suppress(OSError):
            ready.unlink()
    if line is None:
        return code
    job = json.loads(line)
    _redirect(job["stdout"], job["stderr"])
    from lca.cli import main

    return main(list(job["argv"]))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m lca.warm TICKET (started by the app, not by hand)", file=sys.stderr)
        sys.exit(2)
    sys.exit(serve(sys.argv[1]))
