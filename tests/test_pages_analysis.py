"""The analysis pages (Loss, Layers, Neurons & weights, Compare) under AppTest on real runs.

Each page is run on its own (AppTest.from_file) with the run picked through session state, as the
app's sidebar does. Checks: no exception, the expected charts (plotly JSON read from the element's
proto), helped green / hurt red in the figures, one sentence for what a run cannot show (record
mode, bad file, empty run), live (status "running") runs drawn the same way, and the heatmap click
that drills into a layer.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from streamlit.proto.WidgetStates_pb2 import WidgetState
from streamlit.testing.v1 import AppTest

from lca import figures as F
from lca.figures.common import HELPED, HURT

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 60


def page(name: str, run: str | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / f"{name}.py"), default_timeout=TIMEOUT)
    if run is not None:
        at.session_state["run"] = run
    return at


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def titles(at: AppTest) -> list[str]:
    return [((s["layout"].get("title") or {}).get("text") or "") for s in charts(at)]


def sentences(at: AppTest) -> list[str]:
    return [e.value for e in [*at.info, *at.warning, *at.error]]


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.message for e in at.exception]
    return at


def arr(v) -> np.ndarray:
    """A plotly JSON array: a list, or plotly's typed array {dtype, bdata (base64), shape}."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        shape = v.get("shape")
        if shape:
            a = a.reshape([int(x) for x in str(shape).split(",")])
        return a
    return np.asarray(v, dtype=float)


def colours(spec: dict) -> set[str]:
    out: set[str] = set()
    for trace in spec["data"]:
        for key in ("marker", "line"):
            c = (trace.get(key) or {}).get("color")
            if isinstance(c, str):
                out.add(c)
            elif isinstance(c, list):
                out.update(x for x in c if isinstance(x, str))
        for _, c in trace.get("colorscale") or []:
            out.add(c)
    return out


@pytest.fixture
def full_run(make_run, runs_folder) -> str:
    make_run("full.h5", runs_folder)
    return "full.h5"


def copy_full(make_run, folder: Path, name: str) -> None:
    """The session's default run under another name (no extra training)."""
    shutil.copy(make_run("full.h5"), folder / name)


# ---------------------------------------------------------------------------------------------
# Loss.


def test_loss_page(full_run):
    at = ok(page("loss", full_run).run())
    t = titles(at)
    assert len(t) == 4
    assert "Measured loss" in t[0] and "error" in t[1] and "accuracy" in t[2]
    assert "helped" in t[3]
    specs = charts(at)
    measured, rebuilt = specs[0]["data"][:2]
    assert measured["name"].startswith("measured") and rebuilt["name"].startswith("L₀")
    assert {HELPED, HURT} <= colours(specs[3])
    labels = [m.label for m in at.metric]
    assert labels == [
        "Final loss",
        "Test accuracy",
        "Conservation error",
        "Parameters helping per step",
    ]
    assert not any("unallocated" in t for t in sentences(at))  # rk4 on a small run: exact
    at.toggle(key="loss_log").set_value(True).run()
    assert charts(ok(at))[0]["layout"]["yaxis"]["type"] == "log"


def test_loss_page_says_how_to_shrink_a_large_conservation_error(make_run, runs_folder):
    make_run("euler.h5", runs_folder, method="euler", lr=0.5)
    at = ok(page("loss", "euler.h5").run())
    hint = [t for t in sentences(at) if "unallocated" in t]
    assert hint and "euler" in hint[0] and "rk4-adaptive" in hint[0]


def test_loss_page_counts_steps_over_the_papers_limit_and_prices_the_fix(make_run, runs_folder):
    make_run("euler-big.h5", runs_folder, method="euler", lr=0.5)
    at = ok(page("loss", "euler-big.h5").run())
    note = [t for t in sentences(at) if "steps left more than 0.001" in t]
    assert note and "method rk4-paper" in note[0] and "× this run's LCA time" in note[0]


def test_loss_page_marks_prune_interventions(make_run, runs_folder):
    make_run(
        "pruned.h5",
        runs_folder,
        techniques=[{"name": "prune-magnitude", "sparsity": 0.5, "start": 10}],
    )
    at = ok(page("loss", "pruned.h5").run())
    names = [t.get("name") for t in charts(at)[0]["data"]]
    assert any("intervention" in (n or "") for n in names)
    assert any("intervention" in e.label for e in at.expander)
    # The header says the step axes count the prune as a step of its own.
    assert any("30 steps + 1 intervention" in c.value for c in at.caption)


def test_loss_page_without_run_asks_for_one(runs_folder):
    at = ok(page("loss").run())
    assert any("Pick a run" in s for s in sentences(at))


def test_bad_file_is_one_sentence(runs_folder):
    (runs_folder / "bad.h5").write_bytes(b"not an hdf5 file at all")
    for name in ("loss", "layers", "neurons"):
        at = ok(page(name, "bad.h5").run())
        assert len(at.error) == 1 and "not an HDF5 file" in at.error[0].value
        assert not at.get("plotly_chart")


def test_file_that_vanishes_while_a_page_reads_it_is_one_sentence():
    """Pages read a run piece by piece (a view, then the drill-down's rows): a file deleted or
    replaced between two reads ends the page with its sentence, never a traceback."""

    def script():
        from pathlib import Path

        from pages.shared import _render_or_explain

        def render(path):
            raise FileNotFoundError(f"{path.name} was deleted while this page read it.")

        _render_or_explain(render, Path("gone.h5"))

    at = AppTest.from_function(script, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert [e.value for e in at.error] == ["gone.h5 was deleted while this page read it."]


def test_empty_run_is_one_sentence(runs_folder):
    import torch

    import lca

    model = torch.nn.Linear(4, 2)
    layout = lca.Layout(
        names=("weight", "bias"),
        shapes=((2, 4), (2,)),
        units=tuple(lca.unit_layout(model)),
        method="rk4",
        dtype="float32",
        measure_size=10,
    )
    w = lca.Writer(runs_folder / "empty.h5", record="full")
    w.begin(layout, 1.0)
    w.close("complete")
    for name in ("loss", "layers", "neurons"):
        at = ok(page(name, "empty.h5").run())
        assert any("not recorded a step" in s for s in sentences(at))
        assert not at.get("plotly_chart")


def test_live_run_draws_the_same(full_run, runs_folder):
    live = runs_folder / "live.h5"
    shutil.copy(runs_folder / full_run, live)
    with h5py.File(live, "r+") as f:
        f["status"][()] = np.bytes_(b"running")
    for name, count in (("loss", 4), ("layers", 6), ("neurons", 5)):  # layers: + collapse
        at = ok(page(name, "live.h5").run())
        assert len(at.get("plotly_chart")) == count, name


# ---------------------------------------------------------------------------------------------
# Layers.


def test_layers_page(full_run):
    at = ok(page("layers", full_run).run())
    t = titles(at)
    assert "Total LCA of each layer" in t[0]
    assert "each layer on each step" in t[1]
    assert "Cumulative" in t[2] and "Peak steps" in t[3] and "Shared peak steps" in t[4]
    heat = charts(at)[1]
    assert heat["data"][0]["type"] == "heatmap" and heat["data"][0]["zmid"] == 0
    assert heat["data"][1]["type"] == "scatter"  # the clickable cells
    assert {HELPED, HURT} & colours(charts(at)[0])
    assert [m.label for m in at.metric][:2] == ["Shared peak steps (this run)", "By chance"]
    at.toggle(key="layers_per_param").set_value(True).run()
    assert "per parameter" in titles(ok(at))[0]


def test_layers_drill_down_by_widgets(full_run):
    at = ok(page("layers", full_run).run())
    at.selectbox(key="drill_layer").select("fc1.weight").run()
    at.slider(key="drill_steps").set_range(5, 20).run()
    t = titles(ok(at))
    assert any("fc1.weight on each step 5–20" in x for x in t)
    assert any("each unit of fc1" in x for x in t)


def test_step_numbers_stay_the_optimizers_after_a_prune(make_run, runs_folder):
    """30 steps and a prune after step 10: the drill-down runs to step 30, not row 31, and
    steps 11-15 are the optimizer's steps 11-15 (the prune sits at 10.5)."""
    make_run(
        "pruned.h5",
        runs_folder,
        techniques=[{"name": "prune-magnitude", "sparsity": 0.5, "start": 10}],
    )
    at = ok(page("layers", "pruned.h5").run())
    assert at.slider(key="drill_steps").max == 30
    at.selectbox(key="drill_layer").select("fc1.weight").run()
    at.slider(key="drill_steps").set_range(10, 12).run()
    trace = next(
        c for c in charts(ok(at)) if "fc1.weight on each step 10–12" in c["layout"]["title"]["text"]
    )
    x = trace["data"][0]["x"]  # plotly sends numeric arrays base64-encoded
    x = np.frombuffer(base64.b64decode(x["bdata"]), dtype=x["dtype"]) if isinstance(x, dict) else x
    assert list(x) == [10.0, 10.5, 11.0, 12.0]  # step 10, the prune, steps 11 and 12


def test_layers_heatmap_click_selects_layer_and_steps(full_run):
    """A click on a cell (sent as the chart's selection state) fills the drill-down."""
    at = ok(page("layers", full_run).run())
    chart = next(
        c
        for c in at.get("plotly_chart")
        if "each layer on each step" in json.loads(c.proto.spec)["layout"]["title"]["text"]
    )
    states = at._tree.get_widget_states()  # AppTest has no API to click a chart
    click = WidgetState(id=chart.proto.id)
    click.string_value = json.dumps(
        {
            "selection": {
                "points": [{"customdata": {"0": 2, "1": 11, "2": 11, "3": 0.0}}],
                "point_indices": [0],
                "box": [],
                "lasso": [],
            }
        }
    )  # a typed-array row arrives as a dict, as browsers send it
    states.widgets.append(click)
    at._run(states)
    ok(at)
    assert at.session_state["drill_layer"] == "out.weight"  # layers: fc1.w, fc1.b, out.w
    # A one-step cell opens a window of steps around it (the run has 30 steps).
    assert tuple(at.session_state["drill_steps"]) == (1, 30)
    assert any("out.weight on each step 1–30" in x for x in titles(at))


def test_layers_page_on_layers_record(make_run, runs_folder):
    make_run("layers.h5", runs_folder, record="layers")
    at = ok(page("layers", "layers.h5").run())
    at.selectbox(key="drill_layer").select("fc1.bias").run()
    assert any("record 'units' or 'full'" in s for s in sentences(ok(at)))


# ---------------------------------------------------------------------------------------------
# Neurons & weights.


def test_neurons_page_full(full_run):
    at = ok(page("neurons", full_run).run())
    t = titles(at)
    assert "each unit of fc1" in t[0]
    assert "First layer" in t[1]
    assert "All LCA values" in t[2] and "How often" in t[3] and "on each step" in t[4]
    images = charts(at)[1]["data"][0]
    assert images["zmid"] == 0 and arr(images["z"]).shape[0] >= 8
    hist = charts(at)[2]
    assert [tr["marker"]["color"] for tr in hist["data"][:2]] == [HELPED, HURT]
    assert len(at.dataframe) == 2  # top helpers, top hurters (or a sentence)
    at.toggle(key="neurons_hist_log").set_value(True).run()
    assert charts(ok(at))[2]["layout"]["yaxis"]["type"] == "log"
    at.selectbox(key="neuron_layer").select("out").run()
    assert "each unit of out" in titles(ok(at))[0]
    other = at.selectbox(key="neurons_trace").options[1]
    at.selectbox(key="neurons_trace").select(other).run()
    assert other in titles(ok(at))[4]


def test_neurons_page_says_which_record_mode_is_needed(make_run, runs_folder):
    make_run("units.h5", runs_folder, record="units")
    make_run("layers.h5", runs_folder, record="layers")
    at = ok(page("neurons", "units.h5").run())
    s = sentences(at)
    assert any("record 'full'" in x and "'units'" in x for x in s)
    assert any("each unit of" in x for x in titles(at))
    at = ok(page("neurons", "layers.h5").run())
    s = sentences(at)
    assert any("record 'units' or 'full'" in x for x in s)
    assert any("How often" in x for x in titles(at))  # per-weight counts exist in every mode


# ---------------------------------------------------------------------------------------------
# Compare.


def test_compare_starts_with_the_sidebar_run(make_run, runs_folder):
    now = time.time()
    for age, name in ((120, "old.h5"), (60, "mid.h5"), (0, "new.h5")):
        copy_full(make_run, runs_folder, name)
        os.utime(runs_folder / name, (now - age, now - age))  # list order: newest first
    at = ok(page("compare", "old.h5").run())
    assert at.multiselect(key="compare").value == ["old.h5", "new.h5"]


def test_compare_link_naming_a_missing_run_says_so(make_run, runs_folder):
    for name in ("a.h5", "b.h5"):
        copy_full(make_run, runs_folder, name)
    at = page("compare")
    at.query_params["compare"] = ["a.h5", "gone.h5", "b.h5"]
    ok(at.run())
    assert at.multiselect(key="compare").value == ["a.h5", "b.h5"]
    assert any("'gone.h5' is not in the runs folder" in t for t in sentences(at))


def test_compare_page(make_run, runs_folder):
    copy_full(make_run, runs_folder, "a.h5")
    make_run("b.h5", runs_folder, model_options={"hidden": [16, 8]})
    at = page("compare")
    at.session_state["compare_runs"] = ["a.h5", "b.h5"]
    ok(at.run())
    t = titles(at)
    assert "Loss" in t[0] and "run by run" in t[1] and "Difference" in t[2]
    assert any("different architectures" in s for s in sentences(at))
    common = charts(at)[1]["data"][0]["x"]
    assert common == ["fc1.weight", "fc1.bias", "out.weight", "out.bias"]
    diff = charts(at)[2]["data"][0]["marker"]["color"]
    # Blue / orange / grey: "B helped less" is not "hurt", so never green or red.
    assert set(diff) <= {F.B_MORE, F.B_LESS, "#9e9e9e"}
    at.radio(key="compare_align").set_value("wall-clock time").run()
    assert "seconds" in charts(ok(at))[0]["layout"]["xaxis"]["title"]["text"]


def test_compare_page_needs_two_runs(make_run, runs_folder):
    at = ok(page("compare").run())
    assert any("at least two runs" in s for s in sentences(at))
    copy_full(make_run, runs_folder, "a.h5")
    copy_full(make_run, runs_folder, "c.h5")
    at = ok(page("compare").run())
    assert len(at.multiselect(key="compare").value) == 2
    assert len(at.get("plotly_chart")) == 3
    at.multiselect(key="compare").set_value(["a.h5"]).run()
    assert any("at least two" in s for s in sentences(ok(at)))
