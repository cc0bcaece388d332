"""The two types every dataset loader shares: the ``Dataset`` container and ``DataError``.

They live in their own module so that the loaders (toy, scikit-learn, IDX, CIFAR) can import
them without importing the registry in ``data/__init__.py``, which imports the loaders.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class DataError(ValueError):
    """Any problem with a dataset request or with the files on disk.

    The message is always one plain sentence that names the problem and the fix, so the CLI and
    the Streamlit pages can show it to the user verbatim instead of a traceback.
    """


def reason(exc: BaseException) -> str:
    """Condense an underlying exception into a clause that fits inside a one-sentence message."""
    text = " ".join(str(exc).split()).rstrip(".") or type(exc).__name__
    return text.replace(". ", "; ")


@dataclass(eq=False, repr=False)
class Dataset:
    """A loaded dataset, already split, as tensors ready for training.

    ``x_*`` are float32 with shape ``(N, *input_shape)``; ``y_*`` are int64 class indices in
    ``[0, num_classes)``. ``eq`` and ``repr`` are disabled/overridden because comparing or
    printing whole tensors is never what a caller wants.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int
    description: str

    def __post_init__(self) -> None:
        # Checking here catches a loader bug at its source rather than deep inside training.
        self.input_shape = tuple(int(d) for d in self.input_shape)
        splits = (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test))
        for split, x, y in splits:
            if x.dtype != torch.float32 or y.dtype != torch.int64:
                raise DataError(
                    f"Dataset {self.name!r} {split} split has dtypes {x.dtype}/{y.dtype}; "
                    "inputs must be float32 and labels int64."
                )
            if tuple(x.shape[1:]) != self.input_shape or y.ndim != 1 or len(x) != len(y):
                raise DataError(
                    f"Dataset {self.name!r} {split} split has inputs {tuple(x.shape)} and labels "
                    f"{tuple(y.shape)}, which do not match input_shape {self.input_shape}; "
                    "inputs must be (N, *input_shape) and labels (N,)."
                )

    @property
    def num_train(self) -> int:
        """Number of training examples."""
        return int(self.y_train.shape[0])

    @property
    def num_test(self) -> int:
        """Number of test examples."""
        return int(self.y_test.shape[0])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, num_train={self.num_train}, num_test={self.num_test}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )
