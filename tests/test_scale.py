"""Scale: sync-free measurement, measurement sharded over torch.distributed ranks, post-hoc LCA
from saved weights, and the CPU fallback of the device choice.

The distributed tests launch real processes (``torchrun`` and ``torch.multiprocessing.spawn``
with the gloo backend) because what can go wrong is in the launching: environment, rendezvous,
which rank writes. Runs are tiny so the whole file stays well under a minute and a half.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from lca import distributed, models
from lca.config import RunConfig
from lca.measure import Measurer, measurement_mode
from lca.posthoc import WEIGHTS, WEIGHTS0, has_weights, relative_difference
from lca.store import Reader

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-6  # per-parameter LCA: max |a − b| / max |b| per tensor

# A tiny run whose measurement set (300) falls into 3 fixed chunks of 100, so 2 ranks both work.
TINY = {
    "dataset": "digits",
    "model": "mlp",
    "model_options": {"hidden": [16]},
    "steps": 12,
    "batch_size": 32,
    "measure_size": 300,
    "measure_batch": 100,
    "eval_every": 6,
    "record": "full",
    "device": "cpu",
}
TINY_FLAGS = [
    "--dataset", "digits", "--model", "mlp", "--model-option", "hidden=[16]",
    "--steps", "12", "--batch-size", "32", "--measure-size", "300", "--measure-batch", "100",
    "--eval-every", "6", "--record", "full", "--device", "cpu", "--quiet",
]  # fmt: skip


# Threads per process, for the subprocesses (each torchrun rank) and for the in-process reference
# runs alike: a matmul's float rounding depends on how many threads split its sums, so a
# reference with another thread count trains weights that differ in the last bits (3.7e-9).
THREADS = 1


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in distributed.LAUNCH_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = str(THREADS)
    return env


@contextlib.contextmanager
def rank_threads() -> Iterator[None]:
    """This process computes with ``THREADS`` threads inside the block, as each rank does."""
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


HANG_S = 900  # bounds only a hung subprocess; a slow, busy machine never comes near it


def _lca(processes, *args: str, ranks: int = 1) -> subprocess.CompletedProcess:
    """``python -m lca ARGS``, or under ``torchrun --standalone --nproc-per-node ranks``; the
    ``processes`` fixture ends it and its ranks (one process group) whatever happens."""
    launcher = [sys.executable]
    if ranks > 1:  # --standalone: a free local port, so parallel test runs never collide
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    cmd = [*launcher, "-m", "lca", *args]
    proc = processes.start(
        cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    stdout, stderr = proc.communicate(timeout=HANG_S)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _assert_same_lca(a: Path, b: Path, tol: float = TOL) -> float:
    worst = 0.0
    with Reader(a) as ra, Reader(b) as rb:
        assert ra.num_steps == rb.num_steps > 0
        assert ra.names == rb.names
        for n in ra.names:
            worst = max(worst, relative_difference(rb.param_lca(n), ra.param_lca(n)))
        np.testing.assert_allclose(rb.steps("loss"), ra.steps("loss"), rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(rb.steps("kind"), ra.steps("kind"))
        np.testing.assert_array_equal(rb.steps("train_step"), ra.steps("train_step"))
    assert worst <= tol, f"per-parameter LCA differs by {worst:.3e} (relative)"
    return worst


@pytest.fixture(scope="module")
def online(tmp_path_factory) -> Path:
    """One single-process run that saved its weights (the reference for everything below)."""
    from lca.train import run

    path = tmp_path_factory.mktemp("online") / "online.h5"
    with rank_threads():  # the torchrun test compares its ranks' weights with these bit for bit
        result = run(RunConfig.from_dict({**TINY, "save_weights": True}), out=path)
    assert result.status == "complete"
    return path


# ---------------------------------------------------------------------------------------------
# Measurement: sync-free accumulation.


def _old_loss_and_grad(model, loss_fn, x, y, chunk, params):
    """The measurement as it was before: a host float() per chunk, summed in Python."""
    leaves = {n: params[n].detach().clone().requires_grad_(True) for n in params}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    total = 0.0
    with measurement_mode(model):
        for i in range(0, len(x), chunk):
            out = functional_call(model, {**leaves, **buffers}, (x[i : i + chunk],))
            loss = loss_fn(out, y[i : i + chunk]) * (len(x[i : i + chunk]) / len(x))
            loss.backward()
            total += float(loss.detach())
    return total, {n: t.grad for n, t in leaves.items()}


@pytest.mark.parametrize("name", ["mlp", "cnn-small"])
def test_sync_free_measurement_equals_per_chunk_float_sum_exactly(name):
    torch.manual_seed(0)
    shape = (1, 8, 8) if name == "mlp" else (1, 12, 12)
    model = models.build(name, shape, 10)
    x, y = torch.rand(250, *shape), torch.randint(0, 10, (250,))
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss_fn = nn.CrossEntropyLoss()
    old_loss, old_grads = _old_loss_and_grad(model, loss_fn, x, y, 64, params)
    # NCHW as the old code ran it (channels-last convs round differently: test_measure_inplace)
    new = Measurer(model, loss_fn, (x, y), chunk_size=64, channels_last=False)
    new_loss, new_grads = new.loss_and_grad(params)
    assert new_loss == old_loss  # bit for bit, not approximately
    for n in params:
        assert torch.equal(new_grads[n], old_grads[n]), n
    only_loss = Measurer(model, loss_fn, (x, y), chunk_size=64, channels_last=False).loss(params)
    assert only_loss == old_loss


_TF32_CHECK = """
import os
from unittest import mock
import torch
from lca.measure import _legacy_tf32, no_tf32
m, c = torch.backends.cuda.matmul, torch.backends.cudnn
def new():
    return (m.fp32_precision, c.conv.fp32_precision, c.rnn.fp32_precision, c.fp32_precision,
            torch.backends.fp32_precision)
def check(setup):
    if setup == "legacy":
        m.allow_tf32 = True
        c.allow_tf32 = True
    elif setup == "new":
        m.fp32_precision = "tf32"
    elif setup == "global":
        torch.backends.fp32_precision = "tf32"
    before, legacy_before = new(), _legacy_tf32()
    with mock.patch("torch.cuda.is_available", return_value=True), no_tf32():
        assert new()[:3] == ("ieee", "ieee", "ieee"), (setup, new())
        assert _legacy_tf32() == (False, False), setup
    assert new() == before and _legacy_tf32() == legacy_before, setup
for setup in ("default", "legacy", "new", "global"):
    pid = os.fork()  # the flags are process-global: each case in a fresh copy of the process
    if pid == 0:
        try:
            check(setup)
            os._exit(0)
        except BaseException as e:
            print(setup, repr(e))
            os._exit(1)
    assert os.waitpid(pid, 0)[1] == 0, setup
print("ok")
"""


@pytest.mark.slow
def test_no_tf32_switches_both_apis_off_and_restores_them():
    # A caller who set TF32 through PyTorch's newer fp32_precision API made the legacy
    # allow_tf32 getter raise, so measuring crashed; measuring must neither crash nor leave TF32
    # on, and must hand the flags back as it found them. A GPU is simulated (the flags exist in
    # CPU builds too) in a subprocess, so this test process's flags are never touched.
    proc = subprocess.run(
        [sys.executable, "-c", _TF32_CHECK], cwd=ROOT, env=_env(), capture_output=True,
        text=True, timeout=HANG_S,
    )  # fmt: skip
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# Distributed measurement.


def test_shard_ranges_are_contiguous_and_cover_everything():
    for n in (0, 1, 3, 7, 100):
        for world in (1, 2, 3, 8):
            ranges = [distributed.shard_range(n, r, world) for r in range(world)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
            assert max(hi - lo for lo, hi in ranges) - min(hi - lo for lo, hi in ranges) <= 1


def _sharded_worker(rank: int, world: int, init: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = models.build("mlp", (1, 8, 8), 10, hidden=(12,))
        x, y = torch.rand(230, 1, 8, 8), torch.randint(0, 10, (230,))
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        m = Measurer(model, nn.CrossEntropyLoss(), (x, y), chunk_size=50, shard=True)
        loss, grads = m.loss_and_grad(params)
        torch.save(
            {"range": m.chunk_range, "local": m.local_size, "size": m.size, "loss": loss,
             "grads": grads, "loss_only": m.loss(params),
             "flat_grad": m.flat_grad(m.flatten(params))},
            f"{out}/rank{rank}.pt",
        )  # fmt: skip
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow  # spawns two gloo ranks
def test_sharded_measurer_equals_one_process(tmp_path):
    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_sharded_worker, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["range"] == (0, 2) and r1["range"] == (2, 5)  # 5 chunks of ≤ 50, contiguous
    assert r0["local"] + r1["local"] == r0["size"] == r1["size"] == 230
    torch.manual_seed(0)
    model = models.build("mlp", (1, 8, 8), 10, hidden=(12,))
    x, y = torch.rand(230, 1, 8, 8), torch.randint(0, 10, (230,))
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    one = Measurer(model, nn.CrossEntropyLoss(), (x, y), chunk_size=50)
    loss, grads = one.loss_and_grad(params)
    for r in (r0, r1):  # every rank holds the whole-set result
        assert r["loss"] == pytest.approx(loss, rel=1e-12)
        assert r["loss_only"] == pytest.approx(loss, rel=1e-12)
        for n in grads:
            assert relative_difference(r["grads"][n].numpy(), grads[n].numpy()) <= TOL
        assert torch.equal(r["flat_grad"], one.flatten(r["grads"]))  # the gradient alone too


def _closing_worker(rank: int, world: int, init: str, out: str, rank1_dies: bool) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    if rank == 1 and rank1_dies:
        os._exit(0)  # gone without leaving the group, as a crashed rank is
    came = distributed.closing_barrier("gloo", timeout_s=HANG_S)
    d = distributed.Dist(rank, world, 0, torch.device("cpu"), "gloo", owns_group=True)
    distributed.teardown(d)
    Path(out, f"rank{rank}.txt").write_text(f"{came} {torch.distributed.is_initialized()}")


@pytest.mark.slow  # spawns two gloo ranks, twice
def test_ranks_meet_at_the_closing_barrier_and_a_dead_rank_does_not_hold_the_others(tmp_path):
    """A clean end waits for every rank before the group goes (no rank tears its connections
    down under another); a rank that died makes the barrier give up, not hang."""
    import torch.multiprocessing as mp

    for dies in (False, True):
        folder = tmp_path / f"dies-{dies}"
        folder.mkdir()
        init = f"file://{folder / 'rendezvous'}"
        mp.spawn(_closing_worker, args=(2, init, str(folder), dies), nprocs=2, join=True)
        said = {p.name: p.read_text() for p in folder.glob("rank*.txt")}
        if dies:
            assert said == {"rank0.txt": "False False"}  # gave up (its peer closed), then left
        else:
            assert said == {"rank0.txt": "True False", "rank1.txt": "True False"}


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process_and_only_rank0_writes(online, tmp_path, processes):
    out = tmp_path / "ranks2.h5"
    proc = _lca(processes, "train", *TINY_FLAGS, "--save-weights", "--out", str(out), ranks=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("complete:") == 1  # one report, from rank 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ranks2.h5"]  # nothing else written
    _assert_same_lca(online, out)
    # Training itself is identical, bit for bit: each rank and the reference use THREADS threads.
    with Reader(online) as a, Reader(out) as b:
        for n in a.names:
            np.testing.assert_array_equal(b.series(f"{WEIGHTS}/{n}"), a.series(f"{WEIGHTS}/{n}"))


# ---------------------------------------------------------------------------------------------
# Post-hoc LCA from saved weights.


def test_saved_weights_are_the_trajectory(online):
    from lca.train import run

    with rank_threads():  # as the reference was made: the same float rounding
        result = run(RunConfig.from_dict({**TINY, "save_weights": True}), out=None)
    final = dict(result.tracker.model.named_parameters())
    with Reader(online) as r:
        assert has_weights(r)
        assert r.series_layout[f"{WEIGHTS}/fc1.weight"][0] == "<f4"
        for n in r.names:
            assert r.array(f"{WEIGHTS0}/{n}").shape == r.shapes[n]
            assert np.isfinite(r.array(f"{WEIGHTS0}/{n}")).all()
            rows = r.series(f"{WEIGHTS}/{n}")
            assert rows.shape == (r.num_steps, *r.shapes[n])
            np.testing.assert_array_equal(rows[-1], final[n].detach().numpy())


def test_posthoc_equals_online(online, tmp_path):
    from lca.cli import main

    out = tmp_path / "post.h5"
    assert main(["allocate", str(online), "--out", str(out), "--quiet"]) == 0
    _assert_same_lca(online, out)
    with Reader(online) as a, Reader(out) as b:
        assert b.method == a.method and b.status == "complete"
        assert not has_weights(b)  # the recomputed file does not copy the trajectory
        np.testing.assert_array_equal(b.series("steps/train_loss"), a.series("steps/train_loss"))
        np.testing.assert_array_equal(b.events("eval")["test_acc"], a.events("eval")["test_acc"])


@pytest.mark.slow
def test_posthoc_on_two_ranks_by_step_range(online_val, tmp_path, processes):
    """Training and held-out LCA recomputed by step ranges on 2 ranks, gathered on rank 0 (the
    held-out per-weight totals added up over the ranges), and both compared."""
    out = tmp_path / "post2.h5"
    proc = _lca(
        processes, "allocate", str(online_val), "--out", str(out), "--compare", "--quiet", ranks=2
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 processes" in proc.stdout and "max relative difference" in proc.stdout
    _assert_same_lca(online_val, out)
    held = [ln for ln in proc.stdout.splitlines() if ln.startswith("held-out LCA: compared 12 ")]
    assert len(held) == 1 and "per tensor" in held[0], proc.stdout
    assert float(held[0].split("max relative difference ")[1].split()[0]) <= TOL
    _assert_same_held_out_lca(online_val, out)


def test_posthoc_other_method_changes_split_not_total(online, tmp_path):
    from lca.cli import main

    out = tmp_path / "trap.h5"
    assert main(["allocate", str(online), "--method", "trapezoid", "--out", str(out),
                 "--quiet"]) == 0  # fmt: skip
    with Reader(online) as a, Reader(out) as b:
        assert b.method == "trapezoid"
        np.testing.assert_array_equal(b.steps("loss"), a.steps("loss"))  # same trajectory
        assert not np.array_equal(b.layer_lca(), a.layer_lca())


def test_allocate_without_saved_weights_is_one_sentence(make_run, tmp_path, capsys):
    from lca.cli import main

    plain = make_run("plain.h5", steps=3)
    assert main(["allocate", str(plain), "--out", str(tmp_path / "x.h5")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--save-weights" in err and "\n" not in err


# Post-hoc LCA of the held-out loss (runs recorded with --measure-val).


@pytest.fixture(scope="module")
def online_val(tmp_path_factory) -> Path:
    """The reference run again, also measuring LCA of the held-out loss along its path."""
    from lca.train import run

    path = tmp_path_factory.mktemp("online-val") / "online-val.h5"
    with rank_threads():
        config = {**TINY, "save_weights": True, "measure_val": True}
        result = run(RunConfig.from_dict(config), out=path)
    assert result.status == "complete"
    return path


def _assert_same_held_out_lca(a: Path, b: Path, tol: float = TOL) -> None:
    """Held-out LCA of ``b`` equals ``a``'s: per tensor and step, per weight over the run (the
    same tolerance as the training LCA), and the held-out loss along the path."""
    with Reader(a) as ra, Reader(b) as rb:
        assert ra.has_val and rb.has_val and rb.num_steps == ra.num_steps > 0
        layers_a, layers_b = ra.val_layer_lca(), rb.val_layer_lca()
        for i, n in enumerate(ra.names):
            assert relative_difference(layers_b[:, i], layers_a[:, i]) <= tol, n
            assert relative_difference(rb.val_param_totals(n), ra.val_param_totals(n)) <= tol, n
        np.testing.assert_allclose(rb.val_steps("loss"), ra.val_steps("loss"), rtol=1e-9)
        np.testing.assert_allclose(rb.val_steps("lca"), ra.val_steps("lca"), rtol=1e-5, atol=1e-9)
        np.testing.assert_array_equal(rb.val_steps("helped"), ra.val_steps("helped"))


def test_posthoc_recomputes_held_out_lca_instead_of_copying_it(online_val, tmp_path):
    """The source's held-out LCA is wiped before ``allocate`` reads it: the new file has it all
    the same, equal to the online numbers, so it was measured again along the saved weights."""
    import shutil

    import h5py

    from lca.cli import main

    wiped = tmp_path / "wiped.h5"
    shutil.copy(online_val, wiped)
    with h5py.File(wiped, "r+") as f:
        for p in ("series/lca_val/layers", "series/lca_val/lca", "series/lca_val/helped",
                  "lca_val/total"):  # fmt: skip
            f[p][...] = 0
    out = tmp_path / "post-val.h5"
    assert main(["allocate", str(wiped), "--out", str(out), "--quiet"]) == 0
    _assert_same_held_out_lca(online_val, out)
    _assert_same_lca(online_val, out)


# ---------------------------------------------------------------------------------------------
# Devices.


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_device_auto_falls_back_to_cpu():
    from lca.train import resolve_device, run

    assert resolve_device("auto") == torch.device("cpu")
    result = run(RunConfig.from_dict({**TINY, "steps": 2, "device": "auto"}), out=None)
    assert result.status == "complete"
    assert result.tracker.measurer.device == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
@pytest.mark.parametrize("command", ["train", "allocate"])
def test_device_cuda_without_gpu_is_one_sentence(command, online, tmp_path, capsys):
    from lca.cli import main

    if command == "train":
        args = ["train", *TINY_FLAGS[:-3], "--device", "cuda", "--quiet", "--out",
                str(tmp_path / "c.h5")]  # fmt: skip
    else:
        args = ["allocate", str(online), "--device", "cuda", "--out", str(tmp_path / "c.h5")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "CUDA" in err and "\n" not in err
    assert "Traceback" not in err
    assert not (tmp_path / "c.h5").exists()
