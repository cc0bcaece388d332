"""Small real datasets that ship inside scikit-learn: digits, iris, wine, breast-cancer.

They need no download and no data folder, so they are the offline "real data" choice.

* ``digits``: 1,797 8x8 grey images of handwritten digits, shape (1, 8, 8) so CNNs work;
  pixel values 0..16 are divided by 16 to lie in [0, 1].
* ``iris``, ``wine``, ``breast-cancer``: tabular, shape (d,); each feature is standardized with
  the mean and std of the TRAIN split only (no test leakage).

The split is stratified by class and seeded; option ``test_fraction`` (default 0.2).
"""

from __future__ import annotations

import numpy as np

from .dataset import Dataset
from .options import check_fraction
from .splits import STREAM_SPLIT, rng_for, standardize, stratified_split, to_dataset

DEFAULTS: dict[str, object] = {"test_fraction": 0.2}

# (input shape, classes) of each set, known without loading it (sklearn is slow to import).
SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "digits": ((1, 8, 8), 10),
    "iris": ((4,), 3),
    "wine": ((13,), 3),
    "breast-cancer": ((30,), 2),
}

DESCRIPTIONS: dict[str, str] = {
    "digits": "Handwritten digits from scikit-learn: 1,797 grey 8x8 images, 10 classes, "
    "pixels in [0, 1].",
    "iris": "Iris flowers from scikit-learn: 150 examples, 4 standardized features, 3 classes.",
    "wine": "Wine cultivars from scikit-learn: 178 examples, 13 standardized features, 3 classes.",
    "breast-cancer": "Breast cancer diagnosis from scikit-learn: 569 examples, "
    "30 standardized features, 2 classes.",
}


def _raw(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (features, labels) for ``kind``; sklearn is imported lazily as it is slow to load."""
    from sklearn import datasets

    loaders = {
        "digits": datasets.load_digits,
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
        "breast-cancer": datasets.load_breast_cancer,
    }
    bunch = loaders[kind]()
    if kind == "digits":
        return np.asarray(bunch.images, dtype=np.float64), np.asarray(bunch.target)
    return np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target)


def load_sklearn(
    kind: str,
    *,
    seed: int,
    data_dir: object = None,
    test_fraction: object = DEFAULTS["test_fraction"],
) -> Dataset:
    """Load scikit-learn set ``kind`` with a seeded stratified split; ``data_dir`` is ignored."""
    del data_dir  # bundled with scikit-learn
    fraction = check_fraction("test_fraction", test_fraction)
    x, y = _raw(kind)
    train, test = stratified_split(y, fraction, rng_for(seed, STREAM_SPLIT))
    num_classes = int(y.max()) + 1
    if kind == "digits":
        x = x[:, None, :, :] / 16.0  # (N, 1, 8, 8) in [0, 1]
        x_train, x_test = x[train], x[test]
    else:
        x_train, x_test = standardize(x[train], x[test])
    return to_dataset(kind, x_train, y[train], x_test, y[test], num_classes, DESCRIPTIONS[kind])
