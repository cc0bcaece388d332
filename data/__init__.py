"""Dataset registry for LCA Lab: one ``load(name)`` for toy, bundled and user-supplied data.

Public API::

    data.names() -> list[str]              # registered dataset names, sorted
    data.describe(name) -> str             # one-line description, without loading anything
    data.default_options(name) -> dict     # the options ``name`` accepts, with their defaults
    data.info(name) -> data.DatasetInfo    # input shape, classes, images?, without loading
    data.image_shape(name, features)       # (C, H, W) of an image set's flattened input, or None
    data.load(name, *, subset=None, seed=0, data_dir=None, **options) -> data.Dataset
    data.locate(name, data_dir=None) -> Path | None   # where an IDX dataset would be read from
    data.Dataset, data.DataError

Every bad input raises ``DataError`` (a ``ValueError``) whose message is one sentence naming
the problem and the fix. ``seed`` drives every random choice, so the same arguments always give
bit-identical tensors. Nothing is ever downloaded: ``mnist``, ``fashion-mnist`` and ``cifar10``
read from ``data_dir`` or ``$LCA_DATA_DIR``; ``mnist`` and ``fashion-mnist`` are also found in
``/usr/share/datasets/<name>`` (Debian's ``dataset-fashion-mnist``) and ``./data/<name>``. See
the loader modules for per-dataset details.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import MappingProxyType

from . import cifar, idx, sklearn_sets, toy
from .dataset import DataError, Dataset
from .options import check_int, check_seed
from .splits import take_subset

__all__ = [
    "DataError",
    "Dataset",
    "DatasetInfo",
    "default_options",
    "describe",
    "image_shape",
    "info",
    "load",
    "locate",
    "names",
]


@dataclass(frozen=True)
class _Spec:
    """How to load one registered dataset."""

    description: str
    loader: Callable[..., Dataset]  # called as loader(seed=..., data_dir=..., **options)
    info: DatasetInfo
    defaults: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetInfo:
    """What is known about a dataset without loading it: the one place dataset shapes live.

    ``input_shape`` is one example's shape; for IDX files (MNIST, Fashion-MNIST) it is the
    original files' (1, 28, 28), while files of another square size load with their own.
    ``images``: examples are pictures (C, H, W), so figures may draw weights as images;
    ``on_disk``: read from the user's data folder (the only datasets that need files).
    """

    input_shape: tuple[int, ...]
    num_classes: int
    images: bool
    on_disk: bool


def _build_registry() -> dict[str, _Spec]:
    registry: dict[str, _Spec] = {}
    for kind, description in toy.DESCRIPTIONS.items():
        registry[kind] = _Spec(
            description,
            partial(toy.load_toy, kind),
            DatasetInfo(toy.INPUT_SHAPE, toy.NUM_CLASSES, False, False),
            toy.DEFAULTS,
        )
    for kind, description in sklearn_sets.DESCRIPTIONS.items():
        shape, classes = sklearn_sets.SHAPES[kind]
        registry[kind] = _Spec(
            description,
            partial(sklearn_sets.load_sklearn, kind),
            DatasetInfo(shape, classes, len(shape) == 3, False),
            sklearn_sets.DEFAULTS,
        )
    for kind, description in idx.DESCRIPTIONS.items():
        registry[kind] = _Spec(
            description,
            partial(idx.load_idx, kind),
            DatasetInfo(idx.IMAGE_SHAPE, idx.NUM_CLASSES, True, True),
        )
    registry["cifar10"] = _Spec(
        cifar.DESCRIPTION,
        cifar.load_cifar10,
        DatasetInfo(cifar.IMAGE_SHAPE, cifar.NUM_CLASSES, True, True),
    )
    return registry


_REGISTRY: Mapping[str, _Spec] = MappingProxyType(_build_registry())

# Spellings people naturally type that differ from the canonical name by more than case or "_".
_ALIASES = {"cifar-10": "cifar10", "fashionmnist": "fashion-mnist", "breastcancer": "breast-cancer"}


def names() -> list[str]:
    """Return all registered dataset names, sorted."""
    return sorted(_REGISTRY)


def _canonical(name: object) -> str:
    """Map a user-typed name to its registry key (case and ``_``/``-`` do not matter)."""
    if isinstance(name, str):
        key = name.strip().lower().replace("_", "-")
        key = _ALIASES.get(key, key)
        if key in _REGISTRY:
            return key
    raise DataError(f"Unknown dataset {name!r}; choose one of: {', '.join(names())}.")


def describe(name: str) -> str:
    """Return the one-line description of dataset ``name`` without loading it."""
    return _REGISTRY[_canonical(name)].description


def default_options(name: str) -> dict[str, object]:
    """Return the options dataset ``name`` accepts in ``load(**options)``, with default values."""
    return dict(_REGISTRY[_canonical(name)].defaults)


def info(name: str) -> DatasetInfo:
    """Input shape, class count and kind of dataset ``name``, without loading or finding it."""
    return _REGISTRY[_canonical(name)].info


def image_shape(name: object, in_features: int) -> tuple[int, int, int] | None:
    """(C, H, W) of image dataset ``name`` whose flattened input has ``in_features`` values, else
    None (not an image dataset, unknown, or no shape fits). IDX files may hold any square size,
    so a size other than the registered one is inferred as 1 or 3 square channels."""
    try:
        known = info(name) if name is not None else None
    except DataError:
        return None
    if known is None or not known.images:
        return None
    if math.prod(known.input_shape) == in_features:
        return tuple(known.input_shape)  # type: ignore[return-value]
    for c in (1, 3):
        if in_features % c:
            continue
        side = math.isqrt(in_features // c)
        if side > 1 and side * side * c == in_features:
            return (c, side, side)
    return None


def load(
    name: str,
    *,
    subset: int | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
    **options: object,
) -> Dataset:
    """Load dataset ``name`` as float32/int64 tensors, already split into train and test.

    ``subset`` keeps a seeded random ``subset`` train examples (all if fewer exist) and
    ``min(num_test, max(1, subset // 4))`` test examples. ``data_dir`` (else ``$LCA_DATA_DIR``)
    is only read by datasets stored on disk. ``options`` are dataset-specific, see
    ``default_options(name)``; unknown ones are an error rather than silently ignored.
    """
    key = _canonical(name)
    spec = _REGISTRY[key]
    seed_ = check_seed(seed)
    unknown = sorted(set(options) - set(spec.defaults))
    if unknown:
        allowed = (
            f"the allowed options are {', '.join(sorted(spec.defaults))}"
            if spec.defaults
            else f"{key} takes no options"
        )
        raise DataError(f"Unknown option {unknown[0]!r} for dataset {key!r}; {allowed}.")
    subset_ = None if subset is None else check_int("subset", subset, minimum=1)
    dataset = spec.loader(seed=seed_, data_dir=data_dir, **{**spec.defaults, **options})
    if subset_ is not None:
        dataset = take_subset(dataset, subset_, seed_)
    return dataset


def locate(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """Return the folder ``mnist`` or ``fashion-mnist`` would be read from (``data_dir``, else the
    first standard place holding all four files), or None when it is nowhere or ``name`` is not
    an IDX dataset; reads no file, so the app can offer a dataset only when it is present."""
    key = _canonical(name)
    return idx.locate(key, data_dir) if key in idx.LABELS else None
