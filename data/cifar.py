"""CIFAR-10 from the official "python version" pickle batches in the user's data folder.

Security: the batches are pickles, and ``pickle.load`` on a file from disk can run arbitrary code
(a pickle may name any importable callable, e.g. ``os.system``). The files only legitimately
contain dicts, lists, ints, bytes and one numpy array, so they are read with ``_SafeUnpickler``,
whose ``find_class`` hands out exactly the numpy pieces an array needs (plus a latin1-only
``_codecs.encode``, see ``_ALLOWED``) and refuses everything else with DataError before anything
runs. Object-dtype arrays are refused too, because their
elements would be further pickled objects.

Layout: ``cifar-10-batches-py/`` (``data_batch_1`` ... ``data_batch_5`` and ``test_batch``)
inside the data folder, or the data folder being that folder itself. Images come out as
(N, 3, 32, 32) float32 in [0, 1]; the split is the official 50,000 / 10,000 one.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import DataError, Dataset, reason
from .folders import describe_places, find_file, resolve_data_dir
from .splits import to_dataset

LABEL = "CIFAR-10"
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
EXPECTED = f"{', '.join(TRAIN_FILES)} and {TEST_FILE}"
NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
SOURCE = "the CIFAR-10 python version (cifar-10-python.tar.gz)"

DESCRIPTION = (
    "CIFAR-10 colour photos from your data folder: 32x32 RGB images "
    "(50,000 train / 10,000 test), 10 classes, pixels in [0, 1]."
)


def _numpy_attr(modules: tuple[str, ...], name: str) -> Any:
    """Return ``name`` from the first importable module (numpy 2 moved ``core`` to ``_core``)."""
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy provides no {name} in {modules}")


def _safe_dtype(*args: Any) -> np.dtype:
    """``numpy.dtype`` that refuses object dtypes, whose contents would be arbitrary objects."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("object dtype refused")
    return dtype


def _latin1_encode(text: str, encoding: str) -> bytes:
    """The one ``_codecs.encode`` call pickle uses for ``bytes`` in protocols 0-2, and no other."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed for latin1 text")
    return text.encode("latin1")


_MULTIARRAY = ("numpy._core.multiarray", "numpy.core.multiarray")
_NUMERIC = ("numpy._core.numeric", "numpy.core.numeric")

# (module, name) -> object: everything a pickled numpy array may reference, nothing else.
# ``_reconstruct``/``ndarray``/``dtype`` cover protocols 0-4 (the official files are protocol 2
# pickles from Python 2); ``_frombuffer`` covers protocol 5 (``pickle.dump(..., protocol=5)``
# and the default protocol from Python 3.14 on); ``_codecs.encode``, restricted to latin1, is
# how Python 3 writes ``bytes`` (such as the b"data" key) in protocols 0-2.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
    ("_codecs", "encode"): _latin1_encode,
    **{(m, "_reconstruct"): _numpy_attr(_MULTIARRAY, "_reconstruct") for m in _MULTIARRAY},
    **{(m, "_frombuffer"): _numpy_attr(_NUMERIC, "_frombuffer") for m in _NUMERIC},
}


class _Refused(pickle.UnpicklingError):
    """A pickle asked for a global that is not on the allow-list."""


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy globals in ``_ALLOWED``."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


def safe_unpickle(path: Path) -> Any:
    """Unpickle a CIFAR batch with the restricted unpickler, mapping every failure to DataError."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(
            f"{LABEL} file {path} could not be read ({reason(exc)}); replace it with an "
            f"intact copy of {path.name} from {SOURCE}."
        ) from exc
    try:
        return _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _Refused as exc:
        name = reason(exc)[:80]  # the name comes from the file: keep it short and on one line
        raise DataError(
            f"{LABEL} file {path} asks to load Python object {name} which a CIFAR batch never "
            f"contains, so it was refused unexecuted; replace it with the original {path.name} "
            f"from {SOURCE}."
        ) from None
    except Exception as exc:  # any malformed pickle: truncated, garbage, wrong types
        raise DataError(
            f"{LABEL} file {path} is not a readable CIFAR batch ({reason(exc)}); replace it "
            f"with an intact copy of {path.name} from {SOURCE}."
        ) from None


def _get(batch: dict[Any, Any], key: str) -> Any:
    """Look up ``key`` as bytes (Python 2 pickles) or str (pickles written by Python 3)."""
    if key.encode() in batch:
        return batch[key.encode()]
    return batch.get(key)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 (N, 3, 32, 32), labels int64 (N,)) from one batch file."""

    def bad(problem: str) -> DataError:
        return DataError(
            f"{LABEL} file {path} {problem}; replace it with the original {path.name} "
            f"from {SOURCE}."
        )

    batch = safe_unpickle(path)
    if not isinstance(batch, dict):
        raise bad(f"holds a {type(batch).__name__} instead of a dict with data and labels")
    images, labels = _get(batch, "data"), _get(batch, "labels")
    if images is None or labels is None:
        raise bad("has no 'data' and 'labels' entries")
    size = int(np.prod(IMAGE_SHAPE))
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2:
        raise bad("has 'data' that is not a 2-D uint8 array")
    if images.shape[1] != size:
        raise bad(f"has rows of {images.shape[1]} values instead of {size}")
    try:
        labels = np.asarray(labels)
    except Exception:
        raise bad("has 'labels' that are not a list of integers") from None
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise bad("has 'labels' that are not a list of integers")
    if len(labels) != len(images):
        raise bad(f"has {len(images)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise bad(f"has labels outside 0 to {NUM_CLASSES - 1}")
    return images.reshape(-1, *IMAGE_SHAPE), labels.astype(np.int64)


def find_cifar_folder(root: Path) -> Path:
    """Return the folder holding the six batch files, or raise DataError naming where we looked."""
    places = [root / FOLDER, root]
    for folder in places:
        if all(find_file(folder, name, ("",)) for name in (*TRAIN_FILES, TEST_FILE)):
            return folder
    raise DataError(
        f"{LABEL} not found: expected {EXPECTED} in {describe_places(places)}; "
        "set --data-dir or LCA_DATA_DIR."
    )


def load_cifar10(*, seed: int, data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Load CIFAR-10 from the data folder (``seed`` is unused: the split is the official one)."""
    del seed
    root = resolve_data_dir(data_dir, LABEL, EXPECTED)
    folder = find_cifar_folder(root)
    train = [read_batch(folder / name) for name in TRAIN_FILES]
    x_test, y_test = read_batch(folder / TEST_FILE)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    if len(x_train) == 0 or len(x_test) == 0:
        raise DataError(
            f"{LABEL} in {folder} holds no train or no test images; replace {EXPECTED} "
            "with the original files."
        )
    scale = np.float32(255.0)
    return to_dataset(
        "cifar10",
        x_train.astype(np.float32) / scale,
        y_train,
        x_test.astype(np.float32) / scale,
        y_test,
        NUM_CLASSES,
        DESCRIPTION,
    )
