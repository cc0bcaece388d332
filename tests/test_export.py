"""Take it home: the CSV files behind every download button hold exactly the numbers shown."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from lca.export import rows_csv, series_csv, step_matrix_csv

ROOT = Path(__file__).resolve().parents[1]


def parse(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_rows_csv_keeps_every_column_and_exact_floats():
    x = 0.1 + 0.2  # not 0.3: the file must give back the same float
    text = rows_csv([{"run": "a, b", "loss": x}, {"run": "c", "steps": np.int64(5)}])
    rows = parse(text)
    assert rows[0] == ["run", "loss", "steps"]
    assert rows[1] == ["a, b", repr(x), ""] and float(rows[1][1]) == x
    assert rows[2] == ["c", "", "5"]
    assert rows_csv([]) == "\n"


def test_step_matrix_csv_is_the_unthinned_series():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(7, 3))
    steps = np.array([1, 2, 3, 3.5, 4, 5, 6])  # a prune after step 3 sits at 3.5
    rows = parse(step_matrix_csv(steps, m, ["fc1.weight", "fc1.bias", "out.weight"]))
    assert rows[0] == ["step", "fc1.weight", "fc1.bias", "out.weight"]
    back = np.array([[float(c) for c in r] for r in rows[1:]])
    assert np.array_equal(back[:, 0], steps) and np.array_equal(back[:, 1:], m)
    with pytest.raises(ValueError, match="does not match"):
        step_matrix_csv(steps[:3], m, ["a", "b", "c"])
    with pytest.raises(ValueError, match="different lengths"):
        series_csv({"a": [1, 2], "b": [1]})


@pytest.mark.slow
def test_layers_and_loss_pages_offer_their_data_as_csv(make_run, runs_folder):
    make_run("full.h5", runs_folder)
    for name, least in (("layers", 2), ("loss", 1)):
        at = AppTest.from_file(str(ROOT / "pages" / f"{name}.py"), default_timeout=90)
        at.session_state["run"] = "full.h5"
        at.run()
        assert not at.exception, [e.message for e in at.exception]
        buttons = at.get("download_button")
        assert len(buttons) >= least, name
        assert all(b.proto.label == "Download CSV" and b.proto.ignore_rerun for b in buttons)
