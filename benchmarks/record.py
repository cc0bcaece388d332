"""How much of a tracked step the HDF5 writer costs, per record mode.

The tracker's floor is two full measurement-set gradient evaluations per step; the writer must
stay small next to that (target: ≤ 5% of a tracked step with --record full). This script trains
an MLP of ~100k parameters (64 → 512 → 128 → 10) on random data with a measurement set of 2,000
examples and reports, for no writer and for each record mode:

* time per tracked step (tracker + writer),
* the writer's own time per step (measured inside Writer.begin/append/close) and its share,
* how much the file grows per step, and the writer's size estimate against the real file,
* the writer's cost alone, fed synthetic records with no tracker beside it.

Times are CPU seconds of this process by default (``--clock cpu``): on a shared machine, wall
time mostly measures how long the process waited for a core. The four set-ups advance in turns of
a few steps so that whatever else runs slows them alike.

Run from the repository root:
    /work/venv/bin/python benchmarks/record.py [--steps N] [--threads N] [--clock cpu|wall]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import lca  # noqa: E402
from lca.allocate import model_layout  # noqa: E402
from lca.store import Writer, estimate_bytes, human_bytes  # noqa: E402
from lca.synthetic import random_record  # noqa: E402

WARMUP = 3
MODES = ("full", "units", "layers")
clock = time.process_time


class TimedWriter(Writer):
    """A Writer that adds up the time spent in its own methods."""

    seconds = 0.0

    def begin(self, layout, loss0):
        t = clock()
        super().begin(layout, loss0)
        self.seconds += clock() - t

    def append(self, record):
        t = clock()
        super().append(record)
        self.seconds += clock() - t

    def close(self, status="complete"):
        t = clock()
        super().close(status)
        self.seconds += clock() - t


def mlp() -> nn.Sequential:
    """The benchmark's model: an MLP 64-512-128-10 (~100k parameters)."""
    return nn.Sequential(
        nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 128), nn.ReLU(), nn.Linear(128, 10)
    )


class Setup:
    """One model + optimizer + tracker (+ writer); all set-ups start from the same weights."""

    def __init__(self, mode: str | None, steps: int, folder: Path) -> None:
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(2000, 64, generator=g)
        self.y = torch.randint(0, 10, (2000,), generator=g)
        self.model = mlp()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
        self.mode, self.steps = mode, steps
        self.path = folder / f"{mode}.h5"
        self.writer = (
            None
            if mode is None
            else TimedWriter(self.path, record=mode, overwrite=True, expected_steps=steps + WARMUP)
        )
        self.tracker = lca.Tracker(
            self.model, nn.functional.cross_entropy, (self.x, self.y), writer=self.writer
        )
        self.i = 0
        self.seconds = 0.0
        self.writer_seconds = 0.0

    def _writer_time(self) -> float:
        return self.writer.seconds if self.writer else 0.0

    def advance(self, n: int, timed: bool = True) -> None:
        w0, t0 = self._writer_time(), clock()
        for _ in range(n):
            idx = torch.arange(self.i * 64, (self.i + 1) * 64) % 2000
            self.opt.zero_grad()
            nn.functional.cross_entropy(self.model(self.x[idx]), self.y[idx]).backward()
            with self.tracker.step():
                self.opt.step()
            self.i += 1
        if timed:
            self.seconds += clock() - t0
            self.writer_seconds += self._writer_time() - w0

    def finish(self) -> dict:
        w0, t0 = self._writer_time(), clock()
        self.tracker.close()  # the last flush belongs to the timed steps
        self.seconds += clock() - t0
        self.writer_seconds += self._writer_time() - w0
        out = {
            "mode": self.mode or "no writer",
            "params": self.tracker.layout.num_params,
            "step_s": self.seconds / self.steps,
            "writer_s": self.writer_seconds / self.steps,
        }
        if self.writer is not None:
            layout = self.tracker.layout
            out["size"] = self.path.stat().st_size
            out["estimate"] = estimate_bytes(layout, self.steps + WARMUP, self.mode)
            # marginal bytes per step (files grow by whole chunks, so size/steps misleads)
            out["bytes_per_step"] = (
                estimate_bytes(layout, 10_000, self.mode) - estimate_bytes(layout, 0, self.mode)
            ) / 10_000
        return out


def measure(steps: int, folder: Path, block: int = 8) -> list[dict]:
    """Advance the four set-ups in turns of ``block`` steps."""
    setups = [Setup(m, steps, folder) for m in (None, *MODES)]
    for s in setups:  # first steps pay for allocation and file creation
        s.advance(WARMUP, timed=False)
    done = 0
    while done < steps:
        n = min(block, steps - done)
        for s in setups:
            s.advance(n)
        done += n
    return [s.finish() for s in setups]


def writer_alone(folder: Path, rows: int = 256) -> dict[str, float]:
    """Seconds per Writer.append fed synthetic records, with no tracker running beside it."""
    layout = model_layout(mlp(), measure_size=2000)
    g = torch.Generator().manual_seed(2)
    pool = [random_record(layout, 0, g) for _ in range(8)]
    out = {}
    for mode in MODES:
        w = Writer(folder / f"alone-{mode}.h5", record=mode, overwrite=True)
        w.begin(layout, 1.0)
        t0 = clock()
        for i in range(rows):
            w.append(dataclasses.replace(pool[i % len(pool)], index=i, train_step=i + 1))
        w.close("complete")
        out[mode] = (clock() - t0) / rows
    return out


def main() -> None:
    global clock
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120, help="tracked steps per set-up")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's own choice)"
    )
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="CPU time of this process (default) or wall-clock time",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        alone = writer_alone(folder)
        results = measure(args.steps, folder)
    base = results[0]["step_s"]
    print(
        f"MLP 64-512-128-10 ({results[0]['params']:,} parameters), measurement set 2,000, "
        f"rk4, {args.steps} tracked steps, torch threads {torch.get_num_threads()}, "
        f"{args.clock} time"
    )
    print(
        f"{'record':<10} {'step ms':>8} {'writer ms':>10} {'writer %':>9} {'Δ vs none':>10} "
        f"{'per step':>10} {'file':>9} {'estimate':>9}"
    )
    for r in results:
        share = 100 * r["writer_s"] / r["step_s"] if r["writer_s"] else 0.0
        delta = 100 * (r["step_s"] - base) / base
        extra = ""
        if "size" in r:
            extra = (
                f" {human_bytes(r['bytes_per_step']):>10} {human_bytes(r['size']):>9} "
                f"{human_bytes(r['estimate']):>9}"
            )
        print(
            f"{r['mode']:<10} {1e3 * r['step_s']:8.2f} {1e3 * r['writer_s']:10.3f} "
            f"{share:8.2f}% {delta:9.1f}%{extra}"
        )
    print(
        "writer alone (synthetic records, 256 appends, no tracker): "
        + ", ".join(
            f"{m} {1e3 * t:.2f} ms/step ({100 * t / base:.1f}% of a step without writer)"
            for m, t in alone.items()
        )
    )
    print(
        "writer % = time inside Writer.begin/append/close / whole tracked step; Δ vs none = "
        "step time against no writer (noisy); per step = file growth per step."
    )


if __name__ == "__main__":
    main()
