"""Big steps stay honest (issue 15 item 9): the size estimate holds for paper-scale layouts, and a
run that fits but writes a large file says so with the figure and the smaller record modes."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from lca import models
from lca.allocate import Layout, model_layout
from lca.store import Reader, Writer, estimate_bytes
from lca.store.schema import LargeRunNotice, size_notice
from lca.synthetic import random_record


def _layout(model: str = "fc-mnist") -> Layout:
    with torch.device("meta"):
        net = models.build(model, (1, 28, 28), 10)
    return model_layout(net, method="rk4-paper", measure_size=55_000)


def test_a_60000_step_full_record_is_said_with_its_size_and_the_smaller_modes() -> None:
    layout = _layout()  # the paper's 784-100-50-10: 84,060 parameters
    text = size_notice(layout, 60_000, "full")
    assert text is not None and "\n" not in text
    assert "GB" in text and "60,000 steps" in text and "84,060 parameters" in text
    assert "--record units: about" in text and "--record layers: about" in text
    full = estimate_bytes(layout, 60_000, "full")
    assert full >= 60_000 * 84_060 * 4  # every weight of every step, float32
    assert estimate_bytes(layout, 60_000, "units") < full / 100
    assert size_notice(layout, 200, "full") is None
    assert "--record" not in (size_notice(layout, 10**8, "layers") or "--record")


@pytest.mark.parametrize(("mode", "steps"), [("full", 40), ("units", 300)])
def test_the_estimate_holds_for_a_paper_scale_layout(tmp_path: Path, mode: str, steps: int) -> None:
    layout = _layout()
    g = torch.Generator().manual_seed(0)
    path = tmp_path / f"{mode}.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("error", LargeRunNotice)  # small: no notice
        w = Writer(path, record=mode, expected_steps=steps)
        w.begin(layout, 2.3)
    for i in range(steps):
        w.append(random_record(layout, i, g))
    w.close("complete")
    est, real = estimate_bytes(layout, steps, mode), path.stat().st_size
    assert real <= est <= 1.1 * real, (est, real)  # never under: the disk check relies on it


def test_the_writer_says_a_large_run_before_it_starts(tmp_path: Path) -> None:
    with pytest.warns(LargeRunNotice, match="--record units"):
        w = Writer(tmp_path / "big.h5", record="full", expected_steps=60_000)
        try:
            w.begin(_layout(), 2.3)
        except Exception:  # a disk too small for 20 GB refuses instead: also honest
            pass
        finally:
            w.close("failed")


@pytest.mark.slow  # four small real runs
@pytest.mark.parametrize("record", ["full", "layers"])
def test_the_app_estimate_counts_held_out_lca_and_holds_for_the_real_file(make_run, record):
    """The app's estimate before a job starts (lca.jobs.estimate_bytes) counts what measure_val
    adds (its per-step series and each weight's running held-out total): never under the real
    file, whose disk check relies on it, and as close as the writer's own estimate."""
    from lca import jobs
    from lca.config import RunConfig

    sizes = {}
    for val in (False, True):
        path = make_run(
            f"est-{record}-{val}.h5", record=record, measure_val=val, steps=10, measure_size=100
        )
        with Reader(path) as r:
            config = RunConfig.from_dict(r.config)
        est, params = jobs.estimate_bytes(config)
        real = path.stat().st_size
        assert real <= est <= 1.35 * real, (val, est, real)
        sizes[val] = (est, real)
    (est0, real0), (est1, real1) = sizes[False], sizes[True]
    assert est1 - est0 >= real1 - real0 >= params * 8  # the held-out totals alone: P × float64


def test_the_app_and_the_cli_say_a_large_run_with_the_smaller_modes(monkeypatch, tmp_path, capsys):
    """The Train page's sentence (lca.jobs.large_run_notice) for the paper's 60,000-step fc-mnist
    full record, and the CLI's 'notice:' line when the writer finds a run large."""
    from lca import cli, jobs
    from lca.config import RunConfig
    from lca.store import schema

    paper = RunConfig.from_dict(
        {"dataset": "fashion-mnist", "model": "fc-mnist", "steps": 60_000, "record": "full"}
    )
    text = jobs.large_run_notice(paper)
    assert text is not None and "\n" not in text and "60,000 steps" in text
    assert "record = units: about" in text and "record = layers: about" in text
    assert jobs.large_run_notice(RunConfig.from_dict({**paper.to_dict(), "steps": 100})) is None

    monkeypatch.setattr(schema, "LARGE_RUN_BYTES", 1)  # any run is "large" now
    out = tmp_path / "tiny.h5"
    args = ["train", "--dataset", "digits", "--model", "mlp", "--model-option", "hidden=[4]",
            "--steps", "2", "--measure-size", "50", "--record", "full", "--quiet",
            "--out", str(out)]  # fmt: skip
    assert cli.main(args) == 0
    notices = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("notice: ")]
    assert len(notices) == 1 and "--record units: about" in notices[0], notices
