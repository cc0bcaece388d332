"""``--pack N`` against N runs one after another: training steps per second on this machine.

Both sides train the same N models (seeds seed … seed+N−1, a small MLP on the digits set, LCA
measured on every step, nothing written to disk): stacked = ``lca.pack.run_pack`` (one process,
one vmap-ed training forward/backward for all N, each model's LCA measured on its own),
lock-step = the same without stacking, sequential = ``lca.train.run`` N times. Each prints
steps/s counted over all N models (N × steps / seconds, build and first measurement included)
and the ratios to sequential. The LCA measurement (several measurement-set gradients per step)
is not stacked, so it bounds what stacking the training step can give.

    python benchmarks/pack.py [--steps 40] [--sizes 2 4 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lca.config import RunConfig  # noqa: E402
from lca.pack import run_pack  # noqa: E402
from lca.train import run  # noqa: E402


def config(steps: int, pack: int, seed: int = 0) -> RunConfig:
    return RunConfig(
        dataset="digits",
        model="mlp",
        steps=steps,
        batch_size=64,
        measure_size=256,
        eval_every=steps,
        lr=0.05,
        seed=seed,
        pack=pack,
        threads=1,
        device="cpu",
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8])
    args = p.parse_args()
    print(
        f"torch {torch.__version__}, {args.steps} steps per model, MLP on digits, "
        "measure 256, CPU, 1 thread"
    )
    run(config(2, 1))  # warm-up: imports, the digits set, first-call costs
    print(
        f"{'N':>3} {'stacked':>8} {'lock-step':>10} {'sequential':>11} "
        f"{'stacked/seq':>12} {'lock-step/seq':>14}   (steps/s)"
    )
    for n in args.sizes:
        t0 = time.perf_counter()
        results = run_pack(config(args.steps, n))
        packed = time.perf_counter() - t0
        assert all(r.status == "complete" for r in results)
        t0 = time.perf_counter()
        results = run_pack(config(args.steps, n), stack=False)
        lockstep = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(n):
            assert run(config(args.steps, 1, seed=i)).status == "complete"
        sequential = time.perf_counter() - t0
        total = n * args.steps
        print(
            f"{n:>3} {total / packed:>8.1f} {total / lockstep:>10.1f} "
            f"{total / sequential:>11.1f} {sequential / packed:>12.2f} "
            f"{sequential / lockstep:>14.2f}"
        )


if __name__ == "__main__":
    main()
