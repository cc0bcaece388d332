"""The experiments: every report is written, and its tables are the run files' numbers.

Each experiment runs at --tiny size into a temporary folder (all six share one module-scoped
run, as ``python -m lca experiment all`` does). The checks parse numbers out of the markdown
tables and recompute them here, independently, from the run files with ``lca.store.Reader``; a
number typed by hand or computed from the wrong array would not match.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest

from lca import cli
from lca.experiments import EXPERIMENTS, run_all, run_one
from lca.store import Reader
from lca.synchrony import synchrony


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split(" | ")]


def tables(md: str) -> list[tuple[list[str], list[dict[str, str]]]]:
    """Every markdown table: (headers, rows as header -> cell)."""
    lines = md.splitlines()
    out = []
    i = 0
    while i < len(lines):
        if lines[i].startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            head = _cells(lines[i])
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("| "):
                rows.append(dict(zip(head, _cells(lines[i]), strict=True)))
                i += 1
            out.append((head, rows))
        else:
            i += 1
    return out


def table_rows(md: str, header: str) -> list[dict[str, str]]:
    """Rows of every table that has a column ``header``."""
    return [r for head, rows in tables(md) if header in head for r in rows]


def run_files(md: str, runs: Path) -> dict[str, Path]:
    """Run label -> file, from the report's Runs table."""
    return {r["run"]: runs / r["file"] for r in table_rows(md, "file")}


def close(cell: str, value: float, *, rel: float = 2e-3, abs_: float = 0.0) -> bool:
    return math.isclose(float(cell), value, rel_tol=rel, abs_tol=abs_)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("experiments")
    run_all(folder, tiny=True, log=lambda _m: None)
    return folder


def report(out: Path, name: str) -> str:
    path = out / f"{name}.md"
    assert path.exists(), f"{name}.md was not written"
    return path.read_text()


@pytest.mark.slow  # the module's runs of every experiment: tens of seconds
def test_every_report_and_summary_written(out: Path) -> None:
    for name in EXPERIMENTS:
        md = report(out, name)
        assert md.startswith("# ") and "## Runs" in md
        files = run_files(md, out / "runs")
        assert files and all(p.exists() for p in files.values())
        for link in [
            line.split("](")[1].rstrip(")")
            for line in md.splitlines()
            if line.startswith("Figure: [")
        ]:
            assert (out / link).exists()
    assert (out / "figures" / "plotly.min.js").exists()  # figures open offline
    results = (out / "RESULTS.md").read_text()
    for name in EXPERIMENTS:
        assert f"({name}.md)" in results
    assert "+3.41e-3" in results  # the paper's number, quoted beside ours
    assert "--tiny" in results  # a tiny summary says its numbers mean nothing


@pytest.mark.slow  # the module's runs of every experiment: tens of seconds
def test_integrators_table_from_runs(out: Path) -> None:
    md = report(out, "integrators")
    files = run_files(md, out / "runs")
    rows = table_rows(md, "whole run %")
    assert {r["method"] for r in rows} >= {"euler", "trapezoid", "rk4", "rk4-adaptive", "gauss2"}
    for row in rows:
        with Reader(files[row["run"]]) as r:
            loss = r.steps("loss")
            err = r.steps("error")
            d = np.diff(loss)
            whole = abs(err.sum()) / abs(loss[-1] - loss[0])
            mean_rel = np.mean(np.abs(err[d != 0]) / np.abs(d[d != 0]))
            evals = r.steps("evaluations").mean()
        assert close(row["whole run %"], 100 * whole, rel=1e-3, abs_=1e-4)
        assert close(row["mean rel. %"], 100 * mean_rel, rel=1e-3, abs_=1e-3)
        assert close(row["evals/step"], evals)
        if row["method"] == "rk4":
            assert float(row["evals/step"]) == 2  # endpoint reuse: the method's cost floor
        if row["method"] == "euler":
            assert float(row["evals/step"]) == 1


@pytest.mark.slow  # the module's runs of every experiment: tens of seconds
def test_helped_tables_from_runs(out: Path) -> None:
    md = report(out, "helped")
    files = run_files(md, out / "runs")
    step_rows = table_rows(md, "helped % (mean)")
    assert {r["run"] for r in step_rows} == {"digits-fc-mnist", "digits-lenet"}
    for row in step_rows:
        with Reader(files[row["run"]]) as r:
            helped = r.steps("helped")
            hs = np.concatenate([r.param_helped_steps(n).ravel() for n in r.names])
            tot = np.concatenate([r.param_totals(n).ravel() for n in r.names])
            t = r.num_steps
            a = np.concatenate([r.param_lca(n).reshape(t, -1) for n in r.names], axis=1)
        assert close(row["helped % (mean)"], 100 * helped.mean(), abs_=0.051)
        prow = next(p for p in table_rows(md, "median %") if p["run"] == row["run"])
        assert close(prow["median %"], 100 * np.median(hs[tot != 0] / t), abs_=0.051)
        assert int(prow["never moved"].replace(",", "")) == int((tot == 0).sum())
        vrow = next(v for v in table_rows(md, "< 0 %") if v["run"] == row["run"])
        assert close(vrow["< 0 %"], 100 * (a < 0).mean(), abs_=0.051)
        assert close(vrow["sum of < 0"], float(a[a < 0].astype(np.float64).sum()), rel=1e-3)


@pytest.mark.slow  # the module's runs of every experiment: tens of seconds
def test_layers_totals_from_runs(out: Path) -> None:
    md = report(out, "layers")
    files = run_files(md, out / "runs")
    sections = md.split("\n## ")
    checked = 0
    for label, path in files.items():
        section = next(s for s in sections if s.startswith(label + ":"))
        rows = table_rows(section, "total LCA")
        with Reader(path) as r:
            lca = r.layer_lca()
            names = r.names
            loss = r.steps("loss")
            err = r.steps("error")
        for row in rows:
            cols = [i for i, n in enumerate(names) if n.rsplit(".", 1)[0] == row["layer"]]
            assert cols, row["layer"]
            assert close(row["total LCA"], float(lca[:, cols].sum()), rel=1e-3, abs_=1e-12)
            checked += 1
        # Conservation: the layers' totals add up to the loss change (minus what the integrator
        # left unallocated), so "share of total LCA" is a share of the loss decrease.
        assert math.isclose(lca.sum() + err.sum(), loss[-1] - loss[0], rel_tol=1e-6, abs_tol=1e-9)
    assert checked >= 3 + 4 + 20  # fc-mnist, LeNet and ResNet-20 modules


@pytest.mark.slow  # the module's runs of every experiment: tens of seconds
def test_freeze_side_by_side_from_runs(out: Path) -> None:
    md = report(out, "freeze")
    files = run_files(md, out / "runs")
    assert any(label.endswith("-freeze-out") for label in files)
    for label, path in files.items():
        if not label.endswith("-freeze-out"):
            continue
        base = files[label.removesuffix("-freeze-out")]
        section = next(
            s for s in md.split("\n## ") if s.startswith(label.removesuffix("-freeze-out") + ":")
        )
        layer_rows = {r["layer"]: r for r in table_rows(section, "LCA frozen")}
        assert float(layer_rows["out"]["LCA frozen"]) == 0.0  # frozen: never moved
        outcome = {r["run"]: r for r in table_rows(section, "loss after")}
        with Reader(path) as r:
            assert close(
                outcome["last layer frozen"]["loss after"], float(r.steps("loss")[-1]), rel=5e-4
            )
            assert np.all(
                r.layer_lca()[:, [i for i, n in enumerate(r.names) if n.startswith("out.")]] == 0
            )
        with Reader(base) as r:
            assert close(outcome["baseline"]["loss after"], float(r.steps("loss")[-1]), rel=5e-4)
            fc = [i for i, n in enumerate(r.names) if n.startswith("out.")]
            assert close(
                layer_rows["out"]["LCA baseline"], float(r.layer_lca()[:, fc].sum()), rel=1e-3
            )


@pytest.mark.slow  # the module's runs of every experiment: tens of seconds
def test_synchrony_matches_the_app_metric(out: Path) -> None:
    md = report(out, "synchrony")
    files = run_files(md, out / "runs")
    rows = [r for r in table_rows(md, "C %") if r["C %"] != "n/a"]
    assert rows
    for row in rows:
        with Reader(files[row["run"]]) as r:
            series = r.layer_lca()[r.steps("kind") == 0]
        res = synchrony(
            series,
            top_fraction=0.05,
            window=25 if row["mode"] == "detrended" else 0,
            shifts=1000,
            seed=0,
        )
        assert close(row["C %"], 100 * res.observed, abs_=0.051)
        assert close(row["null mean %"], 100 * res.null_mean, abs_=0.051)
        assert int(row["tensors"]) == len(res.layers)


@pytest.mark.slow  # the module's runs of every experiment: tens of seconds
def test_techniques_tables_from_runs(out: Path) -> None:
    md = report(out, "techniques")
    files = run_files(md, out / "runs")
    prune_rows = table_rows(md, "helper-removal ratio")
    assert {r["method"] for r in prune_rows} == {"prune-magnitude", "prune-lobs", "prune-lca"}
    for row in prune_rows:
        with Reader(files[row["run"]]) as r:
            tot = r.events(f"techniques/{row['method']}/event_totals")
            final = float(r.steps("loss")[-1])
        assert close(row["cost (ΣA)"], float(tot["cost"][0]), rel=1e-3, abs_=1e-12)
        assert close(row["final loss"], final, rel=5e-4)
        ratio = float(tot["helper_removal_ratio"][0])
        assert (
            row["helper-removal ratio"] == "n/a"
            if not math.isfinite(ratio)
            else close(row["helper-removal ratio"], ratio, rel=1e-2)
        )
    wus_rows = {r["run"]: r for r in table_rows(md, "skipped steps")}
    for key in ("wus", "wus-lr"):
        with Reader(files[wus_rows[key]["run file label"]]) as r:
            skipped = int((np.asarray(r.series(f"techniques/{key}/skipping")) != 0).sum())
            seconds = float(np.sum(r.series("steps/seconds_train")))
        assert int(wus_rows[key]["skipped steps"]) == skipped > 0
        assert close(wus_rows[key]["train s"], seconds, rel=1e-3)


@pytest.mark.slow  # the module's runs of every experiment: tens of seconds
def test_methods_table_from_runs(out: Path) -> None:
    md = report(out, "methods")
    files = run_files(md, out / "runs")
    rows = {r["method"]: r for r in table_rows(md, "alignment last")}
    assert set(rows) == {"backprop", "dfa", "bdfa", "symmetry"}
    for method, row in rows.items():
        with Reader(files[f"digits-{method}"]) as r:
            totals = np.concatenate([np.ravel(r.param_totals(n)) for n in r.names])
            assert close(row["helped %"], 100 * float((totals < 0).mean()), abs_=0.051)
            assert close(
                row["test acc %"], 100 * float(r.events("eval")["test_acc"][-1]), abs_=0.051
            )
            if method in ("dfa", "bdfa"):
                a = np.asarray(r.series(f"techniques/{method}/alignment"), dtype=np.float64)
                assert close(
                    row["alignment last"],
                    float(np.nanmean(a[-max(1, len(a) // 5) :])),
                    rel=1e-2,
                    abs_=1e-3,
                )
            else:
                assert row["alignment last"] == "n/a"
            saved = r.technique_summaries().get("symmetry", {}).get("params_saved", 0)
            assert close(
                row["helped % of learned"],
                100 * float((totals < 0).sum() / (totals.size - saved)),
                abs_=0.051,
            )
            assert row["params saved"].startswith(f"{saved:,} of {totals.size:,}")
    assert rows["symmetry"]["params saved"].startswith("4,032")  # fc1, fc2: 2 × 64·63/2


@pytest.mark.slow
def test_single_experiment_keeps_runs_beside_report(tmp_path: Path) -> None:
    from lca.experiments import synchrony as sync_experiment

    path = sync_experiment.run(tmp_path, tiny=True)
    assert path == tmp_path / "synchrony.md" and path.exists()
    runs = sorted((tmp_path / "runs").glob("*.h5"))  # default runs folder: out_dir/runs
    assert runs
    stamps = [p.stat().st_mtime_ns for p in runs]
    first = path.read_text()
    sync_experiment.run(tmp_path, tiny=True)  # same configs: the runs are reused, not retrained
    assert [p.stat().st_mtime_ns for p in runs] == stamps
    assert table_rows(path.read_text(), "C %") == table_rows(first, "C %")


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fake_data(folder: Path) -> None:
    """Tiny MNIST (IDX) and CIFAR-10 (pickle batches) files in the real formats."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 48), ("t10k", 16)):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    cifar = folder / "cifar-10-batches-py"
    cifar.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (8, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, 8)],
        }
        (cifar / name).write_bytes(pickle.dumps(batch))


@pytest.mark.slow
def test_data_dir_adds_mnist_and_cifar_runs(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _fake_data(data_dir)
    path = run_one(
        "layers", tmp_path / "out", tiny=True, data_dir=str(data_dir), log=lambda _m: None
    )
    files = run_files(path.read_text(), tmp_path / "out" / "runs")
    assert {"mnist-fc-mnist", "mnist-lenet", "cifar10-resnet20"} <= set(files)


def test_cli_unknown_experiment_is_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["experiment", "no-such-thing"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: Unknown experiment 'no-such-thing'") and "\n" not in err
    assert "Traceback" not in err


def test_cli_lists_experiments(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["experiment", "--list"]) == 0
    listed = capsys.readouterr().out
    for name in [*EXPERIMENTS, "all"]:
        assert name in listed


def test_paper_scale_configs_follow_the_protocol() -> None:
    from lca.experiments.common import ExperimentContext
    from lca.experiments.setups import paper_setups

    ctx = ExperimentContext(Path("out"), Path("runs"), scale="paper", dataset="fashion-mnist")
    setups = {s.label: s.config for s in paper_setups(ctx)}
    assert set(setups) == {"paper-fashion-mnist-fc-mnist", "paper-fashion-mnist-lenet"}
    for cfg in setups.values():
        assert (cfg.subset, cfg.measure_size, cfg.measure_batch) == (55_000, None, 1_000)
        assert (cfg.method, cfg.tolerance, cfg.dataset) == ("rk4-paper", 1e-3, "fashion-mnist")
        assert cfg.measure_val  # the paper's rule: training and validation within 1e-3
    assert paper_setups(ExperimentContext(Path("out"), Path("runs"))) == []  # quick scale
    ctx.paper_steps, ctx.paper_measure = 20, 5000
    reduced = paper_setups(ctx)
    assert all(
        s.label.endswith("-reduced")
        and s.config.steps == 20
        and s.config.measure_size == 5000
        and "reduced" in s.note
        for s in reduced
    )


def test_paper_scale_without_the_dataset_is_one_sentence(tmp_path: Path) -> None:
    from lca.experiments import ExperimentError

    with pytest.raises(ExperimentError) as excinfo:
        run_one(
            "helped",
            tmp_path / "out",
            tiny=True,
            data_dir=str(tmp_path),
            scale="paper",
            dataset="fashion-mnist",
            log=lambda _m: None,
        )
    message = str(excinfo.value)
    assert "\n" not in message and "Fashion-MNIST" in message and str(tmp_path) in message
    with pytest.raises(ExperimentError, match="28×28"):
        run_one(
            "helped",
            tmp_path / "out",
            tiny=True,
            scale="paper",
            dataset="digits",
            log=lambda _m: None,
        )


@pytest.mark.slow
def test_paper_scale_adds_protocol_runs(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _fake_data(data_dir)

    def paper_scale(name: str) -> Path:
        return run_one(
            name,
            tmp_path / "out",
            tiny=True,
            data_dir=str(data_dir),
            scale="paper",
            dataset="fashion-mnist",
            log=lambda _m: None,
        )

    path = paper_scale("helped")
    files = run_files(path.read_text(), tmp_path / "out" / "runs")
    # --tiny shrinks every run, so the paper-scale ones say they are reduced.
    paper = {"paper-fashion-mnist-fc-mnist-reduced", "paper-fashion-mnist-lenet-reduced"}
    assert paper <= set(files)
    with Reader(files["paper-fashion-mnist-fc-mnist-reduced"]) as r:
        assert r.config["method"] == "rk4-paper" and r.config["dataset"] == "fashion-mnist"
        assert r.status == "complete"
    # Freezing the last layer is tested at the paper's protocol too: same runs, `out` frozen.
    freeze = paper_scale("freeze")
    frozen = run_files(freeze.read_text(), tmp_path / "out" / "runs")
    with Reader(frozen["paper-fashion-mnist-fc-mnist-reduced-freeze-out"]) as r:
        out_rows = [i for i, n in enumerate(r.names) if n.startswith("out.")]
        assert out_rows and not r.layer_totals()[out_rows].any()  # a frozen layer allocates 0
    from lca.experiments.results import write_results

    # RESULTS.md gets a column per scale for fc-mnist and LeNet, labelled with the reduction.
    text = write_results(tmp_path / "out", tmp_path / "RESULTS.md").read_text()
    section = text[text.index("## MNIST-FC and LeNet at each scale") :]
    assert "ours, Fashion-MNIST, paper protocol | ours, digits (quick)" in section
    assert "paper-fashion-mnist-lenet-reduced" in section and "steps, measurement set" in section
    assert "parameters helping per step (mean), LeNet" in section
    assert "freezing the last layer, MNIST-FC (fc-mnist)" in section


def test_results_include_benchmark_sections(tmp_path: Path) -> None:
    from lca.experiments.results import write_results

    (tmp_path / "bench-zeta.md").write_text("## Zeta\n\nmeasured 2\n")
    (tmp_path / "bench-alpha.md").write_text("## Alpha\n\nmeasured 1\n")
    (tmp_path / "notes.md").write_text("## Not a benchmark\n")
    text = write_results(tmp_path, tmp_path / "RESULTS.md").read_text()
    assert text.index("## Alpha") < text.index("## Zeta") < text.index("## Reports")
    assert "Not a benchmark" not in text


def test_methods_helped_shares_leave_out_structurally_zero_tensors(tmp_path: Path) -> None:
    """A conv bias right before BatchNorm has a rounding-noise LCA of random sign: methods'
    helped % must leave it out (the app's one rule, ``rounding_mask``), not count it."""
    import torch
    from torch import nn

    import lca
    from lca.experiments.methods import measure
    from lca.store import Writer
    from lca.train import EVAL_COLUMNS
    from lca.views import rounding_mask

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )  # fmt: skip
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(96, 1, 6, 6, generator=g), torch.randint(0, 3, (96,), generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    writer = Writer(tmp_path / "bn.h5")
    with lca.Tracker(model, nn.CrossEntropyLoss(), (x, y), writer=writer,
                     events={"eval": EVAL_COLUMNS}) as tracker:  # fmt: skip
        for t in range(6):
            idx = torch.arange(t * 16, t * 16 + 16)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            with tracker.step():
                opt.step()
        writer.add_event("eval", [6, 0.5, 0.4, 1.0, 1.0])
    with Reader(tmp_path / "bn.h5") as r:
        assert [n for n, z in zip(r.names, rounding_mask(r), strict=True) if z] == ["0.bias"]
        m = measure(r)
        kept = np.concatenate([np.ravel(r.param_totals(n)) for n in r.names if n != "0.bias"])
        params = sum(math.prod(s) for s in r.shapes.values())
    assert m["structural_zero"] == 4 and m["params"] == params
    assert m["helped"] == float((kept < 0).mean())
    assert m["helped_free"] == float((kept < 0).sum() / kept.size)  # no mirrored entries
