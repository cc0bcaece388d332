"""Take it home: the numbers a page shows, as CSV text a spreadsheet opens.

Pure functions (no Streamlit) so a notebook, a test and the pages' download buttons produce the
same file. Numbers are written with ``repr`` precision (a float read back is the same float);
one header row; columns in the order given.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["rows_csv", "series_csv", "step_matrix_csv"]


def _cell(value: object) -> object:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return repr(value)
    return "" if value is None else value


def rows_csv(rows: Iterable[Mapping[str, object]]) -> str:
    """A table given as row dicts (what ``st.table``/``st.dataframe`` show) as CSV; the columns
    are every key seen, in first-seen order, and a missing cell is empty."""
    rows = list(rows)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(columns)
    for row in rows:
        w.writerow([_cell(row.get(c)) for c in columns])
    return out.getvalue()


def series_csv(columns: Mapping[str, Sequence[object] | np.ndarray]) -> str:
    """Equal-length columns (e.g. step, loss, sum of LCA) as CSV."""
    names = list(columns)
    arrays = [np.asarray(columns[n]).ravel() for n in names]
    lengths = {len(a) for a in arrays}
    if len(lengths) > 1:
        raise ValueError(f"Columns of different lengths cannot share rows: {sorted(lengths)}.")
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(names)
    for i in range(lengths.pop() if lengths else 0):
        w.writerow([_cell(a[i]) for a in arrays])
    return out.getvalue()


def step_matrix_csv(
    steps: np.ndarray, matrix: np.ndarray, names: Sequence[str], step_name: str = "step"
) -> str:
    """A (T, N) matrix, one row per step and one column per layer or unit, with the step
    column first: the per-layer or per-unit series a heatmap draws, unthinned."""
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[1] != len(names) or m.shape[0] != len(steps):
        raise ValueError(
            f"A {m.shape} matrix does not match {len(steps)} steps × {len(names)} names."
        )
    return series_csv(
        {step_name: np.asarray(steps), **{str(n): m[:, j] for j, n in enumerate(names)}}
    )
