"""The pages' caches (views and figures shared by every session) never show stale or foreign data.

Figures are cached per run file version (``pages.shared.RunFigures``: path, mtime, size, inode)
and shared between sessions; views per (path, mtime, size). A live run's figures may be reused
for one refresh interval (``LIVE_SECONDS``) while the file grows, so a growing run must show its
new steps after that, a finished run its every step at once, and two runs must never get each
other's data, whichever was drawn first. Pages are run with AppTest in one process, so every
session shares the same caches.
"""

from __future__ import annotations

import base64
import json
import math
import os
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

import lca
from lca.allocate import KIND_STEP, StepRecord, UnitGroup

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"fc.weight": (3, 2), "fc.bias": (3,)}


def page(name: str, run: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / f"{name}.py"), default_timeout=60)
    at.session_state["run"] = run
    return at


def arr(v) -> np.ndarray:
    """A plotly JSON array: a list, or plotly's typed array {dtype, bdata (base64), shape}."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        if v.get("shape"):
            a = a.reshape([int(x) for x in str(v["shape"]).split(",")])
        return a
    return np.asarray(v, dtype=float)


def charts(name: str, run: str) -> list[dict]:
    """The plotly specs a new session of page ``name`` gets for ``run``."""
    at = page(name, run).run()
    assert not at.exception, [e.message for e in at.exception]
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def measured_loss(specs: list[dict]) -> np.ndarray:
    """The Loss page's measured loss curve (the first trace of its first chart)."""
    return arr(specs[0]["data"][0]["y"])


class LiveRun:
    """A run being written, as a training job writes it: a Writer that stays open (status
    "running") and appends steps of known LCA; ``grow`` flushes them so readers see them."""

    def __init__(self, path: Path, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        names = tuple(SHAPES)
        layout = lca.Layout(
            names=names,
            shapes=tuple(SHAPES[n] for n in names),
            units=(UnitGroup("fc", names, (0, 0), 3),),
            method="rk4",
            dtype="float32",
            measure_size=10,
        )
        config = {"dataset": "digits", "model": "mlp", "steps": 100, "record": "full"}
        self.writer = lca.Writer(path, record="full", config=config, flush_seconds=0.0)
        self.loss = 2.0 + seed
        self.writer.begin(layout, self.loss)
        self.t = 0

    def grow(self, steps: int) -> None:
        for _ in range(steps):
            per_param = {
                n: self.rng.uniform(-0.02, 0.01, size=s).astype(np.float32)
                for n, s in SHAPES.items()
            }
            per_tensor = np.array([float(v.sum(dtype=np.float64)) for v in per_param.values()])
            start, self.loss = self.loss, self.loss + math.fsum(per_tensor)
            self.writer.append(
                StepRecord(
                    index=self.t,
                    kind=KIND_STEP,
                    train_step=self.t + 1,
                    label="",
                    loss_start=start,
                    loss_end=self.loss,
                    per_param={n: torch.from_numpy(v) for n, v in per_param.items()},
                    per_tensor=per_tensor,
                    per_unit={
                        "fc": per_param["fc.weight"].sum(axis=1, dtype=np.float64)
                        + per_param["fc.bias"]
                    },
                    helped=0.5,
                    hurt=0.5,
                    splits=1,
                    evaluations=2,
                    seconds_lca=0.0,
                    wall=float(self.t + 1),
                )
            )
            self.t += 1
        self.writer.flush()

    def close(self) -> None:
        if not self.writer.closed:
            self.writer.close("complete")


@pytest.fixture
def live_runs(runs_folder):
    made: list[LiveRun] = []

    def make(name: str, seed: int) -> LiveRun:
        run = LiveRun(runs_folder / name, seed)
        made.append(run)
        return run

    yield make
    for run in made:
        run.close()


def file_loss(path: Path) -> np.ndarray:
    with h5py.File(path, "r", swmr=True) as f:
        return f["steps/loss"][()]


@pytest.mark.slow
def test_a_growing_run_is_drawn_again_with_its_new_steps(live_runs, runs_folder):
    run = live_runs("growing.h5", seed=0)
    run.grow(5)
    first = charts("loss", "growing.h5")
    np.testing.assert_allclose(measured_loss(first), file_loss(runs_folder / "growing.h5"))
    assert len(measured_loss(first)) == 6  # L_0 and 5 steps
    layers_before = charts("layers", "growing.h5")
    neurons_before = charts("neurons", "growing.h5")

    run.grow(7)  # the job writes on; the same file, in place
    # Other sessions, after the file grew: the new steps appear once the live figure's refresh
    # interval has passed (waits on that, with a guard far beyond the 2 s interval).
    guard = time.monotonic() + 120
    while len(measured_loss(again := charts("loss", "growing.h5"))) != 13:
        assert time.monotonic() < guard, "the new steps never appeared"
        time.sleep(0.2)
    np.testing.assert_allclose(measured_loss(again), file_loss(runs_folder / "growing.h5"))
    # Every cached figure of the other pages is drawn again too.
    for name, before in (("layers", layers_before), ("neurons", neurons_before)):
        while charts(name, "growing.h5") == before:
            assert time.monotonic() < guard, f"the {name} page never showed the new steps"
            time.sleep(0.2)

    run.grow(3)
    run.close()  # finished: the very next session sees every step, no refresh interval
    np.testing.assert_allclose(
        measured_loss(charts("loss", "growing.h5")), file_loss(runs_folder / "growing.h5")
    )
    assert len(measured_loss(charts("loss", "growing.h5"))) == 16


@pytest.mark.slow
def test_two_runs_never_share_cached_figures(live_runs, runs_folder):
    a, b = live_runs("a.h5", seed=1), live_runs("b.h5", seed=2)
    a.grow(6)
    b.grow(6)  # same shapes and length: files of the same size
    for name in ("a.h5", "b.h5", "a.h5"):  # each drawn after the other was cached
        np.testing.assert_allclose(
            measured_loss(charts("loss", name)), file_loss(runs_folder / name)
        )
    heat = {name: charts("layers", name)[1] for name in ("a.h5", "b.h5")}
    assert heat["a.h5"] != heat["b.h5"]


@pytest.mark.slow
def test_a_run_replaced_under_the_same_name_is_not_served_from_the_cache(live_runs, runs_folder):
    old = live_runs("same.h5", seed=3)
    old.grow(4)
    before = measured_loss(charts("loss", "same.h5"))
    old.close()
    os.remove(runs_folder / "same.h5")
    new = live_runs("same.h5", seed=4)
    new.grow(4)
    after = measured_loss(charts("loss", "same.h5"))
    np.testing.assert_allclose(after, file_loss(runs_folder / "same.h5"))
    assert not np.allclose(before, after)
