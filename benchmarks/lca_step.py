"""How close a tracked step gets to LCA's cost floor (train step + 2 measurement gradients).

Prints, per model: a plain training step, one measurement-set gradient, a tracked step (rk4),
and efficiency = (train step + 2 × gradient) / tracked step. 1.0 means the tracker adds nothing
beyond the two gradient evaluations Simpson's rule needs; the target is ≥ 0.9 on CPU.

Two estimates of the ratio: the *paired* one times (train step + 2 gradients) and one tracked
step back to back (in alternating order), ``--pairs`` times, and reports the median of the
per-pair ratios (and its quartiles); the separately timed minima are printed too. On a loaded,
shared machine the minima come from different moments and gave anything from 0.40 to 1.22,
while the paired median compares the two under the same load.

    python benchmarks/lca_step.py [--steps 30] [--pairs 40] [--measure 4000] [--threads auto]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import lca  # noqa: E402
from lca import models, threads  # noqa: E402
from lca.measure import Measurer  # noqa: E402


def best_time(fn, repeats: int) -> float:
    """Fastest of ``repeats`` runs: other load on the machine only ever adds time."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench(
    name: str,
    model: nn.Module,
    shape: tuple[int, ...],
    classes: int,
    measure: int,
    steps: int,
    device: str,
    record: str | None,
    pairs: int = 40,
) -> dict[str, float]:
    torch.manual_seed(0)
    model.to(device)
    x = torch.rand(measure, *shape, device=device)
    y = torch.randint(0, classes, (measure,), device=device)
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batch = 64

    def train_step(i: int) -> None:
        idx = torch.arange(i * batch, (i + 1) * batch, device=device) % measure
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x[idx]), y[idx]).backward()

    counter = iter(range(10**9))

    def plain() -> None:
        train_step(next(counter))
        opt.step()

    measurer = Measurer(model, loss_fn, (x, y))
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    plain()  # warm-up
    measurer.loss_and_grad(params)
    t_train = best_time(plain, steps)
    t_grad = best_time(lambda: measurer.loss_and_grad(params), max(5, steps // 3))

    writer = None
    tmp = None
    if record is not None:
        import tempfile

        tmp = tempfile.TemporaryDirectory()
        writer = lca.Writer(Path(tmp.name) / "b.h5", record=record)
    tracker = lca.Tracker(model, loss_fn, (x, y), writer=writer)
    tracker.start()

    def tracked() -> None:
        train_step(next(counter))
        with tracker.step():
            opt.step()

    tracked()  # warm-up
    t_tracked = best_time(tracked, steps)

    # The floor's training step runs on a copy of the model: a step of the tracked model made
    # outside the tracker would be allocated as an intervention segment (2 more gradients) at
    # the next tracked step, which is what the first version of this pairing measured.
    twin = copy.deepcopy(model)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9)

    def floor_once() -> None:  # what a tracked step cannot avoid: train step + 2 gradients
        idx = torch.arange(0, batch, device=device)
        twin_opt.zero_grad(set_to_none=True)
        loss_fn(twin(x[idx]), y[idx]).backward()
        twin_opt.step()
        measurer.loss_and_grad(params)
        measurer.loss_and_grad(params)

    def seconds(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    ratios = []
    for i in range(pairs):  # back to back, so both halves of a pair see the same load;
        if i % 2 == 0:  # the order alternates, so whichever half goes first gains nothing
            t_floor = seconds(floor_once)
            t_step = seconds(tracked)
        else:
            t_step = seconds(tracked)
            t_floor = seconds(floor_once)
        ratios.append(t_floor / t_step)
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    if any(h["kind"] != 0 for h in tracker.history):
        raise RuntimeError("the tracked model was changed outside the tracker; fix the benchmark")
    tracker.close()
    if tmp is not None:
        tmp.cleanup()
    floor = t_train + 2 * t_grad
    return {
        "model": name,
        "params": models.parameter_count(model),
        "train_ms": 1e3 * t_train,
        "grad_ms": 1e3 * t_grad,
        "tracked_ms": 1e3 * t_tracked,
        "efficiency": floor / t_tracked,
        "paired": statistics.median(ratios),
        "q1": quartiles[0],
        "q3": quartiles[-1],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--measure", type=int, default=4000, help="measurement-set size")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--record",
        choices=["full", "units", "layers"],
        default=None,
        help="also write a run file (default: tracker only)",
    )
    ap.add_argument("--pairs", type=int, default=40, help="paired (floor, tracked) timings")
    ap.add_argument("--threads", default="auto", help="torch threads (auto: lca.threads)")
    args = ap.parse_args()
    torch.set_num_threads(
        threads.resolve(args.threads if args.threads == "auto" else int(args.threads))
    )
    cases = [
        ("mlp (digits 8×8)", models.build("mlp", (1, 8, 8), 10, hidden=(64, 64)), (1, 8, 8)),
        ("cnn-small (28×28)", models.build("cnn-small", (1, 28, 28), 10), (1, 28, 28)),
    ]
    print(
        f"measurement set {args.measure} examples, {args.steps} steps, device {args.device}, "
        f"torch threads {torch.get_num_threads()}, record {args.record or 'none'}"
    )
    print(
        f"{'model':<20}{'params':>9}{'train ms':>10}{'grad ms':>10}{'tracked ms':>12}"
        f"{'eff. (minima)':>15}{'eff. paired median [q1, q3]':>30}"
    )
    for name, model, shape in cases:
        r = bench(
            name, model, shape, 10, args.measure, args.steps, args.device, args.record, args.pairs
        )
        print(
            f"{r['model']:<20}{r['params']:>9,}{r['train_ms']:>10.2f}{r['grad_ms']:>10.2f}"
            f"{r['tracked_ms']:>12.2f}{r['efficiency']:>15.3f}"
            f"{r['paired']:>15.3f} [{r['q1']:.3f}, {r['q3']:.3f}]"
        )


if __name__ == "__main__":
    main()
