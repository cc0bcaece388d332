"""TensorFlow-Playground-style 2-D toy sets: spiral, circles, xor, gauss, moons.

They are generated, not downloaded, so they work offline and are small enough to watch a network
learn in real time.

Conventions (the same for all five, so models and plots can be shared):

* Coordinates: the noise-free shapes lie within [-1, 1] on both axes (the Playground's
  [-6, 6] square divided by 6); Gaussian jitter may push points slightly outside.
* ``noise``: standard deviation of the isotropic Gaussian jitter added to every point, in those
  coordinate units. The default 0.05 (2.5% of the square's width) keeps every shape learnable
  while still blurring the boundary, roughly the Playground's noisiest spiral; 0 gives clean
  shapes and 0.1 already makes the spiral's centre ambiguous.
* ``train_fraction``: share of the ``n`` points used for training (default 0.5, as in the
  Playground's "ratio of training to test data" default); the rest are the test split.
* ``n``: total number of points (default 1000), half of them per class where the shape allows it.
* Labels: 0/1; class 1 is the Playground's "positive" (orange vs blue) class: inner disk,
  first spiral arm, same-sign quadrants, upper-right blob, lower moon.
* ``seed`` drives a ``numpy.random.Generator``; same arguments give identical tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .dataset import Dataset
from .options import check_fraction, check_int, check_nonnegative
from .splits import STREAM_GENERATE, STREAM_NOISE, STREAM_SPLIT, rng_for, to_dataset

DEFAULTS: dict[str, object] = {"noise": 0.05, "train_fraction": 0.5, "n": 1000}
INPUT_SHAPE = (2,)  # every toy set: points in the plane, 2 classes
NUM_CLASSES = 2

MAX_POINTS = 10_000_000  # a typo such as n=10**12 should be an error, not an out-of-memory crash

Generator = Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def _halves(n: int) -> tuple[int, int]:
    """Split ``n`` points into (class 0, class 1) counts, class 0 taking the odd one."""
    return n - n // 2, n // 2


def _spiral(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved arms, each turning 1.75 times (as in the Playground)."""
    n0, n1 = _halves(n)
    points, labels = [], []
    for label, count, phase in ((0, n0, np.pi), (1, n1, 0.0)):
        r = rng.uniform(0.0, 1.0, count)
        t = 1.75 * 2.0 * np.pi * r + phase
        points.append(np.stack([r * np.sin(t), r * np.cos(t)], axis=1))
        labels.append(np.full(count, label))
    return np.concatenate(points), np.concatenate(labels)


def _circles(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A disk of radius 0.5 (class 1) inside a ring from 0.7 to 1 (class 0), like the Playground."""
    n0, n1 = _halves(n)
    points, labels = [], []
    for label, count, (r_lo, r_hi) in ((0, n0, (0.7, 1.0)), (1, n1, (0.0, 0.5))):
        r = rng.uniform(r_lo, r_hi, count)
        angle = rng.uniform(0.0, 2.0 * np.pi, count)
        points.append(np.stack([r * np.sin(angle), r * np.cos(angle)], axis=1))
        labels.append(np.full(count, label))
    return np.concatenate(points), np.concatenate(labels)


def _xor(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Uniform points in the square; class 1 where x and y have the same sign.

    Points are pushed 0.05 away from the axes (the Playground's padding of 0.3 / 6) so that the
    noise-free set has a margin; labels come from the noise-free position.
    """
    xy = rng.uniform(-1.0, 1.0, (n, 2))
    padding = 0.05
    xy = xy + np.where(xy >= 0, padding, -padding)
    xy = xy / (1.0 + padding)  # keep the padded square inside [-1, 1]
    labels = (xy[:, 0] * xy[:, 1] >= 0).astype(np.int64)
    return xy, labels


def _gauss(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian blobs (std 0.12) centred at (1/3, 1/3) (class 1) and (-1/3, -1/3) (class 0)."""
    n0, n1 = _halves(n)
    points, labels = [], []
    for label, count, centre in ((0, n0, -1.0 / 3.0), (1, n1, 1.0 / 3.0)):
        points.append(rng.normal(centre, 0.12, (count, 2)))
        labels.append(np.full(count, label))
    return np.concatenate(points), np.concatenate(labels)


def _moons(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's two half-moons, centred and scaled by 1/1.5 to x in [-1, 1], y in ±0.5."""
    n0, n1 = _halves(n)
    t0 = rng.uniform(0.0, np.pi, n0)
    t1 = rng.uniform(0.0, np.pi, n1)
    upper = np.stack([np.cos(t0), np.sin(t0)], axis=1)
    lower = np.stack([1.0 - np.cos(t1), 0.5 - np.sin(t1)], axis=1)
    points = (np.concatenate([upper, lower]) - np.array([0.5, 0.25])) / 1.5
    labels = np.concatenate([np.zeros(n0, dtype=np.int64), np.ones(n1, dtype=np.int64)])
    return points, labels


GENERATORS: dict[str, Generator] = {
    "spiral": _spiral,
    "circles": _circles,
    "xor": _xor,
    "gauss": _gauss,
    "moons": _moons,
}

DESCRIPTIONS: dict[str, str] = {
    "spiral": "Two interleaved spiral arms in 2-D (Playground style), 2 classes, "
    "points in [-1, 1].",
    "circles": "A disk inside a ring in 2-D (Playground style), 2 classes, points in [-1, 1].",
    "xor": "Quadrants labelled by the sign of x*y in 2-D (Playground style), 2 classes, "
    "points in [-1, 1].",
    "gauss": "Two Gaussian blobs in 2-D (Playground style), 2 classes, points in [-1, 1].",
    "moons": "Two interleaving half-moons in 2-D, 2 classes, points in [-1, 1].",
}


def load_toy(
    kind: str,
    *,
    seed: int,
    data_dir: object = None,
    noise: object = DEFAULTS["noise"],
    train_fraction: object = DEFAULTS["train_fraction"],
    n: object = DEFAULTS["n"],
) -> Dataset:
    """Generate toy set ``kind`` and split it; ``data_dir`` is accepted and ignored."""
    del data_dir  # generated data needs no folder
    noise_ = check_nonnegative("noise", noise)
    fraction = check_fraction("train_fraction", train_fraction)
    n_ = check_int("n", n, minimum=2, maximum=MAX_POINTS)

    points, labels = GENERATORS[kind](n_, rng_for(seed, STREAM_GENERATE))
    if noise_ > 0:
        points = points + rng_for(seed, STREAM_NOISE).normal(0.0, noise_, points.shape)

    order = rng_for(seed, STREAM_SPLIT).permutation(n_)
    n_train = min(max(int(round(n_ * fraction)), 1), n_ - 1)
    train, test = order[:n_train], order[n_train:]
    return to_dataset(
        kind, points[train], labels[train], points[test], labels[test], 2, DESCRIPTIONS[kind]
    )
