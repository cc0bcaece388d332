"""Seeded splitting, subsetting and standardization shared by all loaders.

Every random choice goes through a ``numpy.random.Generator`` built from the caller's seed (never
the global RNG), so the same arguments always give bit-identical tensors. Each purpose uses its
own stream (``default_rng((seed, STREAM))``) so that, for example, taking a subset does not
change which points a toy set generates.
"""

from __future__ import annotations

import numpy as np
import torch

from .dataset import Dataset

# Stream ids for ``np.random.default_rng((seed, stream))``; arbitrary but fixed forever, since
# changing them would change every dataset users have already seen.
STREAM_GENERATE = 0
STREAM_SPLIT = 1
STREAM_SUBSET = 2
STREAM_NOISE = 3


def rng_for(seed: int, stream: int) -> np.random.Generator:
    """An independent, reproducible Generator for one purpose (see module docstring)."""
    return np.random.default_rng((seed, stream))


def stratified_split(
    y: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Return shuffled ``(train_idx, test_idx)`` with each class split at ``test_fraction``.

    Stratifying keeps small tabular sets (iris has 50 per class) from ending up with a class
    missing from one side. Every class with at least two examples gets at least one test and
    one train example.
    """
    train_parts: list[np.ndarray] = []
    test_parts: list[np.ndarray] = []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_test = int(round(len(idx) * test_fraction))
        if len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test_parts.append(idx[:n_test])
        train_parts.append(idx[n_test:])
    train = rng.permutation(np.concatenate(train_parts))
    test = rng.permutation(np.concatenate(test_parts))
    return train, test


def standardize(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale features to zero mean / unit std using statistics of the TRAIN split only.

    Using train statistics avoids leaking test information into training. Constant features
    (std 0) are only centred, to avoid dividing by zero.
    """
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (x_train - mean) / std, (x_test - mean) / std


def to_dataset(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    description: str,
) -> Dataset:
    """Wrap numpy arrays as a Dataset with the dtypes the contract promises."""
    return Dataset(
        name=name,
        x_train=torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32)),
        y_train=torch.from_numpy(np.ascontiguousarray(y_train, dtype=np.int64)),
        x_test=torch.from_numpy(np.ascontiguousarray(x_test, dtype=np.float32)),
        y_test=torch.from_numpy(np.ascontiguousarray(y_test, dtype=np.int64)),
        input_shape=tuple(x_train.shape[1:]),
        num_classes=num_classes,
        description=description,
    )


def take_subset(ds: Dataset, subset: int, seed: int) -> Dataset:
    """Keep a seeded random ``subset`` of train examples and ``max(1, subset // 4)`` test ones.

    ``subset`` larger than the train split keeps everything. The kept indices are sorted so the
    subset preserves the original order of the data.
    """
    rng = rng_for(seed, STREAM_SUBSET)
    n_train = min(subset, ds.num_train)
    n_test = min(ds.num_test, max(1, subset // 4))
    train_idx = torch.from_numpy(np.sort(rng.permutation(ds.num_train)[:n_train]))
    test_idx = torch.from_numpy(np.sort(rng.permutation(ds.num_test)[:n_test]))
    return Dataset(
        name=ds.name,
        x_train=ds.x_train[train_idx].contiguous(),
        y_train=ds.y_train[train_idx].contiguous(),
        x_test=ds.x_test[test_idx].contiguous(),
        y_test=ds.y_test[test_idx].contiguous(),
        input_shape=ds.input_shape,
        num_classes=ds.num_classes,
        description=ds.description,
    )
