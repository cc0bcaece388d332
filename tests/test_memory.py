"""Tracking memory stays near the state LCA needs (issue 15 item 8; the RSS figures are in
benchmarks/memory.py): what the tracker and the writer hold is a fixed number of bytes per
parameter that does not grow with the steps, and the writer's row buffer is bounded."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import lca
from lca.allocate import Layout, UnitGroup
from lca.memory import held_tensor_bytes
from lca.store import Writer
from lca.store.schema import BUFFER_BYTES, _plan


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
