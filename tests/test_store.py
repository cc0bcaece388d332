"""Tests for the HDF5 run store (lca.store): what the Tracker produces is what a reader gets back.

Runs are made by the real producer, ``lca.Tracker`` on a tiny MLP, so the test covers the
contract between the engine and the file. The live-reader and kill tests run the writer in a
separate process, because SWMR is about two processes sharing one file.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import lca
from lca import store
from lca.store import (
    RunFileError,
    RunTooLargeError,
    block_starts,
    block_sum,
    downsample_to_cells,
    estimate_bytes,
    human_bytes,
    open_run,
    recover,
    recovery,
    writer,
)

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12
EVAL = ("train_step", "train_acc", "test_acc", "test_loss")
PRUNE_EVENTS = ("train_step", "removed", "loss_cost")
MASK = "techniques/prune/mask/0.weight"


def _data(n: int = 200, d: int = 6, k: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    return x, y


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3))


def _tracked_run(path: Path, record: str, **writer_kw):
    """A short run with every kind of row: optimizer steps, a prune intervention, series that
    are sometimes missing, two event tables and a fixed mask array."""
    x, y = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    loss_fn = nn.functional.cross_entropy
    writer = lca.Writer(
        path,
        record=record,
        config={"dataset": "random", "model": "mlp", "techniques": ["prune:0.3"]},
        chunk_rows=4,
        **writer_kw,
    )
    tracker = lca.Tracker(
        model,
        loss_fn,
        (x, y),
        writer=writer,
        series={"lr": ("f4", ()), "probe": ("f8", (2,))},
        events={"eval": EVAL, "techniques/prune/events": PRUNE_EVENTS},
        arrays={MASK: ("u1", (10, 6), 1)},
    )
    records = []
    for step in range(STEPS):
        if step == 6:  # a weight move outside the optimizer: its own segment
            with tracker.intervention("prune"), torch.no_grad():
                model[0].weight[:, :2] = 0
            records.append(tracker.last)
            mask = np.ones((10, 6), dtype=np.uint8)
            mask[:, :2] = 0
            writer.set_array(MASK, mask)
            writer.add_event("techniques/prune/events", [step, 20, tracker.last.total])
        xb, yb = x[step * 16 : (step + 1) * 16], y[step * 16 : (step + 1) * 16]
        opt.zero_grad()
        loss_fn(model(xb), yb).backward()
        with tracker.step() as row:
            opt.step()
            row["lr"] = 0.2 + step
            if step % 2 == 0:
                row["probe"] = np.array([step, -step], dtype=np.float64)
        records.append(tracker.last)
        if step % 5 == 4:
            acc = step / 100
            writer.add_event("eval", [step + 1, 0.5 + acc, 0.4 + acc, 1.0 - acc])
    tracker.close()
    return records, tracker


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("store")
    out = {}
    for mode in ("full", "units", "layers"):
        path = folder / f"{mode}.h5"
        records, tracker = _tracked_run(path, mode)
        out[mode] = (path, records, tracker)
    return out


# ---------------------------------------------------------------------------------------------
# Round trip.


@pytest.mark.parametrize("mode", ["full", "units", "layers"])
def test_round_trip_every_field(runs, mode):
    path, records, tracker = runs[mode]
    with open_run(path) as r:
        assert r.num_steps == len(records) == STEPS + 1
        assert r.status == "complete" and r.record == mode and r.schema_version == 1
        assert r.method == "rk4" and r.num_params == tracker.layout.num_params
        assert r.names == list(tracker.layout.names)
        assert r.shapes == dict(zip(tracker.layout.names, tracker.layout.shapes, strict=True))
        assert r.config["model"] == "mlp"
        assert [(g.name, g.size, g.params) for g in tracker.layout.units] == r.units

        loss = r.steps("loss")
        assert loss.tolist() == [tracker.loss0] + [rec.loss_end for rec in records]
        fields = {
            "lca": lambda rec: rec.total,
            "helped": lambda rec: rec.helped,
            "hurt": lambda rec: rec.hurt,
            "error": lambda rec: rec.error,
            "splits": lambda rec: rec.splits,
            "evaluations": lambda rec: rec.evaluations,
            "kind": lambda rec: rec.kind,
            "train_step": lambda rec: rec.train_step,
            "seconds_lca": lambda rec: rec.seconds_lca,
            "wall": lambda rec: rec.wall,
            "label": lambda rec: rec.label,
        }
        for field, get in fields.items():
            assert r.steps(field).tolist() == [get(rec) for rec in records], field
        assert r.steps("kind").tolist().count(1) == 1 and "prune" in r.steps("label").tolist()

        layers = r.layer_lca()
        assert layers.dtype == np.float64 and layers.shape == (len(records), len(r.names))
        np.testing.assert_array_equal(layers, np.stack([rec.per_tensor for rec in records]))
        # Conservation telescopes: Σ_t ΣA + Σ_t error = L_T − L_0.
        total = math.fsum(r.steps("lca").tolist()) + math.fsum(r.steps("error").tolist())
        assert total == pytest.approx(loss[-1] - loss[0], abs=1e-12)
        np.testing.assert_allclose(r.layer_lca(cumulative=True)[-1], layers.sum(0), rtol=1e-12)

        if mode == "layers":
            with pytest.raises(RunFileError, match="--record units or full"):
                r.unit_lca(r.units[0][0])
        else:
            for g in tracker.layout.units:
                np.testing.assert_array_equal(
                    r.unit_lca(g.name), np.stack([rec.per_unit[g.name] for rec in records])
                )
        for name in r.names:
            per = np.stack([rec.per_param[name].numpy() for rec in records])
            expected_total = np.zeros(per.shape[1:])
            for row in per:
                expected_total += row.astype(np.float64)
            np.testing.assert_allclose(r.param_totals(name), expected_total, rtol=1e-12, atol=1e-18)
            np.testing.assert_array_equal(r.param_helped_steps(name), (per < 0).sum(0))
            if mode == "full":
                got = r.param_lca(name)
                assert got.dtype == np.float32
                np.testing.assert_array_equal(got, per.astype(np.float32))
                # the totals are the sum of the stored per-step values
                np.testing.assert_allclose(
                    r.param_totals(name), got.astype(np.float64).sum(0), rtol=1e-12, atol=1e-18
                )
            else:
                with pytest.raises(RunFileError, match="--record full"):
                    r.param_lca(name)
        assert r.totals_rows == r.num_steps


@pytest.mark.parametrize("mode", ["full", "units", "layers"])
def test_gpu_summing_path_writes_the_same_file(runs, mode, tmp_path, monkeypatch):
    """On a GPU the writer sums each weight's LCA on the device; driven here with CPU tensors,
    that path must store what the host path stores."""
    monkeypatch.setattr(writer, "_sums_on_device", lambda a: True)
    path = tmp_path / f"{mode}.h5"
    _tracked_run(path, mode)
    with open_run(runs[mode][0]) as host, open_run(path) as device:
        assert device.num_steps == host.num_steps and device.totals_rows == host.totals_rows
        np.testing.assert_array_equal(device.layer_lca(), host.layer_lca())
        for name in host.names:
            np.testing.assert_allclose(
                device.param_totals(name), host.param_totals(name), rtol=1e-12, atol=1e-18
            )
            np.testing.assert_array_equal(
                device.param_helped_steps(name), host.param_helped_steps(name)
            )
            if mode == "full":
                np.testing.assert_array_equal(device.param_lca(name), host.param_lca(name))


def test_series_events_arrays_round_trip(runs):
    path, records, _ = runs["units"]
    with open_run(path) as r:
        lr = r.series("lr")
        assert lr.dtype == np.float32
        kinds = r.steps("kind")
        # steps carry the lr the loop wrote; the intervention row had no value: NaN
        assert np.isnan(lr[kinds == 1]).all()
        np.testing.assert_array_equal(lr[kinds == 0], (0.2 + np.arange(STEPS)).astype(np.float32))
        probe = r.series("probe")
        assert probe.shape == (len(records), 2)
        step_rows = np.flatnonzero(kinds == 0)
        np.testing.assert_array_equal(probe[step_rows[0]], [0.0, -0.0])
        assert np.isnan(probe[step_rows[1]]).all()

        ev = r.events("eval")
        assert list(ev) == list(EVAL)
        np.testing.assert_array_equal(ev["train_step"], [5, 10])
        prune = r.events("techniques/prune/events")
        assert prune["removed"].tolist() == [20.0]
        assert prune["loss_cost"][0] == records[6].total
        mask = r.array(MASK)
        assert mask.shape == (10, 6) and mask[:, :2].sum() == 0 and mask[:, 2:].all()
        assert r.has(MASK) and r.has("eval") and not r.has("nothing/here")
        with pytest.raises(KeyError):
            r.events("nothing")


def test_summary_is_computed_from_the_file(runs):
    path, records, tracker = runs["full"]
    with open_run(path) as r:
        s = r.summary()
    assert s["dataset"] == "random" and s["model"] == "mlp" and s["techniques"] == ["prune"]
    assert s["steps"] == STEPS and s["segments"] == STEPS + 1 and s["interventions"] == 1
    assert s["status"] == "complete" and s["record"] == "full" and s["method"] == "rk4"
    assert s["loss0"] == tracker.loss0 and s["loss_final"] == records[-1].loss_end
    assert s["conservation_error"] == pytest.approx(math.fsum(rec.error for rec in records))
    assert s["max_step_error"] == max(abs(rec.error) for rec in records)
    change = records[-1].loss_end - tracker.loss0
    assert s["relative_error"] == pytest.approx(abs(s["conservation_error"]) / abs(change))
    helped = [rec.helped for rec in records if rec.kind == 0]
    assert s["mean_helped"] == pytest.approx(sum(helped) / len(helped))
    assert s["duration_s"] == records[-1].wall
    assert s["num_params"] == tracker.layout.num_params
    assert s["train_acc"] == pytest.approx(0.59) and s["test_acc"] == pytest.approx(0.49)
    totals = {
        n: sum(float(rec.per_tensor[i]) for rec in records)
        for i, n in enumerate(tracker.layout.names)
    }
    for name, value in s["top_helping"]:
        assert value < 0 and value == pytest.approx(totals[name])
    for name, value in s["top_hurting"]:
        assert value > 0 and value == pytest.approx(totals[name])
    floor = 1e-6 * max(abs(v) for v in totals.values())  # below it: rounding, not a layer
    assert len(s["top_helping"]) + len(s["top_hurting"]) == sum(
        abs(v) > floor for v in totals.values()
    )
    json.dumps(s)  # plain types only: the CLI prints it as JSON


def test_top_layers_leave_out_rounding_noise(runs, monkeypatch):
    """A conv bias before BatchNorm has gradient 0; its ±1e-13 is not a layer that hurt."""
    with open_run(runs["layers"][0]) as r:
        monkeypatch.setattr(
            type(r), "layer_totals", lambda self: np.array([-1.0, 2e-13, 0.5, -1e-14])
        )
        s = r.summary()
        names = r.names
    assert [n for n, _ in s["top_helping"]] == [names[0]]
    assert [n for n, _ in s["top_hurting"]] == [names[2]]


def test_ranges_and_indices(runs):
    path, records, _ = runs["full"]
    with open_run(path) as r:
        t = r.num_steps
        assert len(r.steps("loss")) == t + 1
        np.testing.assert_array_equal(r.steps("loss", 2, 5), r.steps("loss")[2:5])
        np.testing.assert_array_equal(r.steps("lca", -3), r.steps("lca")[-3:])
        assert r.steps("lca", 5, 2).shape == (0,)
        assert r.layer_lca(100, 200).shape == (0, len(r.names))
        np.testing.assert_allclose(
            r.layer_lca(3, 7, cumulative=True), np.cumsum(r.layer_lca(), axis=0)[3:7]
        )
        w = r.param_lca("0.weight")
        np.testing.assert_array_equal(r.param_lca("0.weight", index=13), w[:, 2, 1])  # (10, 6)
        np.testing.assert_array_equal(r.param_lca("0.weight", 2, 6, index=(1, 3)), w[2:6, 1, 3])
        with pytest.raises(KeyError, match="0.weight"):
            r.param_lca("nope")
        with pytest.raises(KeyError, match="fields"):
            r.steps("nope")


def test_run_without_steps(tmp_path):
    x, y = _data()
    tracker = lca.Tracker(
        _model(),
        nn.functional.cross_entropy,
        (x, y),
        writer=lca.Writer(tmp_path / "empty.h5", record="full"),
    )
    tracker.close()
    with open_run(tmp_path / "empty.h5") as r:
        assert r.num_steps == 0 and r.status == "complete"
        assert r.steps("loss").tolist() == [tracker.loss0]
        assert r.param_lca("0.weight").shape == (0, 10, 6)
        s = r.summary()
    assert s["segments"] == 0 and s["relative_error"] is None and s["loss_final"] == s["loss0"]


def test_plain_h5py_sees_the_schema(runs):
    path, records, tracker = runs["full"]
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == b"lca-run"
        assert f.attrs["schema_version"] == 1
        assert json.loads(f.attrs["config"])["dataset"] == "random"
        for key in ("created", "record", "method", "dtype", "lca_lab_version"):
            assert f.attrs[key]
        assert f.attrs["measure_size"] == 200 and f.attrs["num_params"] == tracker.layout.num_params
        assert f["status"][()] == b"complete"
        t = len(records)
        assert f["steps/loss"].shape == (t + 1,)
        for field in store.STEP_FIELDS:
            ds = f[f"steps/{field}"]
            assert ds.shape == (t,) and ds.maxshape == (None,) and ds.chunks is not None
        assert f["steps/label"].dtype.kind == "S"  # fixed-length strings only (SWMR)
        assert [n.decode() for n in f["layers/names"][()]] == list(tracker.layout.names)
        assert f["layers/lca"].shape == (t, len(tracker.layout.names))
        for name, shape in zip(tracker.layout.names, tracker.layout.shapes, strict=True):
            ds = f[f"params/{name}/lca"]
            assert ds.dtype == np.float32 and ds.shape == (t, *shape)
            assert ds.maxshape[0] is None
            assert f[f"params/{name}/total"].shape == shape
        assert [n.decode() for n in f["units/names"][()]] == [g.name for g in tracker.layout.units]


# ---------------------------------------------------------------------------------------------
# Two processes: a live reader, and a writer killed with SIGKILL.

WRITER_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from torch import nn
    sys.path.insert(0, {root!r})
    import lca

    path, steps, pause_every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.manual_seed(0)
    x, y = torch.randn(200, 6), torch.randint(0, 3, (200,))
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    writer = lca.Writer(path, record="full", chunk_rows=4, flush_seconds=0.05)
    tracker = lca.Tracker(model, nn.functional.cross_entropy, (x, y), writer=writer)
    for step in range(1, steps + 1):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[:32]), y[:32]).backward()
        with tracker.step():
            opt.step()
        if pause_every and step % pause_every == 0 and step < steps:
            writer.flush()  # every step so far is visible; wait until the reader has looked
            print(step, flush=True)
            sys.stdin.readline()
    tracker.close()
    """
)


def _start_writer(processes, tmp_path: Path, name: str, steps: int, pause_every: int = 0):
    """The writer script in a subprocess; with ``pause_every`` it stops after every that many
    steps, prints the step count and waits for a line on its stdin."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT.format(root=str(ROOT)))
    path = tmp_path / name
    with open(tmp_path / f"{name}.stderr", "wb") as err:
        proc = processes.start(
            [sys.executable, str(script), str(path), str(steps), str(pause_every)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    return proc, path


def _writer_error(proc: subprocess.Popen, tmp_path: Path, name: str) -> str:
    proc.wait()
    err = (tmp_path / f"{name}.stderr").read_text()[-2000:]
    return f"writer ended (rc {proc.returncode}): {err}"


def _wait_for(predicate, timeout: float, proc: subprocess.Popen):
    """Poll ``predicate`` until true; ``timeout`` only bounds a writer that is stuck."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None and proc.returncode != 0:
            raise AssertionError(f"writer failed with rc {proc.returncode}")
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the writer")


def _per_step_lengths(path: Path) -> dict[str, int]:
    out = {}
    with h5py.File(path, "r", swmr=True) as f:

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.maxshape[:1] == (None,) and obj.ndim >= 1:
                if not (name.startswith("eval") or name.startswith("techniques")):
                    out[name] = obj.shape[0]

        f.visititems(visit)
    return out


@pytest.mark.slow
def test_reader_in_another_process_sees_steps_grow(tmp_path, processes):
    name = "live.h5"
    proc, path = _start_writer(processes, tmp_path, name, steps=40, pause_every=10)
    seen = []
    reader = None
    try:
        for pause in (10, 20, 30):  # the writer waits at each pause until we have looked
            line = proc.stdout.readline().decode().strip()
            assert line == str(pause), _writer_error(proc, tmp_path, name)
            if reader is None:  # the file appeared atomically, already in SWMR mode
                reader = open_run(path)
            t = reader.refresh()
            # every array agrees on T at every moment a reader can see
            assert len(reader.steps("loss")) == t + 1
            assert reader.layer_lca().shape[0] == t and len(reader.steps("label")) == t
            assert reader.param_lca("2.weight").shape[0] == t
            assert reader.status == "running" and t == pause
            seen.append(t)
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        assert proc.wait() == 0, _writer_error(proc, tmp_path, name)
        reader.refresh()
        assert reader.status == "complete" and reader.num_steps == 40
    finally:
        if reader is not None:
            reader.close()
    assert seen == [10, 20, 30]


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory, module_processes):
    """A run file whose writer was SIGKILLed mid-run (a copy is made per test)."""
    folder = tmp_path_factory.mktemp("killed")
    proc, path = _start_writer(module_processes, folder, "killed.h5", steps=100_000)

    def long_enough():
        if not path.exists():
            return False
        with open_run(path) as r:
            return r.num_steps >= 10

    _wait_for(long_enough, 90, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return path


@pytest.mark.slow
def test_killed_writer_leaves_a_readable_consistent_file(killed_run, tmp_path):
    path = tmp_path / "k.h5"
    shutil.copy(killed_run, path)
    with open_run(path) as r:
        t = r.num_steps
        assert r.status == "running" and t >= 10
        assert len(r.steps("loss")) == t + 1 and r.layer_lca().shape[0] == t
        assert np.isfinite(r.steps("loss")).all()
        lengths = _per_step_lengths(path)
        assert min(v - (1 if k == "steps/loss" else 0) for k, v in lengths.items()) == t

    message = recover(path)
    assert "\n" not in message and "interrupted" in message and str(t) in message
    lengths = _per_step_lengths(path)
    assert lengths.pop("steps/loss") == t + 1 and set(lengths.values()) == {t}
    with h5py.File(path, "r") as f:  # flags cleared: opens without SWMR too
        assert f["status"][()] == b"interrupted"
    with open_run(path) as r:
        assert r.status == "interrupted" and r.num_steps == t and r.totals_rows == t
        for name in r.names:
            np.testing.assert_allclose(
                r.param_totals(name),
                r.param_lca(name).astype(np.float64).sum(0),
                rtol=1e-9,
                atol=1e-15,
            )
            np.testing.assert_array_equal(
                r.param_helped_steps(name), (r.param_lca(name) < 0).sum(0)
            )
        s = r.summary()
        assert s["status"] == "interrupted" and s["segments"] == t
    again = recover(path)
    assert "already clean" in again and "\n" not in again


@pytest.mark.slow
def test_recover_falls_back_to_copying(killed_run, tmp_path, monkeypatch):
    path = tmp_path / "k2.h5"
    shutil.copy(killed_run, path)
    with open_run(path) as r:
        t = r.num_steps
    monkeypatch.setattr(recovery, "_clear_open_flags", lambda p: False)
    message = recover(path)
    assert "interrupted" in message
    assert not list(tmp_path.glob(".*tmp"))
    with h5py.File(path, "r") as f:
        assert f["status"][()] == b"interrupted" and f.attrs["format"] == b"lca-run"
    with open_run(path) as r:
        assert r.num_steps == t and r.status == "interrupted" and r.record == "full"


def test_half_written_rows_are_invisible_and_trimmed(runs, tmp_path):
    """A flush cut short leaves some datasets a row or two longer: T is the shortest."""
    path = tmp_path / "half.h5"
    shutil.copy(runs["full"][0], path)
    with h5py.File(path, "r+") as f:
        t = f["steps/lca"].shape[0]
        for key in ("params/0.weight/lca", "units/0/lca", "layers/lca", "steps/lca"):
            f[key].resize(t + 2, axis=0)
        f["steps/loss"].resize(t + 2, axis=0)  # one extra row, fill value NaN
        f["status"][()] = b"running"
    with open_run(path) as r:
        assert r.num_steps == t and len(r.steps("loss")) == t + 1
    message = recover(path)
    assert "dropped 2 partial rows" in message and "running -> interrupted" in message
    lengths = _per_step_lengths(path)
    assert lengths.pop("steps/loss") == t + 1 and set(lengths.values()) == {t}
    with open_run(path) as r:
        assert r.num_steps == t and r.status == "interrupted"
        np.testing.assert_allclose(
            r.param_totals("0.weight"),
            r.param_lca("0.weight").astype(np.float64).sum(0),
            rtol=1e-12,
        )


def _mark_open_for_write(path: Path) -> None:
    """Set the superblock's "open for write" flag (no SWMR), as a killed non-SWMR writer would."""
    import struct

    with open(path, "r+b") as fh:
        raw = bytearray(fh.read(48))
        raw[11] = 0x01
        struct.pack_into("<I", raw, 44, store._lookup3(bytes(raw[:44])))
        fh.seek(0)
        fh.write(raw)


def test_file_left_open_without_swmr_needs_force(runs, tmp_path):
    path = tmp_path / "plain.h5"
    shutil.copy(runs["layers"][0], path)
    _mark_open_for_write(path)
    with pytest.raises(RunFileError) as e:
        open_run(path)
    _one_sentence(e.value, "plain.h5", "python -m lca recover plain.h5")
    with pytest.raises(RunFileError) as e:
        recover(path)
    _one_sentence(e.value, "plain.h5", "force=True")
    assert "already clean" in recover(path, force=True)
    with open_run(path) as r:
        assert r.status == "complete" and r.num_steps == STEPS + 1


def test_recover_on_a_clean_file_changes_nothing(runs, tmp_path):
    path = tmp_path / "clean.h5"
    shutil.copy(runs["units"][0], path)
    before = path.read_bytes()
    message = recover(path)
    assert message.startswith("clean.h5: already clean") and "complete" in message
    assert path.read_bytes() == before


# ---------------------------------------------------------------------------------------------
# Errors: one sentence naming the file and the fix.


def _one_sentence(e: BaseException, *words: str) -> str:
    text = str(e)
    assert "\n" not in text and text.endswith((".", "h5")), text
    for w in words:
        assert w in text, (w, text)
    return text


def test_missing_file(tmp_path):
    with pytest.raises(RunFileError) as e:
        open_run(tmp_path / "gone.h5")
    _one_sentence(e.value, "gone.h5", "no run file", "check the path")
    with pytest.raises(RunFileError):
        recover(tmp_path / "gone.h5")


def test_not_hdf5(tmp_path):
    p = tmp_path / "notes.h5"
    p.write_text("just text\n")
    with pytest.raises(RunFileError) as e:
        open_run(p)
    _one_sentence(e.value, "notes.h5", "not an HDF5 file", "LCA Lab")


def test_foreign_hdf5(tmp_path):
    p = tmp_path / "other.h5"
    with h5py.File(p, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(RunFileError) as e:
        open_run(p)
    _one_sentence(e.value, "other.h5", "not an LCA run", 'format="lca-run"')
    with pytest.raises(RunFileError):
        recover(p)


def test_newer_schema(runs, tmp_path):
    p = tmp_path / "future.h5"
    shutil.copy(runs["layers"][0], p)
    with h5py.File(p, "r+") as f:
        f.attrs["schema_version"] = 2
    with pytest.raises(RunFileError) as e:
        open_run(p)
    _one_sentence(e.value, "future.h5", "newer LCA Lab (schema 2)", "schema 1", "upgrade LCA Lab")
    assert isinstance(e.value, ValueError)
    assert lca.RunFileError is RunFileError


def test_run_too_large_is_refused_before_writing(tmp_path):
    path = tmp_path / "big.h5"
    x, y = _data()
    writer = lca.Writer(path, record="full", max_bytes=50_000, expected_steps=10_000)
    tracker = lca.Tracker(_model(), nn.functional.cross_entropy, (x, y), writer=writer)
    with pytest.raises(RunTooLargeError) as e:
        with tracker.step():
            pass
    text = _one_sentence(
        e.value, "big.h5", "50.0 kB", "--record units or layers", "fewer steps", "smaller model"
    )
    assert human_bytes(estimate_bytes(tracker.layout, 10_000, "full")) in text
    assert not path.exists() and not list(tmp_path.iterdir())


def test_estimate_matches_real_files(runs):
    for mode in ("full", "units", "layers"):
        path, records, tracker = runs[mode]
        est = estimate_bytes(tracker.layout, len(records), mode, chunk_rows=4)
        actual = path.stat().st_size
        assert actual <= est <= 3 * actual + 200_000, (mode, actual, est)
    layout = runs["full"][2].layout
    sizes = [estimate_bytes(layout, 10_000, m) for m in ("full", "units", "layers")]
    assert sizes[0] > sizes[1] > sizes[2]
    per_step = (estimate_bytes(layout, 20_000, "full") - sizes[0]) / 10_000
    assert per_step == pytest.approx(layout.num_params * 4 + 8 * 4 + 100, rel=0.5)


def test_human_bytes():
    assert human_bytes(0) == "0 B"
    assert human_bytes(999) == "999 B"
    assert human_bytes(1234) == "1.23 kB"
    assert human_bytes(50_000) == "50.0 kB"
    assert human_bytes(3.2e9) == "3.20 GB"
    assert human_bytes(123_456_789) == "123 MB"


def test_writer_misuse(tmp_path, runs):
    existing = runs["layers"][0]
    with pytest.raises(RunFileError, match="already exists"):
        lca.Writer(existing)
    with pytest.raises(ValueError, match="record must be one of"):
        lca.Writer(tmp_path / "a.h5", record="weights")
    x, y = _data()
    for bad in ({"steps/x": ("a",)}, {"../x": ("a",)}):
        w = lca.Writer(tmp_path / "b.h5")
        t = lca.Tracker(_model(), nn.functional.cross_entropy, (x, y), writer=w, events=bad)
        with pytest.raises(ValueError), t.step():
            pass
    w = lca.Writer(tmp_path / "c.h5", record="layers")
    t = lca.Tracker(_model(), nn.functional.cross_entropy, (x, y), writer=w, events={"eval": EVAL})
    with t.step():
        pass
    with pytest.raises(KeyError):
        w.add_event("other", [1.0])
    with pytest.raises(ValueError, match="4 columns"):
        w.add_event("eval", [1.0])
    with pytest.raises(ValueError, match="status must be"):
        w.close("done")
    t.close()
    w.close("failed")  # idempotent: the first close wins
    with open_run(tmp_path / "c.h5") as r:
        assert r.status == "complete" and r.num_steps == 1
        assert r.events("eval")["train_acc"].size == 0


# ---------------------------------------------------------------------------------------------
# Block-sum downsampling.


def test_block_starts_are_contiguous_and_even():
    for n, k in [(10, 3), (1000, 7), (5, 10), (0, 4), (17, 17), (100_000, 999)]:
        s = block_starts(n, k)
        assert len(s) == min(n, k)
        if n:
            sizes = np.diff(np.append(s, n))
            assert s[0] == 0 and sizes.min() >= 1 and sizes.max() - sizes.min() <= 1


def test_block_sum_preserves_totals_and_shapes():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1003, 37)).astype(np.float32) * 1e-3
    out, rows, cols = block_sum(a, 100, 10)
    assert out.shape == (100, 10) and out.dtype == np.float64
    assert len(rows) == 100 and len(cols) == 10
    assert out.sum() == pytest.approx(a.astype(np.float64).sum(), abs=1e-12)
    # each cell is the sum of its block, and every row block sums like the original rows
    np.testing.assert_allclose(
        out[3, 4], a[rows[3] : rows[4], cols[4] : cols[5]].astype(np.float64).sum(), rtol=1e-12
    )
    np.testing.assert_allclose(
        out.sum(1), np.add.reduceat(a.astype(np.float64).sum(1), rows), rtol=1e-9
    )
    same, r2, c2 = block_sum(a, 5000)  # nothing to merge
    np.testing.assert_array_equal(same, a.astype(np.float64))
    assert len(r2) == 1003 and len(c2) == 37
    v, r1, c1 = block_sum(np.arange(10), 3)
    assert v.tolist() == [0 + 1 + 2, 3 + 4 + 5, 6 + 7 + 8 + 9] and r1.tolist() == [0, 3, 6]
    assert c1.tolist() == [0]
    empty, _, _ = block_sum(np.zeros((0, 4)), 10)
    assert empty.shape == (0, 4)


def test_downsample_to_cells():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((4000, 300))
    out, rows, cols = downsample_to_cells(a, 100_000)
    assert out.shape == (333, 300)  # the short axis (≤ √cells) keeps full resolution
    assert out.sum() == pytest.approx(a.sum(), abs=1e-9)
    thin = rng.standard_normal((300_000, 4))
    out, rows, cols = downsample_to_cells(thin, 500_000)
    assert out.shape == (125_000, 4) and len(cols) == 4
    assert out.sum() == pytest.approx(thin.sum(), abs=1e-8)
    small = rng.standard_normal((50, 20))
    out, _, _ = downsample_to_cells(small)
    np.testing.assert_array_equal(out, small)
    big = rng.standard_normal((3000, 2000))
    out, rows, cols = downsample_to_cells(big, 500_000)
    assert 450_000 < out.size <= 500_000 and abs(len(rows) / len(cols) - 1.5) < 0.05
    assert out.sum() == pytest.approx(big.sum(), abs=1e-8)
    line, rows, _ = downsample_to_cells(rng.standard_normal(10_000), 1000)
    assert line.shape == (1000,) and len(rows) == 1000
