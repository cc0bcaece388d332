"""What a run needs before its first step, shared by training and recomputing (posthoc).

Both must build the very same dataset, model and measurement set from a config, so that a run
recomputed from its saved weights measures exactly what training measured. Keeping these
helpers here (and not in train.py) lets posthoc use them without importing the training loop,
and the training loop use posthoc's weight-saving tracker without an import cycle.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn

import data

from . import models
from .config import RunConfig

__all__ = [
    "TrainingError",
    "build_data_and_model",
    "measurement_set",
    "resolve_device",
    "seed_everything",
]


class TrainingError(RuntimeError):
    """A run could not start (bad data folder, too large to record, …): one sentence."""


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; ``cuda`` without a GPU is one clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device = 'cuda' was asked for but no CUDA GPU is available; use auto.")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_data_and_model(config: RunConfig) -> tuple[data.Dataset, nn.Module]:
    """The run's dataset and a freshly initialised model (seed first for the same weights)."""
    try:
        ds = data.load(
            config.dataset,
            subset=config.subset,
            seed=config.seed,
            data_dir=config.data_dir,
            **config.dataset_options,
        )
        model = models.build(config.model, ds.input_shape, ds.num_classes, **config.model_options)
    except ValueError as e:  # DataError, ModelError: all one sentence
        raise TrainingError(str(e)) from None
    return ds, model


def measurement_set(ds: data.Dataset, config: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed measurement set: the training split, a seeded subset when capped."""
    n = ds.num_train
    if config.measure_size is None or config.measure_size >= n:
        return ds.x_train, ds.y_train
    g = torch.Generator().manual_seed(config.seed + 1)
    idx = torch.randperm(n, generator=g)[: config.measure_size].sort().values
    return ds.x_train[idx], ds.y_train[idx]


def val_measurement_set(ds: data.Dataset, config: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed held-out measurement set (``measure_val``): the test split, a seeded subset of
    at most ``measure_size`` examples when capped, so both sets cost about the same."""
    n = len(ds.x_test)
    if config.measure_size is None or config.measure_size >= n:
        return ds.x_test, ds.y_test
    g = torch.Generator().manual_seed(config.seed + 3)
    idx = torch.randperm(n, generator=g)[: config.measure_size].sort().values
    return ds.x_test[idx], ds.y_test[idx]
