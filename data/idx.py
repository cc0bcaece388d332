"""MNIST and Fashion-MNIST from IDX files in the user's data folder or a standard place.

Without ``data_dir`` the files are looked for, in order, in ``$LCA_DATA_DIR``,
``/usr/share/datasets/<name>`` (where Debian's ``dataset-fashion-mnist`` package puts them) and
``./data/<name>``; a ``data_dir`` that is given is the only place looked at.

The IDX format is parsed here with numpy (no torchvision, no download): a 4-byte big-endian
magic number ``0x000008DD`` (``08`` = unsigned bytes, ``DD`` = number of dimensions), then one
big-endian uint32 per dimension, then the raw bytes. Images must have magic ``0x00000803``
(N, rows, cols) and labels ``0x00000801`` (N,). Each file may be plain or gzipped.

Accepted layouts under each of those folders (first complete one wins):

* the four files directly in the folder;
* torchvision's layout, ``MNIST/raw/`` or ``FashionMNIST/raw/``;
* ``mnist/`` or ``fashion-mnist/`` (also ``fashion_mnist/``).

Pixels are scaled to [0, 1] float32 with shape (N, 1, rows, cols); rows/cols come from the file.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .dataset import DataError, Dataset, reason
from .folders import (
    ENV_VAR,
    LOCAL_DIR,
    describe_places,
    find_file,
    resolve_data_dir,
    standard_roots,
)
from .splits import to_dataset

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
NUM_CLASSES = 10
IMAGE_SHAPE = (1, 28, 28)  # the original files; other square sizes load too (from the file)

# (train images, train labels, test images, test labels): the names of the original files.
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
EXPECTED = ", ".join(f"{stem}(.gz)" for stem in FILES)

LABELS = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}
# The operating-system package that installs a dataset into folders.SYSTEM_DIR (Debian).
INSTALL = {"fashion-mnist": "apt-get install dataset-fashion-mnist"}
SUBFOLDERS = {
    "mnist": (Path("MNIST", "raw"), Path("mnist")),
    "fashion-mnist": (Path("FashionMNIST", "raw"), Path("fashion-mnist"), Path("fashion_mnist")),
}

DESCRIPTIONS = {
    "mnist": "MNIST handwritten digits (IDX files from your data folder or ./data/mnist): "
    "grey 28x28 images (60,000 train / 10,000 test), 10 classes, pixels in [0, 1].",
    "fashion-mnist": "Fashion-MNIST clothing images (IDX files; apt-get install "
    "dataset-fashion-mnist): grey 28x28 images (60,000 train / 10,000 test), 10 classes, "
    "pixels in [0, 1].",
}


def _read_bytes(path: Path, label: str) -> bytes:
    """Read a plain or gzipped file, turning any I/O or decompression failure into DataError."""
    stem = path.name.removesuffix(".gz")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{label} file {path} could not be read ({reason(exc)}); replace it with an "
            f"intact copy of {stem}(.gz)."
        ) from exc


def read_idx(path: Path, expected_magic: int, label: str = "IDX") -> np.ndarray:
    """Parse one IDX file of unsigned bytes and return it as a uint8 array of its stored shape.

    Raises DataError for a wrong magic number, a short header, or data whose length does not
    match the dimensions in the header (a truncated or padded file).
    """
    stem = path.name.removesuffix(".gz")
    raw = _read_bytes(path, label)
    ndim = expected_magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < 4:
        raise DataError(
            f"{label} file {path} is only {len(raw)} bytes long, too short for an IDX header; "
            f"replace it with an intact copy of {stem}(.gz)."
        )
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DataError(
            f"{label} file {path} has magic number 0x{magic:08x} but 0x{expected_magic:08x} was "
            f"expected, so it is not a valid {stem}(.gz); replace it with the original file."
        )
    if len(raw) < header:
        raise DataError(
            f"{label} file {path} is truncated inside its header ({len(raw)} of {header} bytes); "
            f"replace it with an intact copy of {stem}(.gz)."
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected_len = int(np.prod(dims, dtype=np.int64))
    actual_len = len(raw) - header
    if actual_len != expected_len:
        problem = "truncated" if actual_len < expected_len else "longer than its header says"
        raise DataError(
            f"{label} file {path} is {problem}: shape {dims} needs {expected_len} data bytes but "
            f"it holds {actual_len}; replace it with an intact copy of {stem}(.gz)."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _places(root: Path, kind: str) -> list[Path]:
    """The folders under ``root`` that may hold the four files: itself, then known layouts."""
    return [root, *(root / sub for sub in SUBFOLDERS[kind])]


def find_idx_folder(
    roots: Path | Sequence[Path], kind: str, fix: str | None = None
) -> tuple[Path, ...]:
    """Return the paths of the four IDX files for ``kind`` under the first of ``roots`` (or its
    known subfolders) that holds all four, or raise DataError naming every place looked at.

    ``fix`` is the advice that ends the not-found message (defaults to setting --data-dir).
    """
    roots = [roots] if isinstance(roots, Path) else list(roots)
    label = LABELS[kind]
    partial: tuple[Path, list[str]] | None = None
    for folder in (place for root in roots for place in _places(root, kind)):
        found = [find_file(folder, stem) for stem in FILES]
        if all(found):
            return tuple(p for p in found if p is not None)
        if any(found) and partial is None:
            partial = (folder, [f"{s}(.gz)" for s, p in zip(FILES, found, strict=True) if not p])
    if partial is not None:
        folder, missing = partial
        raise DataError(
            f"{label} is incomplete in {folder}: missing {', '.join(missing)} of the expected "
            f"{EXPECTED}; copy the missing files there."
        )
    subfolders = describe_places([sub.as_posix() for sub in SUBFOLDERS[kind]])
    fix = fix or f"set --data-dir or {ENV_VAR} to the folder holding them"
    raise DataError(
        f"{label} not found: expected {EXPECTED} in {describe_places(roots)} (directly or in "
        f"{subfolders} inside); {fix}."
    )


def _fix_for(kind: str) -> str:
    """What to tell a user who has the dataset nowhere we look."""
    install = f"install it with `{INSTALL[kind]}` or " if kind in INSTALL else ""
    return (
        f"{install}put the files in {LOCAL_DIR / kind}, or set --data-dir or {ENV_VAR} to the "
        "folder holding them"
    )


def locate(kind: str, data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The folder the four ``kind`` files would be loaded from, or None if they are nowhere we
    look; cheap (no file is read), so the app can offer the dataset only when it is present."""
    try:
        return _find(kind, data_dir)[0].parent
    except DataError:
        return None


def _find(kind: str, data_dir: str | os.PathLike[str] | None) -> tuple[Path, ...]:
    """The four files: from ``data_dir`` alone when given (an explicit folder is never silently
    replaced by another), else from the standard places in order."""
    label = LABELS[kind]
    if data_dir is not None and str(data_dir) != "":
        root = resolve_data_dir(data_dir, label, EXPECTED)
        return find_idx_folder(root, kind)
    return find_idx_folder(standard_roots(kind), kind, _fix_for(kind))


def _split(images_path: Path, labels_path: Path, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one (images, labels) pair and check that they agree with each other."""
    images = read_idx(images_path, IMAGES_MAGIC, label)
    labels = read_idx(labels_path, LABELS_MAGIC, label)
    if len(images) != len(labels):
        raise DataError(
            f"{label} files disagree: {images_path} holds {len(images)} images but "
            f"{labels_path} holds {len(labels)} labels; replace them with a matching pair "
            f"from {EXPECTED}."
        )
    if len(images) == 0:
        raise DataError(
            f"{label} file {images_path} holds no images; replace it with an intact copy "
            f"from {EXPECTED}."
        )
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise DataError(
            f"{label} file {labels_path} contains label {int(labels.max())} but only 0 to "
            f"{NUM_CLASSES - 1} are valid; replace it with an intact copy from {EXPECTED}."
        )
    return images, labels


def load_idx(kind: str, *, seed: int, data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Load ``mnist`` or ``fashion-mnist`` from ``data_dir``, else the first standard place that
    holds them (``seed`` is unused: the split is the official one)."""
    del seed
    label = LABELS[kind]
    train_images, train_labels, test_images, test_labels = _find(kind, data_dir)
    x_train, y_train = _split(train_images, train_labels, label)
    x_test, y_test = _split(test_images, test_labels, label)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{label} train images are {x_train.shape[1:]} but test images are "
            f"{x_test.shape[1:]}; replace them with a matching set of {EXPECTED}."
        )
    scale = np.float32(255.0)
    return to_dataset(
        kind,
        (x_train.astype(np.float32) / scale)[:, None],
        y_train,
        (x_test.astype(np.float32) / scale)[:, None],
        y_test,
        NUM_CLASSES,
        DESCRIPTIONS[kind],
    )
