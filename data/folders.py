"""Finding the user's data folder and the dataset files inside it.

Real datasets are never downloaded (the app must run offline); the user points us at a folder
with ``data_dir`` / ``--data-dir`` or the ``LCA_DATA_DIR`` environment variable, and datasets that
an operating-system package installs (Debian's ``dataset-fashion-mnist`` puts the IDX files in
``/usr/share/datasets/fashion-mnist``) or that sit in ``./data/<name>`` are found without either.
Errors name the expected files and every place we looked, so the user can fix the layout without
reading code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .dataset import DataError

ENV_VAR = "LCA_DATA_DIR"
# Where OS packages put datasets (Debian: /usr/share/datasets/<name>); a module attribute so
# tests can point it at an empty folder and behave the same on machines with the package.
SYSTEM_DIR = Path("/usr/share/datasets")
# The project-local folder, relative to the working directory: ./data/<name>.
LOCAL_DIR = Path("data")


def standard_roots(name: str) -> list[Path]:
    """The folders searched, in order, when no data folder is given: ``$LCA_DATA_DIR``,
    ``SYSTEM_DIR/<name>``, ``LOCAL_DIR/<name>``; an unset variable is left out."""
    roots = [Path(os.environ[ENV_VAR]).expanduser()] if os.environ.get(ENV_VAR) else []
    return [*roots, SYSTEM_DIR / name, LOCAL_DIR / name]


def resolve_data_dir(data_dir: str | os.PathLike[str] | None, label: str, expected: str) -> Path:
    """Return the data folder from ``data_dir``, else ``$LCA_DATA_DIR``, else raise DataError.

    ``label`` names the dataset ("MNIST") and ``expected`` lists its files, for the message.
    """
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(ENV_VAR) or None
    if data_dir is None:
        raise DataError(
            f"{label} needs a data folder containing {expected}; set --data-dir or {ENV_VAR}."
        )
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataError(
            f"{label} data folder {path} does not exist or is not a folder; expected it to "
            f"contain {expected}, so set --data-dir or {ENV_VAR} to the right folder."
        )
    return path


def describe_places(places: Sequence[Path | str]) -> str:
    """Format candidate folders as "a, b or c" for error messages."""
    names = [str(p) for p in places]
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " or " + names[-1]


def find_file(folder: Path, stem: str, suffixes: Sequence[str] = ("", ".gz")) -> Path | None:
    """Return ``folder/stem`` with the first suffix that exists as a file, or None."""
    for suffix in suffixes:
        candidate = folder / (stem + suffix)
        if candidate.is_file():
            return candidate
    return None
