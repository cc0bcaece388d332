"""Block-sum downsampling of LCA arrays for drawing.

A browser cannot draw millions of heatmap cells, so big (step × layer/unit/weight) arrays are
shrunk before plotting. LCA is additive, so each output cell is the *sum* of a contiguous block of
input cells: totals over any union of blocks stay exact (up to float64 round-off), which a mean or
a stride would not give. Blocks are as even as possible (sizes differ by at most one) and their
start indices are returned so axes can be labelled with real step numbers and names.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["block_starts", "block_sum", "downsample_to_cells"]


def block_starts(n: int, blocks: int) -> np.ndarray:
    """Start index of each of ``min(blocks, n)`` contiguous, near-equal blocks covering ``0..n``.

    Blocks differ in length by at most one, so no cell stands for much more data than another.
    """
    if n < 0:
        raise ValueError(f"length must be >= 0, got {n}")
    if blocks < 1:
        raise ValueError(f"the number of blocks must be >= 1, got {blocks}")
    k = min(int(blocks), int(n))
    return (np.arange(k, dtype=np.int64) * n) // max(k, 1)


def _sum_dtype(a: np.ndarray) -> np.dtype:
    # Sums are taken in float64 (or int64) so that a float32 input keeps its totals.
    if a.dtype.kind in "biu":
        return np.dtype(np.int64)
    if a.dtype.kind == "c":
        return np.dtype(np.complex128)
    return np.dtype(np.float64)


def _reduce(a: np.ndarray, starts: np.ndarray, axis: int) -> np.ndarray:
    if a.shape[axis] == 0 or len(starts) == a.shape[axis]:
        return a  # nothing to merge
    return np.add.reduceat(a, starts, axis=axis)


def block_sum(
    a: np.ndarray, max_rows: int, max_cols: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum ``a`` over contiguous blocks so it has at most ``max_rows`` × ``max_cols`` cells.

    ``a`` is 1-D (rows only) or 2-D. ``max_cols=None`` keeps every column. Returns
    ``(sums, row_starts, col_starts)``: ``sums[i, j]`` is the sum of
    ``a[row_starts[i]:row_starts[i+1], col_starts[j]:col_starts[j+1]]`` (float64, or int64 for
    integer input), so ``sums.sum() == a.sum()`` up to float64 round-off. For 1-D input
    ``col_starts`` is ``[0]``.
    """
    a = np.asarray(a)
    if a.ndim not in (1, 2):
        raise ValueError(f"block_sum takes a 1-D or 2-D array, got {a.ndim}-D")
    a = a.astype(_sum_dtype(a), copy=False)
    rows = block_starts(a.shape[0], max_rows)
    out = _reduce(a, rows, 0)
    if a.ndim == 1:
        return out, rows, np.zeros(1, dtype=np.int64)
    cols = block_starts(a.shape[1], a.shape[1] if max_cols is None else max_cols)
    out = _reduce(out, cols, 1)
    return out, rows, cols


def downsample_to_cells(
    a: np.ndarray, max_cells: int = 500_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block-sum ``a`` (1-D or 2-D) to at most ``max_cells`` cells.

    An axis no longer than √max_cells (the layers of a step × layer map, a layer's units) keeps
    full resolution, because merging different layers or units into one cell would change what
    a cell means; the other axis (usually steps) takes the remaining budget. When both axes are
    long, both shrink by about the same factor. Returns what ``block_sum`` returns.
    """
    a = np.asarray(a)
    if max_cells < 1:
        raise ValueError(f"max_cells must be >= 1, got {max_cells}")
    if a.ndim == 1:
        return block_sum(a, min(a.shape[0], max_cells) or 1)
    if a.ndim != 2:
        raise ValueError(f"downsample_to_cells takes a 1-D or 2-D array, got {a.ndim}-D")
    r, c = a.shape
    if r * c <= max_cells:
        return block_sum(a, max(r, 1), max(c, 1))
    side = math.sqrt(max_cells)
    if c <= side:
        nr, nc = max(1, max_cells // c), c
    elif r <= side:
        nr, nc = r, max(1, max_cells // r)
    else:
        scale = math.sqrt(max_cells / (r * c))
        nc = min(c, max(1, math.floor(c * scale)))
        nr = min(r, max(1, max_cells // nc))
        nc = min(c, max(1, max_cells // nr))  # give back what the row axis did not use
    return block_sum(a, nr, nc)
