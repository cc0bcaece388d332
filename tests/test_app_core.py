"""The app shell and the pages that make and manage runs (AppTest), and lca.jobs (real
subprocesses): no page shows a traceback, bad files and bad links become one sentence, jobs
start, finish, stop ("interrupted", steps kept) and respect the cap."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import h5py
import pytest
from streamlit.testing.v1 import AppTest

from lca import jobs
from lca.config import RunConfig
from lca.store import Reader

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
TIMEOUT = 300  # s: bounds only a hung script or job; waits follow progress, a busy machine is slow


def app() -> AppTest:
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


def texts(at: AppTest, kind: str) -> list[str]:
    return [str(e.value) for e in getattr(at, kind)]


def put_run(make_run, folder: Path, name: str) -> Path:
    """The session's shared small run (made once by conftest) copied in as ``name``."""
    target = folder / name
    shutil.copy(make_run(), target)
    return target


def no_problem(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    for e in at.error:
        assert "unexpected problem" not in str(e.value), e.value


def tiny_config(**overrides) -> RunConfig:
    values = {
        "dataset": "circles",
        "model": "mlp",
        "model_options": {"hidden": [8]},
        "steps": 5,
        "measure_size": 100,
        "eval_every": 5,
        "record": "layers",
        "device": "cpu",
        **overrides,
    }
    return RunConfig.from_dict(values)


# ---------------------------------------------------------------------------------------------
# App shell and pages.


def test_home_without_runs_offers_the_demo(runs_folder):
    t0 = time.perf_counter()
    at = app().run()
    no_problem(at)
    assert "Start the demo" in [b.label for b in at.button]
    assert any("no runs yet" in t for t in texts(at, "info"))
    assert at.sidebar.selectbox[0].label == "Run"
    assert any("Green = helped" in str(c.value) for c in at.sidebar.caption)
    print(f"home (no runs) first render: {time.perf_counter() - t0:.2f} s")


def test_runs_table_lists_runs_and_home_lists_recent(runs_folder, make_run):
    alpha = put_run(make_run, runs_folder, "alpha.h5")
    beta = put_run(make_run, runs_folder, "beta.h5")
    now = time.time()
    os.utime(alpha, (now - 60, now - 60))  # beta is the newer file, whatever the clock's grain
    os.utime(beta, (now, now))
    at = app().run()
    no_problem(at)
    assert set(at.sidebar.selectbox[0].options) == {"alpha.h5", "beta.h5"}
    assert at.session_state["run"] in ("alpha.h5", "beta.h5")  # newest preselected
    body = " ".join(texts(at, "markdown"))
    assert "alpha.h5" in body and "beta.h5" in body
    t0 = time.perf_counter()
    at.switch_page("pages/runs.py").run()
    no_problem(at)
    df = at.dataframe[0].value
    assert set(df["name"]) == {"alpha.h5", "beta.h5"}
    row = df.set_index("name").loc["alpha.h5"]
    assert row["dataset"] == "digits" and row["model"] == "mlp"
    assert row["status"] == "complete" and row["steps"] == 30
    assert 0 < row["% helped (mean)"] < 100
    print(f"runs page render: {time.perf_counter() - t0:.2f} s")
    # Open selects the run and switches page (loss page, or runs when it is not built yet).
    at.selectbox(key="runs_pick").set_value("beta.h5").run()
    at.button(key="runs_open").click().run()
    no_problem(at)
    assert at.session_state["run"] == "beta.h5"
    # Compare puts the chosen runs where the Compare page reads them.
    at.switch_page("pages/runs.py").run()
    at.multiselect(key="runs_compare_pick").set_value(["alpha.h5", "beta.h5"]).run()
    at.button(key="runs_compare").click().run()
    no_problem(at)
    assert at.session_state["compare_runs"] == ["alpha.h5", "beta.h5"]


def test_delete_asks_first(runs_folder, make_run):
    put_run(make_run, runs_folder, "gone.h5")
    at = app()
    at.switch_page("pages/runs.py").run()
    at.button(key="runs_delete").click().run()
    no_problem(at)
    assert (runs_folder / "gone.h5").exists()
    assert any("cannot be undone" in t for t in texts(at, "warning"))
    at.button(key="runs_delete_yes").click().run()
    no_problem(at)
    assert not (runs_folder / "gone.h5").exists()


def test_recover_a_run_whose_writer_was_killed(runs_folder, make_run):
    path = put_run(make_run, runs_folder, "killed.h5")
    with h5py.File(path, "r+") as f:  # what a killed writer leaves: status still "running"
        f["status"][()] = b"running"
        f.attrs["writer_pid"] = 2**22 + 12345  # no such process
    at = app()
    at.switch_page("pages/runs.py").run()
    no_problem(at)
    df = at.dataframe[0].value.set_index("name")
    assert df.loc["killed.h5", "status"] == "running (writer gone)"
    at.selectbox(key="runs_pick").set_value("killed.h5").run()
    at.button(key="runs_recover").click().run()
    no_problem(at)
    assert any("interrupted" in t for t in texts(at, "success")), texts(at, "success")
    with Reader(path) as r:
        assert r.status == "interrupted" and r.num_steps == 30


def test_foreign_and_broken_files_are_one_sentence(runs_folder, make_run):
    put_run(make_run, runs_folder, "good.h5")
    with h5py.File(runs_folder / "foreign.h5", "w") as f:
        f["x"] = [1, 2, 3]
    (runs_folder / "notes.h5").write_text("this is not HDF5")
    at = app().run()
    no_problem(at)
    at.switch_page("pages/runs.py").run()
    no_problem(at)
    assert list(at.dataframe[0].value["name"]) == ["good.h5"]
    warnings = texts(at, "warning")
    assert any("foreign.h5" in w and "not an LCA run" in w for w in warnings), warnings
    assert any("notes.h5" in w and "not an HDF5 file" in w for w in warnings), warnings
    # Selecting the foreign file anyway: one sentence in the page, no exception.
    at.session_state["run"] = "foreign.h5"
    at.switch_page("pages/home.py").run()
    no_problem(at)


def test_path_traversal_reads_nothing(runs_folder, make_run):
    put_run(make_run, runs_folder, "ok.h5")
    at = app()
    at.session_state["run"] = "../../etc/passwd"
    at.run()
    no_problem(at)
    assert any("outside the runs folder" in w for w in texts(at, "warning")), texts(at, "warning")
    assert at.session_state["run"] is None  # nothing selected, nothing read
    at2 = app()
    at2.query_params["run"] = "../../etc/passwd"
    at2.run()
    no_problem(at2)
    assert any("outside the runs folder" in w for w in texts(at2, "warning"))
    at3 = app()
    at3.session_state["run"] = "missing.h5"
    at3.run()
    no_problem(at3)
    assert any("not in the runs folder" in w for w in texts(at3, "warning"))


def test_train_page_refuses_bad_values_with_a_sentence(runs_folder):
    at = app()
    t0 = time.perf_counter()
    at.switch_page("pages/train.py").run()
    no_problem(at)
    print(f"train page render: {time.perf_counter() - t0:.2f} s")
    assert any("will write about" in t for t in texts(at, "info"))
    assert "Start training" in [b.label for b in at.button]
    at.number_input(key="train_lr").set_value(0.0).run()
    no_problem(at)
    assert "lr must be greater than 0, not 0.0." in texts(at, "error")
    assert "Start training" not in [b.label for b in at.button]
    # A model option that cannot build: the model's sentence, before anything starts.
    at.number_input(key="train_lr").set_value(0.05).run()
    at.text_input(key="train_model_mlp_hidden").set_value("32, -4").run()
    no_problem(at)
    assert any("hidden" in e for e in texts(at, "error")), texts(at, "error")
    # Technique options appear as widgets once the technique is chosen.
    at.text_input(key="train_model_mlp_hidden").set_value("16").run()
    at.multiselect(key="train_techniques").set_value(["freeze"]).run()
    no_problem(at)
    assert at.text_input(key="train_tech_freeze_layers").value == "out"
    # A run too big for the app is refused with its size.
    at.selectbox(key="train_dataset").set_value("digits").run()
    at.number_input(key="train_steps").set_value(10_000_000).run()
    no_problem(at)
    assert any("would write about" in e for e in texts(at, "error")), texts(at, "error")


@pytest.mark.slow  # starts a training subprocess
def test_train_page_starts_and_stops_a_job(runs_folder):
    at = app()
    at.switch_page("pages/train.py").run()
    at.selectbox(key="train_dataset").set_value("circles").run()
    at.number_input(key="train_steps").set_value(100_000).run()
    at.selectbox(key="train_record").set_value("layers").run()
    at.text_input(key="train_name").set_value("mine").run()
    at.button(key="train_start").click().run()
    no_problem(at)
    job = jobs.find("mine.h5")
    try:
        assert job is not None and job.alive
        assert at.session_state["live_job"] == "mine.h5"
        assert "Stop" in [b.label for b in at.button]
    finally:
        job = jobs.stop(job, wait_s=TIMEOUT)
    assert not job.alive


@pytest.mark.slow  # starts a training subprocess
def test_demo_button_starts_the_demo(runs_folder):
    at = app().run()
    at.button(key="home_demo").click().run()
    no_problem(at)
    job = jobs.find(at.session_state["demo_job"])
    try:
        assert job is not None and job.name.startswith("demo")
        assert job.steps == jobs.demo_config().steps
    finally:
        jobs.stop(job, wait_s=TIMEOUT)


# ---------------------------------------------------------------------------------------------
# lca.jobs with real subprocesses.


def wait_for_steps(job: jobs.Job, n: int, timeout: float = TIMEOUT) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = jobs.poll(job)
        if Path(job.path).exists():
            try:
                with Reader(job.path) as r:
                    if r.num_steps >= n:
                        return r.num_steps
            except (OSError, ValueError):
                pass
        if not job.alive:
            break
        time.sleep(0.2)
    raise AssertionError(f"{job.name} did not reach {n} steps: {jobs.last_error(job)}")


@pytest.mark.slow  # starts a training subprocess
def test_job_runs_to_completion(runs_folder):
    t0 = time.perf_counter()
    job = jobs.start(tiny_config(), "tiny.h5")
    assert job.alive and job.pid > 0 and Path(job.path) == runs_folder / "tiny.h5"
    assert [j.name for j in jobs.active()] == ["tiny.h5"]
    job = jobs.wait(job, TIMEOUT)
    assert not job.alive, "the tiny run did not finish in time"
    assert job.state == "complete" and job.returncode == 0
    assert jobs.last_error(job) is None
    with Reader(job.path) as r:
        assert r.status == "complete" and r.num_steps == 5
    assert jobs.active() == []
    print(f"tiny job wall time: {time.perf_counter() - t0:.2f} s")
    with pytest.raises(jobs.JobError, match="already exists"):
        jobs.start(tiny_config(), "tiny.h5")


@pytest.mark.slow  # starts a training subprocess
def test_failed_job_keeps_its_sentence(runs_folder, tmp_path):
    config = tiny_config(dataset="mnist", data_dir=str(tmp_path / "nowhere"))
    job = jobs.wait(jobs.start(config, "nodata.h5"), TIMEOUT)
    assert job.state == "failed"
    sentence = jobs.last_error(job)
    assert sentence and "Traceback" not in sentence and "MNIST" in sentence, sentence


@pytest.mark.slow  # starts a training subprocess
def test_cap_refuses_a_third_job_and_stop_keeps_steps(runs_folder, monkeypatch):
    monkeypatch.setenv(jobs.MAX_JOBS_ENV, "2")
    long = tiny_config(steps=1_000_000)
    a = jobs.start(long, "a.h5")
    b = jobs.start(long, "b.h5")
    try:
        with pytest.raises(jobs.JobLimitError) as info:
            jobs.start(long, "c.h5")
        msg = str(info.value)
        assert "limit is 2" in msg and msg.endswith(".") and "\n" not in msg
        assert not (runs_folder / "c.h5").exists()
        kept = wait_for_steps(a, 3)
        wait_for_steps(b, 1)
    finally:
        a = jobs.stop(a, wait_s=TIMEOUT)
        b = jobs.stop(b, wait_s=TIMEOUT)
    assert not a.alive and not b.alive
    assert a.state == "interrupted", (a, jobs.last_error(a))
    with Reader(a.path) as r:
        assert r.status == "interrupted"
        assert r.num_steps >= kept
    assert jobs.active() == []
    # With the slots free again a new job starts.
    c = jobs.start(tiny_config(), "c.h5")
    assert not jobs.stop(c, wait_s=TIMEOUT).alive


def test_config_round_trips_through_the_job_file(tmp_path):
    config = RunConfig.from_dict(
        {
            "dataset": "moons",
            "model": "mlp",
            "model_options": {"hidden": [4, 3]},
            "dataset_options": {"noise": 0.2},
            "techniques": [{"name": "freeze", "layers": ["out"]}],
            "lr": 0.125,
            "steps": 7,
            "measure_size": None,
            "out": "elsewhere.h5",
        }
    )
    job_file = tmp_path / "job.json"
    job_file.write_text(jobs.config_json(config))
    back = RunConfig.from_file(job_file)  # what the job's `--config job.json` reads
    assert back.to_dict() == {**config.to_dict(), "out": None}  # the job's --out names the file


def test_estimate_is_close_to_the_real_file(make_run):
    path = make_run()
    with Reader(path) as r:
        config = RunConfig.from_dict(r.config)
    est, params = jobs.estimate_bytes(config)
    assert params == 64 * 16 + 16 + 16 * 10 + 10
    assert 0.5 < est / path.stat().st_size < 2.0


# ---------------------------------------------------------------------------------------------
# Live figures (pure functions, no Streamlit).


def test_live_figures_keep_values_and_colours():
    import numpy as np

    from lca.figures import HELPED, HURT, live_layer_bars, live_layer_lines, live_loss_figure
    from lca.figures.live import MAX_LINES, sample_points

    idx = sample_points(10_001, 2000)
    assert len(idx) <= 2000 and idx[0] == 0 and idx[-1] == 10_000
    assert list(sample_points(5)) == [0, 1, 2, 3, 4]

    loss = np.linspace(2.3, 0.2, 41)
    fig = live_loss_figure(loss, total_steps=100, train_loss=np.full(40, 1.0))
    assert [t.name for t in fig.data] == ["minibatch loss", "measurement-set loss"]
    assert list(fig.data[1].y) == list(loss) and fig.layout.xaxis.range == (0, 100)
    assert live_loss_figure(np.zeros(0)).layout.annotations  # says why there is no curve

    totals = np.array([-0.5, 0.25, 0.0])
    bars = live_layer_bars(totals, ["a", "b", "c"])
    assert list(bars.data[0].x) == list(totals)
    assert list(bars.data[0].marker.color)[:2] == [HELPED, HURT]

    cum = np.cumsum(np.random.default_rng(0).normal(size=(50, 14)), axis=0)
    names = [f"t{i}" for i in range(14)]
    lines = live_layer_lines(cum, names, total_steps=80)
    assert len(lines.data) == MAX_LINES and "largest" in lines.layout.title.text
    for trace in lines.data:
        j = names.index(trace.name)
        assert trace.y[-1] == cum[-1, j]  # cumulative values are drawn exactly
    assert {s.fillcolor for s in lines.layout.shapes if s.type == "rect"} == {HELPED, HURT}
    assert live_layer_lines(np.zeros((0, 3)), ["a", "b", "c"]).layout.annotations

    # A prune after step 2 is drawn at 2.5; the steps keep the optimizer's numbers.
    kind = np.array([0, 0, 1, 0])
    fig = live_loss_figure(
        np.array([2.0, 1.5, 1.2, 1.3, 1.0]), kind=kind, train_loss=np.array([2.0, 1.6, np.nan, 1.1])
    )
    assert list(fig.data[1].x) == [0, 1, 2, 2.5, 3] and list(fig.data[0].x) == [1, 2, 2.5, 3]
    lines = live_layer_lines(np.ones((4, 2)), ["a", "b"], kind=kind)
    assert list(lines.data[0].x) == [1, 2, 2.5, 3]


def test_live_layer_lines_name_the_helped_band_below_and_the_hurt_band_above():
    import numpy as np

    from lca.figures import HELPED, HURT, live_layer_lines

    fig = live_layer_lines(np.array([[-0.2, 0.1], [-0.5, 0.3]]), ["a", "b"])
    labels = {a.text: (a.font.color, a.y, a.yanchor) for a in fig.layout.annotations}
    assert labels["helped"] == (HELPED, 0.02, "bottom")  # the green band is below 0
    assert labels["hurt"] == (HURT, 0.98, "top")


def test_train_page_says_a_large_run_and_what_smaller_records_would_write(runs_folder, monkeypatch):
    from lca.store import schema

    monkeypatch.setattr(schema, "LARGE_RUN_BYTES", 1)  # any run is "large" now
    at = app()
    at.switch_page("pages/train.py").run()
    at.selectbox(key="train_record").set_value("full").run()
    no_problem(at)
    large = [w for w in texts(at, "warning") if "This run will write about" in w]
    assert len(large) == 1 and "record = units: about" in large[0], texts(at, "warning")
    assert "Start training" in [b.label for b in at.button]  # said, not refused
