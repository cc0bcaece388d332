"""The /parallel records of Stanza and data-parallel runs in the app: the Reader method, the view,
the bytes-per-step figure, the Compare page's section and the Loss page's line.

The run files are small real runs of the one-process loop with /parallel records written into
them by hand, as docs/FORMAT.md "Stanza and data parallel" lays them out (no ranks are spawned
here; tests/test_stanza.py checks that real Stanza runs write these records).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from lca import figures as F
from lca import views
from lca.figures.common import HELPED, HURT
from lca.store import Reader

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 60
STEPS = 6  # the runs' optimizer steps: the first axis of the byte counts

# Per-rank bytes of one step: Stanza K=2 (two conv ranks, the FC rank) and data parallel K=2.
STANZA = [120_000, 120_000, 89_000]  # 329,000 bytes sent per step in all
DATA_PARALLEL = [50_000, 50_000]  # 100,000


def _info(mode: str, k: int, staleness: int = 0) -> dict:
    world = k + 1 if mode == "stanza" else k
    return {
        "mode": mode,
        "k": k,
        "staleness": staleness,
        "world": world,
        "writer_rank": k if mode == "stanza" else 0,
        "roles": ["conv"] * k + ["fc"] if mode == "stanza" else ["replica"] * k,
        "batch_per_rank": 8,
    }


def write_parallel(path: Path, sent, received, info) -> Path:
    """Add /parallel/bytes_sent, /parallel/bytes_received and /parallel/info to a run file."""
    with h5py.File(path, "r+") as f:
        g = f.require_group("parallel")
        if sent is not None:
            g.create_dataset("bytes_sent", data=np.asarray(sent))
        if received is not None:
            g.create_dataset("bytes_received", data=np.asarray(received))
        raw = info if isinstance(info, bytes) else json.dumps(info).encode()
        g.create_dataset("info", data=np.array(raw, dtype="S4096"))
    return path


def stanza_counts(incomplete_last: bool = False) -> np.ndarray:
    sent = np.array([STANZA] * STEPS, dtype=np.int64)
    if incomplete_last:
        sent[-1] = -1
    return sent


@pytest.fixture
def plain(make_run, tmp_path) -> Path:
    target = tmp_path / "plain.h5"
    shutil.copy(make_run("parallel-base.h5", steps=STEPS), target)
    return target


def _copy(make_run, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    shutil.copy(make_run("parallel-base.h5", steps=STEPS), target)
    return target


def stanza_file(make_run, folder: Path, name: str = "stanza.h5", **kw) -> Path:
    sent = stanza_counts(**kw)
    return write_parallel(_copy(make_run, folder, name), sent, sent // 2, _info("stanza", 2))


def dp_file(make_run, folder: Path, name: str = "dp.h5") -> Path:
    sent = np.array([DATA_PARALLEL] * STEPS, dtype=np.int64)
    return write_parallel(_copy(make_run, folder, name), sent, sent, _info("data-parallel", 2))


# ---------------------------------------------------------------------------------------------
# Reader and view.


def test_a_run_in_one_process_has_no_parallel_records(plain):
    with Reader(plain) as r:
        assert r.parallel() is None
        assert views.parallel_view(r) is None


def test_the_reader_returns_the_records_as_written(make_run, tmp_path):
    path = stanza_file(make_run, tmp_path)
    with Reader(path) as r:
        raw = r.parallel()
    np.testing.assert_array_equal(raw["bytes_sent"], stanza_counts())
    np.testing.assert_array_equal(raw["bytes_received"], stanza_counts() // 2)
    assert raw["info"] == _info("stanza", 2)


def test_the_view_sums_the_ranks_of_each_step(make_run, tmp_path):
    path = stanza_file(make_run, tmp_path, incomplete_last=True)
    with Reader(path) as r:
        v = views.parallel_view(r)
    assert v.problem == ""
    assert (v.mode, v.k, v.staleness, v.world) == ("stanza", 2, 0, 3)
    expected = [329_000.0] * (STEPS - 1) + [np.nan]  # the last step was not completed (−1)
    np.testing.assert_array_equal(v.sent, expected)
    np.testing.assert_array_equal(v.received, [164_500.0] * (STEPS - 1) + [np.nan])
    assert v.sent_per_step == 329_000.0 and v.completed_steps == STEPS - 1
    assert v.label == "Stanza, K=2 conv ranks + 1 FC rank, τ=0"
    assert views.parallel_sentence(v) == (
        "Stanza, K=2 conv ranks + 1 FC rank, τ=0: 329 kB sent per step (all ranks, measured)."
    )


def test_the_table_measures_stanza_against_data_parallel(make_run, tmp_path):
    paths = [stanza_file(make_run, tmp_path), dp_file(make_run, tmp_path)]
    found = []
    for p in paths:
        with Reader(p) as r:
            found.append(views.parallel_view(r))
    rows = views.parallel_rows(found)
    assert [r["mode"] for r in rows] == [
        "Stanza, K=2 conv ranks + 1 FC rank, τ=0",
        "Data parallel, K=2 replicas",
    ]
    assert [r["ranks"] for r in rows] == [3, 2]
    assert [r["bytes sent per step"] for r in rows] == [329_000.0, 100_000.0]
    assert [r["× data parallel"] for r in rows] == [3.29, 1.0]
    assert views.parallel_baseline(found).name == "dp.h5"
    # without a data-parallel run there is nothing to divide by: no ratio column
    assert "× data parallel" not in views.parallel_rows(found[:1])[0]


BAD = {
    "one dimension": (np.zeros(STEPS, dtype=np.int64), np.zeros(STEPS, dtype=np.int64)),
    "wrong ranks": (np.zeros((STEPS, 2), dtype=np.int64), np.zeros((STEPS, 2), dtype=np.int64)),
    "wrong steps": (np.zeros((2, 3), dtype=np.int64), np.zeros((2, 3), dtype=np.int64)),
    "shapes differ": (np.zeros((STEPS, 3), dtype=np.int64), np.zeros((STEPS, 2), dtype=np.int64)),
    "not integers": (np.zeros((STEPS, 3)), np.zeros((STEPS, 3))),
    "missing": (None, None),
}


@pytest.mark.parametrize("case", list(BAD))
def test_records_of_the_wrong_shape_are_ignored_with_one_sentence(make_run, tmp_path, case):
    sent, received = BAD[case]
    path = write_parallel(_copy(make_run, tmp_path, "bad.h5"), sent, received, _info("stanza", 2))
    with Reader(path) as r:
        v = views.parallel_view(r)
    assert v.problem.startswith("'bad.h5' has /parallel byte counts of shape")
    assert "record the run again with lca train --stanza K" in v.problem
    assert v.problem.count(". ") == 0 and v.problem.endswith(".")  # one sentence
    assert len(v.sent) == 0 and views.parallel_rows([v]) == []
    assert views.parallel_sentence(v) == v.problem


@pytest.mark.parametrize("info", [b"{not json", b"[1, 2]", {"mode": "ring", "k": 2}, {"k": 0}])
def test_unreadable_info_is_ignored_with_one_sentence(make_run, tmp_path, info):
    sent = stanza_counts()
    path = write_parallel(_copy(make_run, tmp_path, "odd.h5"), sent, sent, info)
    with Reader(path) as r:
        v = views.parallel_view(r)
    assert v.problem.startswith("'odd.h5' has /parallel records without a readable mode and K")


# ---------------------------------------------------------------------------------------------
# Figure.


def test_the_figure_draws_bytes_per_completed_step_in_neutral_colours():
    sent = np.array([329_000.0, 329_000.0, np.nan])
    fig = F.parallel_bytes([("a · Stanza K=2, τ=0", sent), ("b · data parallel K=2", [1e5] * 3)])
    a, b = fig.data
    assert a.name == "a · Stanza K=2, τ=0" and b.name == "b · data parallel K=2"
    assert list(a.x) == [1, 2] and list(a.y) == [329_000.0, 329_000.0]  # step 3 not completed
    assert list(b.x) == [1, 2, 3]
    assert {a.line.color, b.line.color}.isdisjoint({HELPED, HURT})
    assert a.line.color != b.line.color
    assert fig.layout.showlegend is True  # the legend names mode, K and τ even for one run


def test_the_figure_says_when_no_step_was_completed():
    fig = F.parallel_bytes([("a", [np.nan, np.nan])])
    assert not fig.data
    assert "completed step" in fig.layout.annotations[0].text


# ---------------------------------------------------------------------------------------------
# Pages.


def _page(name: str) -> AppTest:
    return AppTest.from_file(str(ROOT / "pages" / f"{name}.py"), default_timeout=TIMEOUT)


def _ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.message for e in at.exception]
    assert [e.value for e in at.error] == []
    return at


def _bytes_chart(at: AppTest) -> list[dict]:
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    return [s for s in specs if "Bytes sent per step" in str(s["layout"].get("title"))]


def test_the_compare_page_shows_the_bytes_of_stanza_and_data_parallel(make_run, runs_folder):
    stanza_file(make_run, runs_folder)
    dp_file(make_run, runs_folder)
    at = _page("compare")
    at.session_state["compare_runs"] = ["stanza.h5", "dp.h5"]
    _ok(at.run())
    assert "Bytes exchanged between processes" in [h.value for h in at.subheader]
    (chart,) = _bytes_chart(at)
    assert [t["name"] for t in chart["data"]] == [
        "stanza.h5 · Stanza K=2, τ=0",
        "dp.h5 · data parallel K=2",
    ]
    table = at.dataframe[-1].value
    assert list(table["run"]) == ["stanza.h5", "dp.h5"]
    assert list(table["× data parallel"]) == [3.29, 1.0]
    said = "divides each run's bytes sent per step by those of dp.h5"
    assert any(said in c.value for c in at.caption)


def test_the_compare_page_has_no_bytes_section_for_runs_in_one_process(make_run, runs_folder):
    _copy(make_run, runs_folder, "a.h5")
    _copy(make_run, runs_folder, "b.h5")
    at = _page("compare")
    at.session_state["compare_runs"] = ["a.h5", "b.h5"]
    _ok(at.run())
    assert "Bytes exchanged between processes" not in [h.value for h in at.subheader]
    assert not _bytes_chart(at)
    assert len(at.get("plotly_chart")) >= 2  # the loss curves and layers are still compared


def test_the_compare_page_sets_aside_a_run_with_broken_records(make_run, runs_folder):
    stanza_file(make_run, runs_folder)
    bad = np.zeros(STEPS, dtype=np.int64)
    write_parallel(_copy(make_run, runs_folder, "bad.h5"), bad, bad, _info("stanza", 2))
    at = _page("compare")
    at.session_state["compare_runs"] = ["stanza.h5", "bad.h5"]
    _ok(at.run())
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 1 and warnings[0].startswith("'bad.h5' has /parallel byte counts")
    (chart,) = _bytes_chart(at)
    assert [t["name"] for t in chart["data"]] == ["stanza.h5 · Stanza K=2, τ=0"]


def test_the_loss_page_says_how_many_bytes_a_step_sent(make_run, runs_folder):
    stanza_file(make_run, runs_folder)
    at = _page("loss")
    at.session_state["run"] = "stanza.h5"
    _ok(at.run())
    line = "Stanza, K=2 conv ranks + 1 FC rank, τ=0: 329 kB sent per step (all ranks, measured)."
    assert line in [c.value for c in at.caption]
