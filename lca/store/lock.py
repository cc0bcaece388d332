"""One writer per run file: an OS lock that dies with the process holding it.

Why a lock file beside the run (``runs/.x.h5.lock``) and not the run file itself: HDF5 places
its own locks on the ``.h5`` file (and drops them once SWMR starts), and a second lock on the same
file from the same process would fight them. Why ``flock``: the kernel releases it when the
holder exits in any way (Ctrl-C, SIGKILL, a crash), so a lock is never left behind, and a holder
is a *live* holder, unlike a pid stored in the file (pids are reused, above all in containers).

Whoever changes a run file takes the lock for as long as it does: the Writer from ``begin`` to
``close``, ``recover`` while it repairs, the app while it deletes. The lock is therefore the one
answer to "is this run being written?" (``holder``), for runs the app started and for runs a
terminal started alike. The holder writes its pid into the lock file, so a refusal can say who.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .schema import RunFileError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, the old behaviour
    fcntl = None  # type: ignore[assignment]

_RETRIES = 50  # a reader's probe holds the lock for microseconds: try again this many times
_RETRY_S = 0.01


class RunBusyError(RunFileError):
    """Another writer (or a recovery, or a deletion) holds the run file; one sentence."""


@dataclass(frozen=True)
class Holder:
    """Who holds a run file's lock: a process id (None when it could not be told) and, when
    the process table shows it, its command line."""

    pid: int | None
    command: str | None = None

    def describe(self) -> str:
        """``process 1234 (python -m lca train --out x.h5)``, or ``another process``."""
        if self.pid is None:
            return "another process"
        if self.pid == os.getpid():
            return f"this process ({self.pid})"
        if self.command:
            return f"process {self.pid} ({self.command})"
        return f"process {self.pid}"


def lock_path(path: str | os.PathLike[str]) -> Path:
    """The lock file of run ``path``: hidden, beside it, never listed as a run."""
    p = Path(path)
    return p.with_name(f".{p.name}.lock")


def command_of(pid: int, limit: int = 80) -> str | None:
    """A short command line of process ``pid`` (Linux /proc), for messages; None if unknown."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    parts = [p.decode(errors="replace") for p in raw.split(b"\0") if p]
    if not parts:
        return None
    parts[0] = Path(parts[0]).name
    text = " ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists
        return True
    return True


def holder(path: str | os.PathLike[str]) -> Holder | None:
    """Who is writing run ``path`` right now (None: nobody). Creates nothing, changes nothing.

    A shared lock is tried for an instant: it fails only while a writer (or a recovery or a
    deletion) holds the exclusive lock.
    """
    if fcntl is None:  # pragma: no cover
        return None
    try:
        fd = os.open(lock_path(path), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # no lock file: no writer ever held it (or it finished and cleaned up)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            return Holder(pid, command_of(pid) if pid else None)
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class WriteLock:
    """The exclusive lock on one run file, held until ``release`` (or the process ends)."""

    def __init__(self, path: str | os.PathLike[str], fd: int | None) -> None:
        self.path = Path(path)
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Give the run up: remove the lock file (while still holding it, so nobody can take a
        lock on a file that is about to vanish) and close it. Releasing twice does nothing."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            if _same_file(fd, lock_path(self.path)):
                os.unlink(lock_path(self.path))
        os.close(fd)

    def __enter__(self) -> WriteLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a Writer dropped without close(): the lock goes with it
        with contextlib.suppress(Exception):
            self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def acquire(path: str | os.PathLike[str], *, doing: str = "write") -> WriteLock:
    """Take the exclusive lock on run ``path`` or raise RunBusyError naming who holds it.

    ``doing`` completes the refusal ("cannot write x.h5: it is being written by ..."). Never
    waits for a real holder: a second writer is refused at once, and loses nothing.
    """
    p = Path(path)
    if fcntl is None:  # pragma: no cover
        return WriteLock(p, None)
    lp = lock_path(p)
    for _ in range(_RETRIES):
        try:
            fd = os.open(lp, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise RunFileError(
                    f"Cannot {doing} {p}: the folder {p.parent} is not writable here; choose a "
                    "folder you can write to."
                ) from None
            raise RunFileError(
                f"Cannot {doing} {p}: its folder cannot be used ({os.strerror(e.errno or 0)}); "
                "check the path."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            # A pid is written only by an exclusive holder; a live one is a real writer. No pid,
            # or a dead one (left by a killed writer), means a reader's probe: look again.
            if pid is not None and _pid_alive(pid):
                raise RunBusyError(busy_sentence(p, Holder(pid, command_of(pid)), doing)) from None
            time.sleep(_RETRY_S)
            continue
        if not _same_file(fd, lp):  # the holder before us removed it as we opened it
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return WriteLock(p, fd)
    raise RunBusyError(busy_sentence(p, Holder(None), doing))


def busy_sentence(path: Path, who: Holder, doing: str = "write") -> str:
    """The one sentence for a run someone else holds, naming the file, the holder and the fix."""
    return (
        f"Cannot {doing} {path}: it is still being written by {who.describe()}; wait for that "
        "run to finish or stop it first."
    )


@contextlib.contextmanager
def held(path: str | os.PathLike[str], *, doing: str) -> Iterator[WriteLock]:
    """``with held(path, doing="delete"):`` the run is ours for the block (refused if busy)."""
    lock = acquire(path, doing=doing)
    try:
        yield lock
    finally:
        lock.release()


def openers(path: str | os.PathLike[str], limit: int = 3) -> list[Holder]:
    """Other processes that have ``path`` open (Linux /proc; only those this user may see).

    For the refusal HDF5 gives when another program holds the file open without SWMR ("unable
    to lock file, errno = 11"): the user is told which program to close.
    """
    try:
        target = os.stat(path)
    except OSError:
        return []
    found: list[Holder] = []
    try:
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return []
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                found.append(Holder(pid, command_of(pid)))
                break
        if len(found) >= limit:
            break
    return found


def is_hdf5_lock_error(e: BaseException) -> bool:
    """HDF5 refused the file because another process has it open ("unable to lock file")."""
    return "unable to lock file" in str(e)


def open_elsewhere_sentence(path: str | os.PathLike[str], doing: str) -> str:
    """One sentence for a file another program holds open, naming that program if it can."""
    p = Path(path)
    who = openers(p)
    where = ", ".join(h.describe() for h in who) if who else "another program"
    return (
        f"Cannot {doing} {p.name}: it is open in {where}, which keeps others out; close it "
        "there and try again."
    )
