"""``--pack N`` against N runs one after another: training steps per second on this machine.

Both sides train the same N models (seeds seed … seed+N−1, a small MLP on the digits set, LCA
measured on every step, nothing written to disk): packed = ``lca.pack.run_pack`` (one process,
the N loops in lock-step), sequential = ``lca.train.run`` N times. Each prints steps/s counted
over all N models (N × steps / seconds, build and first measurement included) and the ratio
packed / sequential. The pack is not vmap-stacked (see ``lca/pack.py``), so a ratio near 1 is
what to expect: the pack saves the per-run set-up, not the per-step work.

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
    return RunConfig(dataset="digits", model="mlp", steps=steps, batch_size=64,
                     measure_size=256, eval_every=steps, lr=0.05, seed=seed, pack=pack,
                     threads=1, device="cpu")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8])
    args = p.parse_args()
    print(f"torch {torch.__version__}, {args.steps} steps per model, MLP on digits, "
          "measure 256, CPU, 1 thread")
    run(config(2, 1))  # warm-up: imports, the digits set, first-call costs
    print(f"{'N':>3} {'packed steps/s':>15} {'sequential steps/s':>19} {'ratio':>6}")
    for n in args.sizes:
        t0 = time.perf_counter()
        results = run_pack(config(args.steps, n))
        packed = time.perf_counter() - t0
        assert all(r.status == "complete" for r in results)
        t0 = time.perf_counter()
        for i in range(n):
            assert run(config(args.steps, 1, seed=i)).status == "complete"
        sequential = time.perf_counter() - t0
        total = n * args.steps
        print(f"{n:>3} {total / packed:>15.1f} {total / sequential:>19.1f} "
              f"{sequential / packed:>6.2f}")


if __name__ == "__main__":
    main()
