"""``--pack N`` against N runs one after another: training steps per second on this machine.

Every column trains the same N models (seeds seed … seed+N−1, a small MLP on the digits set,
LCA measured on every step, nothing written to disk):

* stacked = ``lca.pack.run_pack``: one vmap-ed training forward/backward for all N and the LCA
  measurement stacked too (the Simpson nodes of all N models in one vmap-ed call per chunk);
* train-only = the same with only the training step stacked (each model measures on its own);
* lock-step = ``run_pack(stack=False)``: one process, nothing stacked;
* sequential = ``lca.train.run`` N times.

Each prints steps/s counted over all N models (N × steps / seconds, build and first measurement
included) and the ratio to sequential. Then, for the stacked pack, where its time goes: the
stacked training forward/backward, the optimizer steps taken ahead, the stacked measurement,
each Tracker's bookkeeping of its segment, and the rest (evaluation, building, L_0).

Each figure is the fastest of ``--repeats`` runs (other load on a shared machine only adds
time).

    python benchmarks/pack.py [--steps 100] [--sizes 2 4 8] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import lca.pack as pack  # noqa: E402
from lca.allocate import Tracker  # noqa: E402
from lca.config import RunConfig  # noqa: E402
from lca.train import run  # noqa: E402


def config(steps: int, pack_size: int, device: str, seed: int = 0) -> RunConfig:
    return RunConfig(
        dataset="digits",
        model="mlp",
        steps=steps,
        batch_size=64,
        measure_size=256,
        eval_every=steps,
        lr=0.05,
        seed=seed,
        pack=pack_size,
        threads=1,
        device=device,
    )


def timed(seconds: dict[str, float], label: str, fn: Callable) -> Callable:
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            if args and torch.cuda.is_available():
                torch.cuda.synchronize()
            seconds[label] += time.perf_counter() - t0

    return wrapper


def profile_stacked(cfg: RunConfig) -> tuple[float, float, dict[str, float]]:
    """Wall and CPU seconds of one stacked pack and the wall seconds of each part of it."""
    seconds: dict[str, float] = defaultdict(float)
    patches = [
        (pack.StackedStep, "compute", "stacked training forward/backward"),
        (pack.PreStepped, "step_ahead", "optimizer steps (taken ahead)"),
        (pack.StackedMeasurement, "evaluate", "stacked LCA measurement"),
        (Tracker, "_segment", "trackers' bookkeeping"),
    ]
    originals = [(cls, name, getattr(cls, name)) for cls, name, _ in patches]
    for cls, name, label in patches:
        setattr(cls, name, timed(seconds, label, getattr(cls, name)))
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        results = pack.run_pack(cfg)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        for cls, name, fn in originals:
            setattr(cls, name, fn)
    assert all(r.status == "complete" for r in results)
    return wall, cpu, dict(seconds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(1)
    print(
        f"torch {torch.__version__}, {args.steps} steps per model, MLP on digits, "
        f"measure 256, device {args.device}, 1 thread"
    )
    run(config(2, 1, args.device))  # warm-up: imports, the digits set, first-call costs
    print(
        f"{'N':>3} {'stacked':>8} {'train-only':>11} {'lock-step':>10} {'sequential':>11}"
        f" {'stacked/seq':>12} {'train-only/seq':>15} {'lock-step/seq':>14}   (steps/s)"
    )
    profiles = []
    cpu_rows = []

    def fastest(fn: Callable[[], object]) -> tuple[float, float]:
        """(fewest wall seconds, fewest CPU seconds of this process) over the repeats."""
        wall, cpu = float("inf"), float("inf")
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall = min(wall, time.perf_counter() - t0)
            cpu = min(cpu, time.process_time() - c0)
        return wall, cpu

    for n in args.sizes:
        cfg = config(args.steps, n, args.device)
        runs_stacked = [profile_stacked(cfg) for _ in range(args.repeats)]
        stacked, _, parts = min(runs_stacked, key=lambda r: r[0])
        stacked_cpu = min(r[1] for r in runs_stacked)
        profiles.append((n, stacked, parts))
        train_only, train_only_cpu = fastest(
            lambda cfg=cfg: pack.run_pack(cfg, stack_measurement=False)
        )
        lockstep, lockstep_cpu = fastest(lambda cfg=cfg: pack.run_pack(cfg, stack=False))

        def one_after_another(n: int = n) -> None:
            for i in range(n):
                assert run(config(args.steps, 1, args.device, seed=i)).status == "complete"

        sequential, sequential_cpu = fastest(one_after_another)
        total = n * args.steps
        cpu_rows.append((n, total, stacked_cpu, train_only_cpu, lockstep_cpu, sequential_cpu))
        print(
            f"{n:>3} {total / stacked:>8.1f} {total / train_only:>11.1f} "
            f"{total / lockstep:>10.1f} {total / sequential:>11.1f} "
            f"{sequential / stacked:>12.2f} {sequential / train_only:>15.2f} "
            f"{sequential / lockstep:>14.2f}"
        )
    print(
        "\nthe same by CPU seconds of this process (1 thread: the work done, much less "
        "sensitive than wall time to other load on a shared machine)"
    )
    for n, total, *cpu in cpu_rows:
        a, b, c, d = cpu
        print(
            f"{n:>3} {total / a:>8.1f} {total / b:>11.1f} {total / c:>10.1f} {total / d:>11.1f} "
            f"{d / a:>12.2f} {d / b:>15.2f} {d / c:>14.2f}"
        )
    print("\nwhere the stacked pack's time goes (seconds, share of its wall time):")
    for n, wall, parts in profiles:
        rest = wall - sum(parts.values())
        shares = ", ".join(f"{k} {v:.2f} s ({100 * v / wall:.0f}%)" for k, v in parts.items())
        print(f"N={n}: wall {wall:.2f} s: {shares}, rest {rest:.2f} s ({100 * rest / wall:.0f}%)")


if __name__ == "__main__":
    main()
