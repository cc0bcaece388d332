"""Stanza against plain data parallel: bytes exchanged per step and training steps per second.

Both train the same model on the digits set with K = 2 (Stanza: 2 conv ranks + 1 FC rank; data
parallel: 2 ranks), gloo on CPU, processes spawned with ``lca.stanza.Launch`` (1 thread each),
``--batch-size`` examples per rank, nothing recorded (no LCA: only the training exchange runs).
Bytes are what the ranks' ``Traffic`` counted through their send/recv/all_reduce calls, summed
over every rank and averaged over the steps (an all-reduce counts its buffer once sent, once
received per rank). Steps/s is steps / the slowest rank's summed step time (the ranks move in
lock-step; process start and data loading excluded). Two models, because the comparison turns
on the ratio of FC parameters to features per minibatch: the tiny cnn-small (650 FC
parameters) and LeNet (68,410 FC parameters on digits).

With ``--lca FOLDER`` it instead records the three runs of each model there (LCA with rk4 on
a 500-example measurement set) and prints, per run, the LCA summed over the conv layers and over
the FC layers, and the loss change: whether separation or staleness makes a group hurt (§7).

    python benchmarks/stanza.py [--steps 100] [--batch-size 64] [--models cnn-small lenet]
    python benchmarks/stanza.py --lca runs/stanza-bench [--staleness 4]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lca.config import RunConfig  # noqa: E402
from lca.stanza import Launch, bytes_per_step  # noqa: E402


def config(model: str, steps: int, batch: int, **mode: int) -> RunConfig:
    return RunConfig(
        dataset="digits",
        model=model,
        steps=steps,
        batch_size=batch,
        eval_every=steps,
        lr=0.05,
        optimizer="momentum",
        device="cpu",
        **mode,
    )


def measure(c: RunConfig) -> tuple[float, float, float]:
    """(bytes sent per step, bytes received per step, steps per second)."""
    with Launch(c, None) as launch:
        results = launch.wait(1800)
    sent, received = bytes_per_step(results)
    slowest = max(r.seconds_train for r in results)
    return sent, received, c.steps / slowest


def record(c: RunConfig, path: Path) -> str:
    """Train and record ``c`` to ``path``; one line: LCA of the conv and FC layers, ΔL."""
    from lca.store import Reader

    c = c.replace(measure_size=500, method="rk4", eval_every=max(1, c.steps // 4))
    with Launch(c, path, overwrite=True) as launch:
        launch.wait(3600)
    with Reader(path) as r:
        totals = r.layer_lca().sum(axis=0)
        conv = sum(t for n, t in zip(r.names, totals, strict=True) if n.startswith("conv"))
        fc = float(totals.sum()) - conv
        loss = r.steps("loss")
        acc = r.summary()["test_acc"]
    return (
        f"conv LCA {conv:+.4f}  FC LCA {fc:+.4f}  ΔL {loss[-1] - loss[0]:+.4f}  "
        f"test accuracy {acc:.3f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--models", nargs="+", default=["cnn-small", "lenet"])
    p.add_argument("--lca", type=Path, help="record the runs in this folder and print LCA")
    p.add_argument("--staleness", type=int, default=2, help="τ of the stale Stanza run")
    args = p.parse_args()
    print(
        f"torch {torch.__version__}, digits, K = 2, {args.batch_size} examples per rank, "
        f"{args.steps} steps, gloo on CPU, 1 thread per rank"
    )
    tau = args.staleness
    for model in args.models:
        rows = {
            "data parallel": config(model, args.steps, args.batch_size, data_parallel=2),
            "stanza τ=0": config(model, args.steps, args.batch_size, stanza=2),
            f"stanza τ={tau}": config(model, args.steps, args.batch_size, stanza=2, staleness=tau),
        }
        if args.lca is not None:
            args.lca.mkdir(parents=True, exist_ok=True)
            for i, (name, c) in enumerate(rows.items()):
                print(f"{model:<10} {name:<15} {record(c, args.lca / f'{model}-{i}.h5')}")
            continue
        if model == args.models[0]:
            print(f"{'model':<10} {'mode':<15} {'bytes sent/step':>16} {'steps/s':>8}")
        measured = {name: measure(c) for name, c in rows.items()}
        for name, (sent, _, rate) in measured.items():
            print(f"{model:<10} {name:<15} {sent:>16,.0f} {rate:>8.1f}")
        ratio = measured["stanza τ=0"][0] / measured["data parallel"][0]
        print(f"{model:<10} stanza / data parallel bytes: {ratio:.3f}")


if __name__ == "__main__":
    main()
