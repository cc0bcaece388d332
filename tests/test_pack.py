"""``--pack N``: N seeds trained in lock-step in one process, each as if trained alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lca.config import RunConfig
from lca.pack import pack_configs, pack_path, run_pack
from lca.store import Reader
from lca.train import run


def _config(**kw) -> RunConfig:
    base = dict(
        dataset="gauss",
        model="mlp",
        steps=5,
        eval_every=2,
        batch_size=16,
        subset=64,
        measure_size=64,
        lr=0.2,
        seed=3,
        optimizer="momentum",
    )
    return RunConfig(**{**base, **kw})


def test_pack_paths_and_configs(tmp_path):
    assert pack_path("runs/sweep.h5", 2).as_posix() == "runs/sweep-2.h5"
    cs = pack_configs(_config(pack=3), tmp_path / "p.h5")
    assert [c.seed for c in cs] == [3, 4, 5]
    assert [c.pack_index for c in cs] == [0, 1, 2]
    assert [c.out for c in cs] == [str(tmp_path / f"p-{i}.h5") for i in range(3)]


@pytest.mark.slow
def test_each_packed_model_equals_the_model_trained_alone(tmp_path):
    # unstacked: each model's own backward and random state, so equality is exact (tolerance 0
    # for the weights, 0 for the stored float32 per-parameter LCA).
    results = run_pack(_config(pack=3), out=tmp_path / "p.h5", stack=False)
    assert [r.status for r in results] == ["complete"] * 3
    for i, packed in enumerate(results):
        alone = run(_config(seed=3 + i), out=tmp_path / f"alone-{i}.h5")
        for (name, p), (_, q) in zip(
            packed.tracker.model.named_parameters(),
            alone.tracker.model.named_parameters(),
            strict=True,
        ):
            torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
        with Reader(tmp_path / f"p-{i}.h5") as rp, Reader(tmp_path / f"alone-{i}.h5") as ra:
            assert rp.status == "complete" and rp.num_steps == 5
            assert rp.config["pack_index"] == i and rp.config["seed"] == 3 + i
            assert rp.config["pack"] == 3
            for name in ra.names:
                np.testing.assert_array_equal(rp.param_lca(name), ra.param_lca(name))
    # different seeds: different models
    first = [next(iter(r.tracker.model.parameters())) for r in results[:2]]
    assert not torch.equal(*first)


@pytest.mark.slow
def test_stacked_pack_equals_each_model_trained_alone_to_float_tolerance(tmp_path):
    # one vmap-ed forward/backward for the 3 models: batched matmuls round differently, so the
    # weights agree to 1e-5 and the per-parameter LCA to 1e-5 absolute after 5 steps.
    import lca.pack as pack

    calls = {"n": 0}
    compute = pack.StackedStep.compute

    def counted(self, active):
        calls["n"] += 1
        return compute(self, active)

    pack.StackedStep.compute = counted
    try:
        results = run_pack(_config(pack=3), out=tmp_path / "v.h5")
    finally:
        pack.StackedStep.compute = compute
    assert calls["n"] == 5  # the stacked path really ran, once per step
    for i, packed in enumerate(results):
        alone = run(_config(seed=3 + i), out=tmp_path / f"alone-{i}.h5")
        for (name, p), (_, q) in zip(
            packed.tracker.model.named_parameters(),
            alone.tracker.model.named_parameters(),
            strict=True,
        ):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-5, msg=name)
        with Reader(tmp_path / f"v-{i}.h5") as rp, Reader(tmp_path / f"alone-{i}.h5") as ra:
            for name in ra.names:
                np.testing.assert_allclose(
                    rp.param_lca(name), ra.param_lca(name), rtol=0, atol=1e-5
                )


@pytest.mark.slow
def test_stop_ends_every_packed_model_interrupted(tmp_path):
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    results = run_pack(_config(pack=2), out=tmp_path / "s.h5", should_stop=stop)
    assert [r.status for r in results] == ["interrupted"] * 2
    assert [r.steps for r in results] == [2, 2]
    for i in range(2):
        with Reader(tmp_path / f"s-{i}.h5") as r:
            assert r.status == "interrupted" and r.num_steps == 2


def test_pack_must_be_positive():
    with pytest.raises(ValueError, match="pack"):
        _config(pack=0)


@pytest.mark.slow
def test_cli_pack_writes_one_file_per_model(tmp_path, capsys):
    from lca.cli import main

    out = tmp_path / "sweep.h5"
    code = main(
        [
            "train",
            "--dataset",
            "gauss",
            "--model",
            "mlp",
            "--steps",
            "3",
            "--subset",
            "64",
            "--measure-size",
            "64",
            "--batch-size",
            "16",
            "--seed",
            "7",
            "--pack",
            "2",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "[0] seed 7 complete" in text and "[1] seed 8 complete" in text
    for i in range(2):
        with Reader(tmp_path / f"sweep-{i}.h5") as r:
            assert r.status == "complete" and r.config["seed"] == 7 + i
    assert not out.exists()
    # an existing packed file is refused before anything is trained, in one sentence
    assert (
        main(
            [
                "train",
                "--dataset",
                "gauss",
                "--steps",
                "3",
                "--pack",
                "2",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        != 0
    )
    assert "exists" in capsys.readouterr().err


@pytest.mark.slow
def test_stacked_measurement_gives_each_model_the_lca_it_gets_alone(tmp_path, monkeypatch):
    # The LCA measurement of the 3 models at each Simpson node (end point, midpoint) comes from
    # one vmap-ed call; each model's own Measurer measures only L_0. Each model's weights,
    # losses and per-parameter LCA equal the model trained alone to float tolerance, and its
    # LCA conserves the loss change as well as the model alone does.
    import lca.pack as pack
    from lca.measure import Measurer

    own, stacked = {"n": 0}, {"n": 0}
    evaluate, stacked_evaluate = Measurer._evaluate, pack.StackedMeasurement.evaluate

    def counted(self, flat, need_grad, *rest):
        own["n"] += 1
        return evaluate(self, flat, need_grad, *rest)

    def counted_stacked(self, active, points):
        stacked["n"] += 1
        return stacked_evaluate(self, active, points)

    monkeypatch.setattr(Measurer, "_evaluate", counted)
    monkeypatch.setattr(pack.StackedMeasurement, "evaluate", counted_stacked)
    results = run_pack(_config(pack=3), out=tmp_path / "m.h5")
    assert [r.status for r in results] == ["complete"] * 3
    assert own["n"] == 3  # L_0 of each model; every step's nodes came from the stacked call
    assert stacked["n"] == 5 * 2  # per step: the end point and the midpoint, all 3 at once
    for i, packed in enumerate(results):
        alone = run(_config(seed=3 + i), out=tmp_path / f"alone-{i}.h5")
        for (name, p), (_, q) in zip(
            packed.tracker.model.named_parameters(),
            alone.tracker.model.named_parameters(),
            strict=True,
        ):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-5, msg=name)
        with Reader(tmp_path / f"m-{i}.h5") as rp, Reader(tmp_path / f"alone-{i}.h5") as ra:
            assert rp.status == "complete" and rp.config["seed"] == 3 + i
            np.testing.assert_allclose(rp.steps("loss"), ra.steps("loss"), rtol=0, atol=1e-6)
            np.testing.assert_array_equal(rp.steps("evaluations"), ra.steps("evaluations"))
            for name in ra.names:
                np.testing.assert_allclose(
                    rp.param_lca(name), ra.param_lca(name), rtol=0, atol=1e-5
                )
            # conservation per model: Σ_i A_{t,i} = L_{t+1} − L_t up to Simpson's error
            loss, lca_total = rp.steps("loss"), rp.steps("lca")
            residual = np.abs(np.diff(loss) - lca_total)
            alone_residual = np.abs(np.diff(ra.steps("loss")) - ra.steps("lca"))
            assert residual.max() < 1e-2 * np.abs(np.diff(loss)).max()  # lr 0.2: big steps
            np.testing.assert_allclose(residual, alone_residual, rtol=0, atol=1e-6)


@pytest.mark.slow  # starts a training subprocess
def test_train_page_pack_starts_one_job_writing_n_runs_seen_on_runs_and_compare(runs_folder):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from lca import jobs

    app = str(Path(__file__).resolve().parent.parent / "app.py")
    timeout = 300  # bounds only a hung script or job; waits follow the job's end
    at = AppTest.from_file(app, default_timeout=timeout)
    at.switch_page("pages/train.py").run()
    at.selectbox(key="train_dataset").set_value("circles").run()
    at.number_input(key="train_steps").set_value(4).run()
    at.selectbox(key="train_record").set_value("layers").run()
    at.number_input(key="train_pack").set_value(2).run()
    assert not at.exception
    assert any("pack of 2 models" in str(i.value) for i in at.info)
    at.text_input(key="train_name").set_value("sweep").run()
    at.button(key="train_start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    job = jobs.find("sweep-0.h5")
    try:
        assert job is not None and job.pack == 2
        assert job.run_names == ["sweep-0.h5", "sweep-1.h5"]
        assert jobs.find("sweep-1.h5") is job or jobs.find("sweep-1.h5").pid == job.pid
        assert at.session_state["live_job"] == "sweep-0.h5"
        # one job for the whole pack: the cap ($LCA_MAX_JOBS) counts it once
        assert [j.pid for j in jobs.jobs()] == [job.pid]
        job = jobs.wait(job, timeout)
    finally:
        if job is not None and job.alive:
            jobs.stop(job, wait_s=timeout)
    assert job.state == "complete", jobs.last_error(job)
    for i in range(2):
        with Reader(runs_folder / f"sweep-{i}.h5") as r:
            assert r.status == "complete" and r.num_steps == 4
            assert r.config["pack_index"] == i and r.config["seed"] == i
    assert not (runs_folder / "sweep.h5").exists()
    # both appear on the Runs page and can be compared
    runs_page = AppTest.from_file(app, default_timeout=timeout)
    runs_page.switch_page("pages/runs.py").run()
    assert not runs_page.exception
    shown = " ".join(str(d.value) for d in runs_page.dataframe)
    assert "sweep-0.h5" in shown and "sweep-1.h5" in shown
    compare = AppTest.from_file(app, default_timeout=timeout)
    compare.session_state["compare_runs"] = ["sweep-0.h5", "sweep-1.h5"]
    compare.switch_page("pages/compare.py").run()
    assert not compare.exception and not compare.error, [e.value for e in compare.error]
    table = " ".join(str(d.value) for d in compare.dataframe)
    assert "sweep-0.h5" in table and "sweep-1.h5" in table
