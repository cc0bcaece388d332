"""Tracking memory stays near the state LCA needs (issue 15 item 8; the RSS figures are in
benchmarks/memory.py): what the tracker and the writer hold is a fixed number of bytes per
parameter that does not grow with the steps, and the writer's row buffer is bounded."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import lca
from lca.allocate import FlatSpace, Layout, UnitGroup, _integrate_flat
from lca.integrate import new_evaluations_per_step
from lca.measure import Measurer
from lca.memory import held_tensor_bytes, release_free_memory
from lca.store import Writer
from lca.store.schema import BUFFER_BYTES, _plan

ROOT = Path(__file__).resolve().parents[1]


def _held_bytes(*owners: object) -> int:
    """What the tracker and writer hold, leaving out the measurement set (the caller's data)."""
    return held_tensor_bytes(*owners, skip=("_chunks",))


def _run(tmp_path: Path, record: str, steps: int) -> tuple[int, int, int]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 256), nn.ReLU(), nn.Linear(256, 10))  # 79,626 params
    params = sum(p.numel() for p in model.parameters())
    x, y = torch.randn(16, 300), torch.randint(0, 10, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    writer = Writer(tmp_path / f"{record}-{steps}.h5", record=record)
    tracker = lca.Tracker(model, nn.functional.cross_entropy, (x, y), writer=writer)
    held = []
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        with tracker.step():
            opt.step()
        held.append(_held_bytes(tracker, writer))
    tracker.close()
    return params, held[1], held[-1]


def test_tracker_and_writer_hold_a_fixed_state_per_parameter(tmp_path: Path) -> None:
    for record, limit in (("layers", 28), ("full", 28 + 4 * 32)):
        params, early, late = _run(tmp_path, record, 6)
        assert late == early, f"{record}: held bytes grew from {early} to {late}"
        # θ, ∇L(θ), ΣA, the last A (4 × float32) + the writer's float64 totals and int32
        # helped counts: 28 B per parameter; full mode adds its row buffer (≤ 32 rows here).
        assert late <= limit * params + 200_000, f"{record}: {late / params:.1f} B/param"


def _layout(params: int) -> Layout:
    side = int(params**0.5)
    return Layout(
        names=("w",),
        shapes=((side, side),),
        units=(UnitGroup("w", ("w",), (0,), side),),
        method="rk4",
        dtype="float32",
        measure_size=10,
    )


def test_full_record_buffer_is_bounded_for_big_models(tmp_path: Path) -> None:
    small_rows, _ = _plan(_layout(10_000), "full", 32)
    assert small_rows == 32  # small models keep whole 32-row chunks
    big = _layout(4_000_000)
    rows, plan = _plan(big, "full", 32)
    assert rows * big.num_params * 4 <= BUFFER_BYTES
    assert rows * 4 <= 16  # ≤ 16 B per parameter: within the tracker's own state
    w = Writer(tmp_path / "big.h5", record="full")
    w.begin(big, 1.0)
    try:
        buffered = sum(b.nbytes for k, b in w._bufs.items() if k.startswith("params/"))
        assert buffered <= BUFFER_BYTES
        assert w.chunk_rows == rows
    finally:
        w.close("complete")


# ---------------------------------------------------------------------------------------------
# Fewer step-sized buffers at once, and freed pages handed back: the same LCA bit for bit.

FIXED_METHODS = ("rk4", "trapezoid", "euler", "gauss2", "gauss3")


def _segment_inputs(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 40), nn.Tanh(), nn.Linear(40, 3))
    x, y = torch.randn(48, 12), torch.randint(0, 3, (48,))
    start = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    end = start + 0.05 * torch.randn(start.shape)
    return model, (x, y), start, end


@pytest.mark.parametrize("method", FIXED_METHODS)
def test_lean_path_gives_the_general_paths_lca_bit_for_bit(method: str) -> None:
    # estimate=True takes the general path (every gradient kept, a fresh weighted sum) and
    # returns the same A as a plain step; the lean path must equal it exactly.
    model, data, start, end = _segment_inputs()
    m = Measurer(model, nn.functional.cross_entropy, data, chunk_size=16)
    space = FlatSpace.of(model, torch.device("cpu"))
    loss0, g0 = m.flat_loss_and_grad(start)
    kw = {"loss_start": loss0, "tolerance": 1e-3}
    general = _integrate_flat(m, space, start, end, method, grad_start=g0, estimate=True, **kw)
    g0_before = g0.clone()
    kept = _integrate_flat(m, space, start, end, method, grad_start=g0, **kw)
    assert torch.equal(g0, g0_before)  # not handed over: left as it was
    handed = _integrate_flat(m, space, start, end, method, grad_start=g0, consume_start=True, **kw)
    for lean in (kept, handed):
        assert torch.equal(lean.lca, general.lca), method
        assert lean.loss_end == general.loss_end
        assert (lean.grad_end is None) == (general.grad_end is None)
        if lean.grad_end is not None:
            assert torch.equal(lean.grad_end, general.grad_end)
        assert lean.evaluations == new_evaluations_per_step(method)


def _live_buffers(numel: int) -> int:
    """Distinct tensor storages of exactly ``numel`` float32 elements (the flat vectors a step
    works on) reachable right now."""
    storages = set()
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.untyped_storage().nbytes() == 4 * numel:
            storages.add(obj.untyped_storage().data_ptr())
    return len(storages)


def test_a_tracked_rk4_step_holds_at_most_seven_step_sized_buffers_while_measuring() -> None:
    # Counted at every gradient evaluation of a step (before it allocates its own gradient):
    # θ_start, ∇L(θ_start) (becoming the weighted sum), ΣA, the last A, θ_end, ∇L(θ_end) and
    # one scratch buffer for Δ and the midpoint. The general path held 9 (Δ, the midpoint and
    # a separate weighted sum as well).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 2))
    numel = sum(p.numel() for p in model.parameters())
    x, y = torch.randn(8, 64), torch.randint(0, 2, (8,))  # chunks far smaller than θ
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = lca.Tracker(model, nn.functional.cross_entropy, (x, y))
    gc.collect()  # nothing left over from earlier tests; a step itself makes no cycles
    counts: list[int] = []
    evaluate = tracker.measurer._evaluate

    def counting(flat: torch.Tensor, need_grad: bool, *rest):
        counts.append(_live_buffers(numel))
        return evaluate(flat, need_grad, *rest)

    tracker.measurer._evaluate = counting
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        with tracker.step():
            opt.step()
    # The model's own parameters, gradients (and no momentum) are not step-sized storages:
    # each is its own small tensor. Only the tracker's flat buffers count.
    assert len(counts) == 1 + 3 * 2  # start, then end + midpoint per step
    assert max(counts) <= 7, counts


def _tracked_run(tmp_path: Path, name: str, release: bool) -> tuple[list, torch.Tensor, dict]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 256), nn.ReLU(), nn.Linear(256, 10))
    x, y = torch.randn(16, 30), torch.randint(0, 10, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    writer = Writer(tmp_path / f"{name}.h5", record="full")
    tracker = lca.Tracker(model, nn.functional.cross_entropy, (x, y), writer=writer)
    tracker.release_memory = release  # (off by default for a model this small)
    steps = []
    for _ in range(4):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        with tracker.step():
            opt.step()
        steps.append({n: a.clone() for n, a in tracker.last.per_param.items()})
    tracker.close()
    with h5py.File(tmp_path / f"{name}.h5") as f:
        stored = {k: f[f"params/{k}/{d}"][()] for k in f["params"] for d in ("lca", "total")}
    cumulative = torch.cat([c.reshape(-1) for c in tracker.cumulative.values()])
    return steps, cumulative, stored


def test_handing_freed_memory_back_changes_no_value(tmp_path: Path, monkeypatch) -> None:
    allocate = sys.modules["lca.allocate"]
    calls = []

    def counted() -> bool:
        calls.append(1)
        return release_free_memory()

    monkeypatch.setattr(allocate, "release_free_memory", counted)
    with_release = _tracked_run(tmp_path, "release", True)
    assert len(calls) == 4  # once per tracked step
    without = _tracked_run(tmp_path, "keep", False)
    assert len(calls) == 4
    for a, b in zip(with_release[0], without[0], strict=True):
        assert all(torch.equal(a[n], b[n]) for n in a)
    assert torch.equal(with_release[1], without[1])
    assert with_release[2].keys() == without[2].keys()
    for k in with_release[2]:
        assert np.array_equal(with_release[2][k], without[2][k]), k


def test_release_is_only_on_for_models_whose_steps_free_megabytes() -> None:
    data = (torch.randn(4, 10), torch.randn(4, 2))
    small = lca.Tracker(nn.Linear(10, 2), nn.functional.mse_loss, data)
    assert not small.release_memory  # 22 parameters: nothing worth handing back
    big = nn.Sequential(nn.Linear(10, 1 << 18), nn.Linear(1 << 18, 2))  # 3.4 M parameters
    assert lca.Tracker(big, nn.functional.mse_loss, data).release_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_returns_freed_pages_on_glibc() -> None:
    if not release_free_memory():
        pytest.skip("not glibc (no malloc_trim)")
    # glibc raises its mmap threshold to the size of a large block freed (up to 32 MiB), after
    # which blocks below it come from the heap, and freeing them there keeps them resident.
    big = torch.ones(4 << 20)  # 16 MiB, its own mapping ...
    del big  # ... freed: the threshold is now at least that
    blocks = [torch.ones(1 << 20) for _ in range(16)]  # 16 × 4 MiB from the heap
    del blocks[::2]  # 32 MiB freed between live blocks: nothing for free() to trim
    kept = _rss()
    assert release_free_memory()
    after = _rss()
    assert after < kept - (16 << 20), (kept, after)
    del blocks


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux /proc")
def test_memory_benchmark_counts_the_trackers_state_not_the_callers_data() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "memory.py"), "--child", "layers"]
        + ["--steps", "2", "--hidden", "32", "--measure", "256"],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    row = json.loads(out.stdout.strip().splitlines()[-1])
    p = row["params"]
    assert p == 784 * 32 + 32 + 32 * 10 + 10
    # θ, ∇L, ΣA, the last A (16 B) + the writer's totals and counts (12 B) + a small model's
    # two cached index vectors (16 B); the 256 × 784 measurement inputs (31 B per parameter)
    # are the caller's and left out.
    assert 44 * p <= row["held"] <= 44 * p + 20_000, row["held"] / p
    assert row["peak"] >= row["added"] >= 0 or row["added"] < 0 <= row["peak"]
    assert row["cpu_s"] > 0 and row["step_s"] > 0
