"""The runs folder: where run files live, and the only place the app reads them from.

A run is named by its file name relative to the folder (``digits-mlp.h5``); a name from a URL
is resolved here and refused when it would leave the folder, so ``?run=../../etc/passwd`` reads
nothing. No Streamlit here: the CLI, notebooks and tests use the same rules.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .store.lock import RunBusyError as StoreBusyError
from .store.lock import held, holder

RUNS_ENV = "LCA_RUNS_DIR"
SUFFIX = ".h5"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class RunNameError(ValueError):
    """A run name that is not a plain file in the runs folder."""


class RunBusyError(ValueError):
    """A run that a process is writing (or recovering) right now: it cannot be deleted."""


def runs_dir(folder: str | Path | None = None) -> Path:
    """The runs folder: ``folder``, else $LCA_RUNS_DIR, else ./runs (created if missing)."""
    path = Path(folder or os.environ.get(RUNS_ENV) or "runs").expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve(name: str, folder: str | Path | None = None) -> Path:
    """The path of run ``name`` inside the runs folder; refuses anything that escapes it."""
    root = runs_dir(folder)
    if not name or "\x00" in name or Path(name).is_absolute():
        raise RunNameError(f"{name!r} is not a run name; pick a run from the runs list.")
    try:
        path = (root / name).resolve()  # symlinks followed: one leading outside is refused
    except (OSError, RuntimeError):
        raise RunNameError(f"{name!r} is not a run name; pick a run from the runs list.") from None
    if root != path.parent and root not in path.parents:
        raise RunNameError(f"{name!r} is outside the runs folder; pick a run from the runs list.")
    if path.suffix != SUFFIX:
        raise RunNameError(f"{name!r} is not an .h5 run file; pick a run from the runs list.")
    return path


@dataclass(frozen=True)
class RunFile:
    name: str  # relative to the runs folder
    path: Path
    size: int
    modified: float


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path``, with every symlink followed, is a regular file inside ``root``."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, dangling or a symlink loop
        return False
    return real.is_relative_to(root) and real.is_file()


def list_runs(folder: str | Path | None = None) -> list[RunFile]:
    """Every .h5 file under the runs folder, newest first. A symlink (to a file or a folder)
    that leads outside the folder is left out, as is anything that is not a regular file."""
    root = runs_dir(folder)
    out = []
    for p in root.rglob(f"*{SUFFIX}"):
        if _inside(p, root):
            st = p.stat()
            out.append(RunFile(p.relative_to(root).as_posix(), p, st.st_size, st.st_mtime))
    return sorted(out, key=lambda r: r.modified, reverse=True)


def safe_name(text: str, folder: str | Path | None = None) -> str:
    """A new, unused file name built from ``text`` (for uploads and new runs)."""
    stem = _SAFE.sub("-", Path(text).stem).strip("-.") or "run"
    root = runs_dir(folder)
    name, k = f"{stem}{SUFFIX}", 2
    while (root / name).exists() or holder(root / name) is not None:
        name, k = f"{stem}-{k}{SUFFIX}", k + 1
    return name


def busy_reason(name: str, folder: str | Path | None = None) -> str | None:
    """One sentence when run ``name`` is being written (or recovered) right now, else None.

    The run file's lock is the one source of truth, so a run a terminal started counts as much
    as one the app started. For the app: the process is named by its id only.
    """
    who = holder(resolve(name, folder))
    if who is None:
        return None
    by = f"process {who.pid}" if who.pid else "another process"
    return (
        f"{name} is being written right now (by {by}); stop that run or wait for it to "
        "finish first."
    )


def delete(name: str, folder: str | Path | None = None) -> None:
    """Delete run ``name``; refused (RunBusyError) while a process writes it. The run's lock is
    held while deleting, so no writer can start on it half-way."""
    path = resolve(name, folder)
    try:
        with held(path, doing="delete"):
            path.unlink(missing_ok=True)
    except StoreBusyError:
        raise RunBusyError(
            busy_reason(name, folder)
            or f"{name} is being written right now; stop that run or wait for it to finish first."
        ) from None


def free_bytes(folder: str | Path | None = None) -> int:
    return shutil.disk_usage(runs_dir(folder)).free
