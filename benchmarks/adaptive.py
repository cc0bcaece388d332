"""Our adaptive rule (rk4-adaptive) against the LCA paper's (rk4-paper) on one real trajectory.

Trains once (fc-mnist on Fashion-MNIST when installed, else the MLP on digits), keeping θ after
every optimizer step; then allocates the very same segments with rk4, rk4-adaptive and rk4-paper
at two tolerances, reusing each step's end gradient as the next start as the tracker does, and
prints per method: new gradient evaluations per step, mean and worst |ΔL − ΣA|, the steps still
over the tolerance, and the per-parameter error against composite Simpson with 64 panels (relative
norm ‖A − A_ref‖/‖A_ref‖ and the fraction of signs that differ, mean over steps).

    python benchmarks/adaptive.py [--steps 100] [--measure 2000] [--lr 0.05] [--threads 1]
"""

from __future__ import annotations

import argparse
import builtins
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import data  # noqa: E402
from lca import models  # noqa: E402
from lca.allocate import FlatSpace, _integrate_flat, panel_error  # noqa: E402
from lca.measure import Measurer  # noqa: E402

REFERENCE_PANELS = "simpson64"


def trajectory(
    args, model_name: str = "fc-mnist", steps: int | None = None, measure_size: int | None = None
) -> tuple[str, nn.Module, tuple, list[torch.Tensor]]:
    """Train with momentum SGD (the CLI's defaults) and keep flat θ_0 … θ_T."""
    name = "fashion-mnist"
    if data.locate("fashion-mnist") is None:
        name, model_name = ("digits", "mlp" if model_name == "fc-mnist" else "cnn-small")
    ds = data.load(name)
    torch.manual_seed(0)
    model = models.build(model_name, ds.input_shape, ds.num_classes)
    size = measure_size or args.measure
    measure = (ds.x_train[:size], ds.y_train[:size])
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    thetas = [torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])]
    for _ in range(steps or args.steps):
        idx = torch.randint(0, ds.num_train, (64,), generator=g)
        opt.zero_grad()
        loss_fn(model(ds.x_train[idx]), ds.y_train[idx]).backward()
        opt.step()
        thetas.append(torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()]))
    return f"{model_name} on {name}", model, measure, thetas


def allocate_all(
    model, measure, thetas, method: str, tol: float, estimate: bool = False, **adapt
) -> dict[str, object]:
    """Allocate every segment with ``method``; the end gradient opens the next segment."""
    measurer = Measurer(model, nn.CrossEntropyLoss(), measure)
    space = FlatSpace.of(model, measurer.device)
    loss, grad = measurer.flat_loss_and_grad(thetas[0])
    rows = {"lca": [], "err": [], "evals": [], "splits": [], "estimate": [], "losses": [loss]}
    t0 = time.perf_counter()
    for start, end in zip(thetas[:-1], thetas[1:], strict=True):
        seg = _integrate_flat(
            measurer,
            space,
            start,
            end,
            method,
            loss_start=loss,
            grad_start=grad,
            tolerance=tol,
            estimate=estimate,
            **adapt,
        )
        if seg.panels_1_2 is not None:
            rows["estimate"].append(panel_error(*seg.panels_1_2))
        rows["lca"].append(seg.lca.clone())
        rows["err"].append((seg.loss_end - loss) - float(seg.lca.double().sum()))
        rows["evals"].append(seg.evaluations)
        rows["splits"].append(seg.splits)
        loss, grad = seg.loss_end, seg.grad_end
        rows["losses"].append(loss)
    rows["seconds"] = time.perf_counter() - t0
    return rows


def reference(model, measure, thetas) -> list[torch.Tensor]:
    """Composite Simpson with 64 panels per segment: the per-parameter yardstick."""
    from lca import integrate

    integrate._FIXED[REFERENCE_PANELS] = integrate.composite_simpson(64)
    return allocate_all(model, measure, thetas, REFERENCE_PANELS, 0.0)["lca"]


CONSERVATION = [("rk4", 1e-3), ("rk4-adaptive", 1e-3), ("rk4-paper", 1e-3), ("gauss3", 1e-3)]
PAPER_TOLERANCE = 1e-3


def conservation(args, print) -> None:  # noqa: A002 - the section's own print
    """Per-step conservation error and cost of each method on fc-mnist and LeNet (issue 15
    item 5): the table the default method is chosen from. No 64-panel reference here (it
    costs 128 gradients a step); errors are |ΔL − ΣA| against the paper's 1e-3."""
    print("## Conservation per step: rk4, rk4-adaptive, rk4-paper and gauss3\n")
    print(
        "Measured by `python benchmarks/adaptive.py --conservation`: one momentum-SGD "
        "trajectory per model (lr "
        f"{args.lr}, batch 64, from step 0, where steps are largest), allocated by each method; "
        f"|ΔL − ΣA| per step against the paper's {PAPER_TOLERANCE:g}. *× rk4* is the gradient "
        "evaluations per step over rk4's (what LCA's time scales with); *LCA s* is wall time on "
        f"a 2-core machine shared with other work, {args.threads} thread(s).\n"
    )
    for model_name, steps, size in (
        ("fc-mnist", args.steps, args.measure),
        ("lenet", args.lenet_steps, args.lenet_measure),
    ):
        what, model, measure, thetas = trajectory(args, model_name, steps, size)
        print(
            f"**{what}** ({thetas[0].numel():,} parameters): {steps} steps, measurement set "
            f"{len(measure[1]):,} (reduced from the paper's 55,000 to fit a shared CPU)\n"
        )
        print(
            "| method | evals/step | × rk4 | mean abs err | worst abs err | steps > 1e-3 | "
            "median rel. err % | LCA s |"
        )
        print("|---|---|---|---|---|---|---|---|")
        base = None
        for method, tol in CONSERVATION:
            r = allocate_all(model, measure, thetas, method, tol)
            err = np.abs(np.array(r["err"]))
            dl = np.abs(np.diff([float(x) for x in r["losses"]]))
            rel = err / np.maximum(dl, 1e-30)
            evals = float(np.mean(r["evals"]))
            base = base or evals
            print(
                f"| {method} | {evals:.2f} | {evals / base:.2f} | {err.mean():.2e} | "
                f"{err.max():.2e} | {int(np.sum(err > PAPER_TOLERANCE))} of {len(err)} | "
                f"{100 * np.median(rel):.3f} | {r['seconds']:.1f} |"
            )
        print()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--measure", type=int, default=2000)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--out",
        help="also write the section as markdown here (e.g. "
        "docs/results/bench-adaptive.md, which docs/RESULTS.md includes)",
    )
    p.add_argument(
        "--conservation",
        action="store_true",
        help="instead: the per-step conservation table of rk4, rk4-adaptive, rk4-paper and "
        "gauss3 on fc-mnist and LeNet",
    )
    p.add_argument("--lenet-steps", type=int, default=20)
    p.add_argument("--lenet-measure", type=int, default=500)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    lines: list[str] = []

    def print(text: str = "") -> None:  # noqa: A001 - the printed lines are the section
        lines.append(text)
        builtins.print(text, flush=True)

    if args.conservation:
        conservation(args, print)
        if args.out:
            Path(args.out).write_text("\n".join(lines) + "\n")
        return

    what, model, measure, thetas = trajectory(args)
    print("## Adaptive rules: ours (rk4-adaptive) against the paper's (rk4-paper)\n")
    print(
        "Measured by `python benchmarks/adaptive.py` on one training trajectory, allocated "
        "by each rule; per-parameter error against composite Simpson with 64 panels.\n"
    )
    print(
        f"{what}: {args.steps} steps, measurement set {len(measure[1])}, "
        f"{thetas[0].numel():,} parameters, lr {args.lr}, {args.threads} thread(s)\n"
    )
    ref = reference(model, measure, thetas)
    print(
        "| method | tolerance | refine on | evals/step | steps refined | mean abs err | "
        "worst abs err | steps > tol | per-param rel. err (mean) | wrong signs % (mean) | LCA s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for method, tol, ptol in [
        ("rk4", 1e-3, None),
        ("rk4-adaptive", 1e-3, None),
        ("rk4-paper", 1e-3, None),
        ("rk4-adaptive", 1e-4, None),
        ("rk4-paper", 1e-4, None),
        ("rk4-paper", 1e-3, 1e-2),  # --adapt-on parameters --param-tolerance 1e-2
        ("rk4-paper", 1e-3, 1e-3),
    ]:
        adapt = {} if ptol is None else {"adapt_on": "parameters", "param_tolerance": ptol}
        r = allocate_all(model, measure, thetas, method, tol, **adapt)
        err = np.abs(np.array(r["err"]))
        rel, signs = [], []
        for a, b in zip(r["lca"], ref, strict=True):
            rel.append(float((a - b).norm() / b.norm().clamp_min(1e-30)))
            moved = b != 0
            signs.append(float((torch.sign(a[moved]) != torch.sign(b[moved])).double().mean()))
        on = "sum" if ptol is None else f"parameters ≤ {ptol:.0e}"
        print(
            f"| {method} | {tol:.0e} | {on} | {np.mean(r['evals']):.2f} | "
            f"{int(np.sum(np.array(r['splits']) > 1))} | {err.mean():.2e} | {err.max():.2e} | "
            f"{int(np.sum(err > tol))} | {np.mean(rel):.2e} | {100 * np.mean(signs):.3f} | "
            f"{r['seconds']:.1f} |"
        )
    # The estimate a run records with --error-every: 1- vs 2-panel Simpson, against rk4's
    # true per-parameter error (against the 64-panel reference) on the same steps.
    r = allocate_all(model, measure, thetas, "rk4", 1e-3, estimate=True)
    rel_true = [
        float((a - b).norm() / b.norm().clamp_min(1e-30))
        for a, b in zip(r["lca"], ref, strict=True)
    ]
    rel_est = [e[0] for e in r["estimate"]]
    corr = float(np.corrcoef(rel_true, rel_est)[0, 1])
    print(
        f"\nrk4's per-parameter error, estimated by 1- vs 2-panel Simpson (--error-every): "
        f"mean relative norm {np.mean(rel_est):.2e} (true {np.mean(rel_true):.2e}), "
        f"worst {np.max(rel_est):.2e} (true {np.max(rel_true):.2e}), correlation over steps "
        f"{corr:.3f}; sign agreement {100 * np.mean([e[1] for e in r['estimate']]):.3f}%."
    )
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
