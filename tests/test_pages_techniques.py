"""Techniques page: figures on synthetic arrays, readers on real runs with techniques, AppTest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
from streamlit.testing.v1 import AppTest

from lca import views
from lca.figures import (
    HELPED,
    HURT,
    STILL,
    amp_scale_figure,
    bits_figure,
    helper_removal_figure,
    helper_share_figure,
    intervals,
    module_of,
    prune_events_figure,
    prune_split_figure,
    series_figure,
    technique_heatmap_figure,
    technique_layer_lines_figure,
    technique_loss_figure,
)
from lca.figures import prune as pf
from lca.store import Reader
from lca.views import (
    PruneEvent,
    PruneSplit,
    gather,
    no_technique_sentence,
    prune_events,
    prune_split,
    pruned_history,
    technique_summaries,
)
from lca.views import prune as vp

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "techniques_used.py")

SKIP = {"name": "wus", "window": 5, "warmup": 5, "threshold": 0.5, "patience": 1, "skip_windows": 1}
PRUNE = {"name": "prune-magnitude", "sparsity": 0.5, "start": 10}
MISC = [
    {"name": "amp"},
    {"name": "quantize", "bits": 4},
    {"name": "freeze", "layers": ["out"], "start": 15},
    {"name": "compress"},
]


@pytest.fixture(scope="module")
def tech_run(make_run) -> Path:
    return make_run(name="tech.h5", techniques=[SKIP, PRUNE])


@pytest.fixture(scope="module")
def misc_run(make_run) -> Path:
    return make_run(name="misc.h5", techniques=MISC)


@pytest.fixture(scope="module")
def layers_run(make_run) -> Path:
    return make_run(name="tech-layers.h5", techniques=[SKIP, PRUNE], record="layers")


# -- figures on synthetic arrays --------------------------------------------------------------


def test_intervals_and_module_names():
    assert intervals(np.array([0, 1, 1, 0, 1], dtype=bool)) == [(1, 3), (4, 5)]
    assert intervals(np.zeros(4, dtype=bool)) == []
    assert intervals(np.ones(3, dtype=bool)) == [(0, 3)]
    assert module_of("block1.conv.weight") == "block1.conv" and module_of("w") == "w"


def test_loss_figure_marks_bands_events_and_scaler_skips():
    loss = np.linspace(2.0, 1.0, 21)
    skipped = np.zeros(20, dtype=bool)
    skipped[7] = True
    fig = technique_loss_figure(
        loss, skip_bands=[(3, 6), (12, 15)], prune_marks=[(9, "prune")], scaler_skipped=skipped
    )
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    assert [(r.x0, r.x1) for r in rects] == [(3, 6), (12, 15)]
    names = {t.name for t in fig.data}
    assert {
        "loss",
        "prune event",
        "step skipped by loss scaler",
        "weights not updating (skipped)",
    } <= names
    assert technique_loss_figure(np.array([1.0])).layout.annotations  # one sentence, no chart


def test_techniques_figures_use_the_step_axis_of_every_page():
    """A prune recorded as row 9 (after 9 optimizer steps) sits at step 9.5, and the rows after
    it keep the optimizer's own step numbers, as on the Loss and Layers pages."""
    loss = np.linspace(2.0, 1.0, 21)
    kind = np.zeros(20, dtype=np.int8)
    kind[9] = 1
    fig = technique_loss_figure(loss, skip_bands=[(12, 15)], prune_marks=[(9, "prune")], kind=kind)
    line = next(t for t in fig.data if t.name == "loss")
    assert list(line.x[:12]) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9.5, 10]
    assert list(next(t for t in fig.data if t.name == "prune event").x) == [9.5]
    vlines = [s for s in fig.layout.shapes if s.type == "line"]
    assert [v.x0 for v in vlines] == [9.5]
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    assert [(r.x0, r.x1) for r in rects] == [(11, 14)]  # segments 12..14 = steps 12..14
    assert fig.layout.xaxis.title.text.startswith("training step")
    a = np.ones((20, 2))
    lines = technique_layer_lines_figure(
        a, ["fc.weight", "fc.bias"], prune_marks=[(9, "p")], kind=kind
    )
    assert list(lines.data[0].x[8:11]) == [9, 9.5, 10]
    heat = technique_heatmap_figure(
        a, ["fc.weight", "fc.bias"], kind=kind, prune_marks=[(9, [0], "p")]
    )
    assert heat.layout.xaxis.title.text == "training step"
    assert "prune after step 9" in heat.data[0].customdata[0][9]
    assert "after step 9 " in next(t for t in heat.data if t.name == "prune event").hovertext[0]


def test_layer_lines_are_cumulative_per_module():
    a = np.array([[-1.0, -0.5, 0.2, 0.0], [-1.0, 0.0, 0.1, 0.1]])
    fig = technique_layer_lines_figure(
        a, ["fc1.weight", "fc1.bias", "out.weight", "out.bias"], skip_bands=[(1, 2)]
    )
    lines = {t.name: list(t.y) for t in fig.data if t.name in ("fc1", "out")}
    assert lines["fc1"] == pytest.approx([-1.5, -2.5])
    assert lines["out"] == pytest.approx([0.2, 0.4])
    for t in fig.data:  # layer lines never use the helped/hurt colours
        if t.name in lines:
            assert t.line.color not in (HELPED, HURT)


def test_heatmap_keeps_totals_and_marks_techniques():
    rng = np.random.default_rng(0)
    names = ["fc1.weight", "fc1.bias", "out.weight", "out.bias"]
    a = rng.normal(size=(3000, 4))
    frozen_mask = np.zeros(3000, dtype=bool)
    frozen_mask[2000:] = True
    fig = technique_heatmap_figure(
        a,
        names,
        skip_bands=[(100, 400)],
        skip_rows=[0, 2],
        frozen=[([2, 3], frozen_mask)],
        prune_marks=[(1500, [0, 2], "prune-magnitude")],
        max_cols=500,
    )
    heat = fig.data[0]
    z = np.asarray(heat.z, dtype=np.float64)
    assert z.shape == (4, 500)
    assert z.sum() == pytest.approx(a.sum(), rel=1e-9, abs=1e-9)  # block sums keep totals
    assert heat.colorscale[0][1] == HELPED and heat.colorscale[-1][1] == HURT
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    # Skip boxes on rows 0 and 2 (not adjacent: two boxes) and one frozen box over rows 2-3.
    assert len(rects) == 3
    frozen_box = [r for r in rects if r.line.dash != "dash"]
    assert len(frozen_box) == 1 and (frozen_box[0].y0, frozen_box[0].y1) == (1.5, 3.5)
    crosses = [t for t in fig.data if t.name == "prune event"][0]
    assert list(crosses.y) == [0, 2]
    # Round step ticks, each drawn where its step's column is (6 steps a column; step k is row
    # k - 1 when there is no intervention).
    steps = [1, *range(500, 3001, 500)]
    assert list(fig.layout.xaxis.ticktext) == [str(s) for s in steps]
    np.testing.assert_allclose(fig.layout.xaxis.tickvals, (np.array(steps) - 1 + 0.5) / 6 - 0.5)
    assert technique_heatmap_figure(np.zeros((0, 2)), ["a", "b"]).layout.annotations


def test_prune_split_figure_colours_by_sign_and_patterns_by_part():
    split = PruneSplit(
        ["fc1", "out"],
        np.array([0.02, -0.01]),
        np.array([-0.005, 0.0]),
        np.array([0.0, 0.001]),
        "events",
    )
    fig = prune_split_figure(split)
    assert [t.name for t in fig.data] == [
        pf._PART_LABELS[p] for p in ("removed", "compensated", "rest")
    ]
    assert list(fig.data[0].marker.color) == [HURT, HELPED]
    assert list(fig.data[1].marker.color) == [HELPED, STILL]
    assert fig.data[1].marker.pattern.shape == "/"
    assert fig.layout.barmode == "relative"  # one column per layer, its parts stacked
    only_layers = prune_split_figure(
        PruneSplit(["fc1"], np.zeros(1), np.zeros(1), np.array([0.3]), "layers")
    )
    assert len(only_layers.data) == 1 and "no per-weight split" in only_layers.data[0].name


def test_prune_events_figure():
    events = [
        PruneEvent(
            "prune-lobs",
            10,
            10,
            cost=0.01,
            cost_removed=0.012,
            cost_compensated=-0.002,
            cost_rest=0.0,
        ),
        PruneEvent(
            "prune-lobs",
            16,
            15,
            cost=-0.001,
            cost_removed=-0.002,
            cost_compensated=0.001,
            cost_rest=0.0,
        ),
    ]
    fig = prune_events_figure(events)
    assert len(fig.data) == 3
    assert list(fig.data[0].marker.color) == [HURT, HELPED]
    unsplit = prune_events_figure([PruneEvent("p", 3, 3, cost=0.5)])
    assert len(unsplit.data) == 1 and list(unsplit.data[0].marker.color) == [HURT]
    assert prune_events_figure([]).layout.annotations


def test_helper_figures():
    share = helper_share_figure(["pruned", "kept"], [0.25, 0.75], hurt=[0.5, 0.25], counts=[10, 30])
    green, red, grey = share.data
    assert (green.marker.color, red.marker.color, grey.marker.color) == (HELPED, HURT, STILL)
    assert list(green.x) == [25.0, 75.0] and list(red.x) == [50.0, 25.0]
    assert list(grey.x) == [25.0, 0.0]
    # Only helpers counted: the rest is "did not help", never red (red means hurt).
    green, rest = helper_share_figure(["pruned", "kept"], [0.25, 0.75]).data
    assert rest.marker.color not in (HURT, HELPED) and list(rest.x) == [75.0, 25.0]
    assert helper_share_figure(["a"], [float("nan")]).layout.annotations

    removed = np.array([-0.3, 0.2, 0.0, -0.1])
    survivors = np.array([-1.0, -0.5, 0.4])
    fig = helper_removal_figure(removed, survivors)
    dots = [
        t
        for t in fig.data
        if isinstance(t, go.Scatter) and t.x is not None and len(t.x) and t.x[0] is not None
    ]
    assert sorted(HELPED if v < 0 else HURT if v > 0 else STILL for v in removed) == sorted(
        dots[0].marker.color
    )
    assert sum(isinstance(t, go.Box) for t in fig.data) == 2
    assert helper_removal_figure(np.zeros(0), np.zeros(0)).layout.annotations


def test_amp_bits_and_series_figures():
    scale = np.array([65536.0, 65536.0, 32768.0, 32768.0])
    fig = amp_scale_figure(scale, np.array([0, 1, 0, 0], dtype=bool))
    assert fig.layout.yaxis.type == "log" and list(fig.data[1].x) == [2]  # row 1 = step 2
    bits = bits_figure(["w", "b"], np.array([4.0, np.nan]))
    assert list(bits.data[0].y) == [4.0, 32.0]
    assert bits.data[0].marker.color[1] == "#bdbdbd"
    s = series_figure(
        np.array([0.0, 0.5, 0.5, 0.7]), title="t", y_title="y", kind=np.array([0, 1, 0, 0])
    )
    assert list(s.data[0].x) == [1, 2, 3]  # steps; the intervention row is left out
    assert series_figure(np.array([]), title="t", y_title="y").layout.annotations


# -- readers on real runs ---------------------------------------------------------------------


def test_readers_moved_to_views_keep_their_old_names():
    """Notebooks that read through ``lca.figures`` (``F.gather(r)``) keep working."""
    from lca import figures as F

    for name in (
        "gather",
        "prune_events",
        "prune_split",
        "pruned_history",
        "PruneEvent",
        "technique_summaries",
        "reported_rows",
        "no_technique_sentence",
        "infer_image_shape",
        "IMAGE_DATASETS",
    ):
        assert getattr(F, name) is getattr(views, name), name
    with pytest.raises(AttributeError):
        F.no_such_figure  # noqa: B018


def test_gather_finds_skip_windows_and_prune_events(tech_run):
    with Reader(tech_run) as r:
        d = gather(r)
        kind = r.steps("kind")
        assert d.names == ["wus", "prune-magnitude"]
        assert d.skipping["wus"].any() and not d.skipping["wus"][kind == 1].any()
        assert d.skip_rows == [i for i, n in enumerate(r.names) if n.endswith("weight")]
        segs = list(np.flatnonzero(kind == 1))
        assert d.prune["prune-magnitude"] == segs and len(segs) == 1
        assert d.train_step[segs[0]] == PRUNE["start"]
        assert sorted(d.prune_rows["prune-magnitude"]) == d.skip_rows


def test_prune_split_totals_and_fallbacks(tech_run, monkeypatch):
    with Reader(tech_run) as r:
        (event,) = prune_events(r, "prune-magnitude")
        split = prune_split(r, event)
        assert split.source == "events"
        row = r.layer_lca(event.segment, event.segment + 1).sum()
        assert split.total.sum() == pytest.approx(row, rel=1e-9, abs=1e-12)
        assert split.total.sum() == pytest.approx(r.steps("lca")[event.segment], rel=1e-6)
        assert split.removed.sum() == pytest.approx(event.cost_removed, rel=1e-6)
        assert split.removed.sum() > 0  # removing weights raised the loss
        # Without the technique's table the per-weight LCA gives the same split.
        monkeypatch.setattr(vp, "_events", lambda *a, **k: None)
        by_weight = prune_split(r, event)
        assert by_weight.source == "weights"
        np.testing.assert_allclose(by_weight.removed, split.removed, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(by_weight.total, split.total, rtol=1e-9, atol=1e-12)


def test_pruned_history_matches_the_techniques_own_record(tech_run, layers_run):
    with Reader(tech_run) as r:
        removed, survivors = pruned_history(r, "prune-magnitude")
        (event,) = prune_events(r, "prune-magnitude")
        assert len(removed) == event.removed and len(removed) + len(survivors) == sum(
            int(np.prod(r.shapes[n])) for n in r.names if n.endswith("weight")
        )
        assert removed.mean() == pytest.approx(event.cum_lca_removed_mean, rel=1e-4)
        assert survivors.mean() == pytest.approx(event.cum_lca_survivors_mean, rel=1e-4)
    with Reader(layers_run) as r:
        assert pruned_history(r, "prune-magnitude") is None  # needs record full


def test_summaries_say_what_each_technique_saved(tech_run, misc_run):
    with Reader(tech_run) as r:
        rows = {row["technique"]: row for row in technique_summaries(r)}
        assert "skipped weight updates" in rows["wus"]["what it did"]
        assert "of all parameter updates" in rows["wus"]["what it saved"]
        assert "50.0% of the prunable weights" in rows["prune-magnitude"]["what it saved"]
    with Reader(misc_run) as r:
        rows = {row["technique"]: row for row in technique_summaries(r)}
        assert set(rows) == {"amp", "quantize", "freeze", "compress"}
        assert "bf16" in rows["amp"]["what it did"]
        assert "4 bits" in rows["quantize"]["what it did"]
        assert "scaler" not in rows["quantize"]["what it did"]
        assert "froze out" in rows["freeze"]["what it did"]
        assert "regularizer" in rows["compress"]["what it did"]
        d = gather(r)
        rows_frozen, mask = d.frozen["freeze"]
        assert [r.names[i] for i in rows_frozen] == ["out.weight", "out.bias"]
        assert intervals(mask) == [(15, 30)]
        # Frozen tensors do not move: their LCA is exactly 0 while frozen.
        assert not np.any(d.layer_lca[mask][:, rows_frozen])


def test_reported_rows_word_each_techniques_own_summary(tech_run):
    rows = views.reported_rows(
        {
            "wus": {
                "fraction_steps_skipped": 0.1,
                "seconds_step_normal": 0.002,
                "steps": 200,
                "grad_scaler": True,
            },
            "quantize": {
                "sparsity_per_layer": {"fc1.weight": 0.5},
                "compression": 6.9598,
                "event_steps": [60, 90],
            },
        }
    )
    by = {(r["technique"], r["figure"]): r["value"] for r in rows}
    assert by == {
        ("wus", "fraction steps skipped"): "10.0%",
        ("wus", "seconds step normal"): "2.0 ms",
        ("wus", "steps"): "200",
        ("wus", "grad scaler"): "yes",
        ("quantize", "sparsity per layer"): "fc1.weight 50.0%",
        ("quantize", "compression"): "6.96",
        ("quantize", "event steps"): "60, 90",
    }
    with Reader(tech_run) as r:  # a real run stores what each technique reported at its end
        names = {row["technique"] for row in views.reported_rows(r.technique_summaries())}
    assert names == {"wus", "prune-magnitude"}


# -- the page ---------------------------------------------------------------------------------


def _page(runs_folder: Path, name: str) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["run"] = name
    return at.run()


def _spec(chart) -> dict:
    spec = chart.proto.spec
    return json.loads(spec) if isinstance(spec, str) else spec


def test_page_with_skipping_and_pruning(runs_folder, make_run, tech_run):
    make_run(name="tech.h5", folder=runs_folder, techniques=[SKIP, PRUNE])
    at = _page(runs_folder, "tech.h5")
    assert not at.exception and not at.error
    heads = [h.value for h in at.subheader]
    assert "Pruning: what each prune event cost" in heads
    assert "Did pruning remove helpers or hurters?" in heads
    charts = at.get("plotly_chart")
    assert len(charts) >= 7
    loss = _spec(charts[0])
    assert any(s.get("type") == "rect" for s in loss["layout"].get("shapes", []))  # skip bands
    assert any(t.get("name") == "prune event" for t in loss["data"])
    heat = _spec(charts[2])
    assert heat["data"][0]["type"] == "heatmap"
    assert at.table and len(at.table) == 1
    assert any("Helper-removal" in m.label for m in at.metric)
    assert any("reported when the run ended" in e.label for e in at.expander)


def test_page_with_amp_quantize_freeze(runs_folder, make_run, misc_run):
    make_run(name="misc.h5", folder=runs_folder, techniques=MISC)
    at = _page(runs_folder, "misc.h5")
    assert not at.exception and not at.error
    heads = [h.value for h in at.subheader]
    for expected in (
        "Mixed precision (amp)",
        "Low-bit weights (quantize)",
        "Frozen layers (freeze)",
        "Compressibility regularizer (compress)",
    ):
        assert expected in heads
    assert any("bfloat16" in i.value for i in at.info)
    titles = [
        (_spec(c)["layout"].get("title") or {}).get("text", "") for c in at.get("plotly_chart")
    ]
    assert any("Bits per weight" in t for t in titles)


def test_page_on_layers_record_says_so(runs_folder, make_run, layers_run):
    make_run(name="tech-layers.h5", folder=runs_folder, techniques=[SKIP, PRUNE], record="layers")
    at = _page(runs_folder, "tech-layers.h5")
    assert not at.exception and not at.error
    assert any("--record full" in i.value for i in at.info)


def test_page_without_techniques_explains_how_to_start_one(runs_folder, make_run):
    make_run(name="plain.h5", folder=runs_folder)
    at = _page(runs_folder, "plain.h5")
    assert not at.exception
    assert len(at.info) == 1 and at.info[0].value == no_technique_sentence()
    assert "python -m lca train --technique prune-magnitude" in at.info[0].value
    assert not at.get("plotly_chart")


def test_page_bad_file_is_one_sentence(runs_folder):
    (runs_folder / "bad.h5").write_bytes(b"this is not an HDF5 file")
    at = _page(runs_folder, "bad.h5")
    assert not at.exception
    assert len(at.error) == 1 and "\n" not in at.error[0].value
    assert not at.get("plotly_chart")
