"""How close the measurement-set gradient (``lca.measure``) gets to what the machine can do.

For each model, one full measurement-set gradient is timed over the same data and the same
chunks: LCA's ``Measurer.flat_grad`` as the product runs it (the module itself runs with leaves
that view the evaluated point; a convolutional model's conv weights channels-last on the CPU)
and a plain PyTorch forward + backward (``model(x)``, ``loss.backward()``); for the
convolutional model also the plain pass with its weights and inputs channels-last (PyTorch's
fastest layout for convolutions on the CPU) and LCA's gradient kept NCHW
(``channels_last=False``). Each is reported in achieved GFLOP/s of its matmul and convolution
work (forward F, weight gradients F, input gradients F minus the first layer's; ReLU, pooling
and the loss are not counted) beside ``torch.mm``'s on a 2048² float32 product, the practical
limit of this machine. Each variant runs once per round, in rotating order, for ``--repeats``
rounds after a warm-up; GFLOP/s are at the fastest run (other load only adds time) and the
speed relative to a plain pass is the median of the per-round ratios (both halves under the
same load): against the plain NCHW pass, and for the convolutional model against the plain
channels-last pass as well, from wall-clock time and (on the CPU) from the process's CPU time,
which leaves out the time it waited for a core that other work held. The load average before
and after is printed: on a shared machine the paired ratios are only as good as the load was
steady.

Models: mlp on digits (8×8, the whole training split), fc-mnist and lenet on 28×28
Fashion-MNIST when installed (else random 28×28 tensors of the same shape: speed does not depend
on the pixel values).

    python benchmarks/gradient.py [--threads auto] [--repeats 7] [--fc-size 60000]
        [--lenet-size 5000] [--chunk 2048] [--models mlp,fc-mnist,lenet] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import data  # noqa: E402
from lca import models, threads  # noqa: E402
from lca.measure import Measurer  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> tuple[float, float]:
    """(median, min) seconds of ``fn`` after one warm-up run."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def gradient_flops(model: nn.Module, x: torch.Tensor) -> float:
    """Multiply-add FLOPs (×2) of forward + backward of Linear and Conv layers on ``x``:
    forward F, weight gradients F, input gradients F for every layer but the first (whose
    input needs no gradient)."""
    per_layer: list[float] = []

    def hook(module: nn.Module, inputs, output) -> None:
        if isinstance(module, nn.Linear):
            per_layer.append(2.0 * output.numel() * module.in_features)
        elif isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            per_layer.append(2.0 * output.numel() * module.in_channels // module.groups * k)

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Linear | nn.Conv2d)
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    forward = sum(per_layer)
    return forward + forward + (forward - (per_layer[0] if per_layer else 0.0))


def mm_peak(device: torch.device, repeats: int, n: int = 2048) -> float:
    """GFLOP/s of torch.mm on n×n float32 (the best of ``repeats``)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    _, best = timed(lambda: torch.mm(a, b), repeats, device)
    return 2.0 * n**3 / best / 1e9


def plain_gradient(model: nn.Module, chunks, size: int) -> Callable[[], None]:
    """The baseline: model(x) and backward per chunk, mean loss over the whole set."""
    loss_fn = nn.CrossEntropyLoss(reduction="sum")

    def run() -> None:
        model.zero_grad(set_to_none=True)
        for x, y in chunks:
            (loss_fn(model(x), y) / size).backward()

    return run


def bench(
    name: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    args,
    device: torch.device,
    peak: float,
) -> list[str]:
    """Time every variant once per round, in rotating order, for ``args.repeats`` rounds: the
    ratio to the plain pass is taken within each round (same load) and its median reported."""
    model = model.to(device).train()
    x, y = x.to(device), y.to(device)
    chunks = [(x[i : i + args.chunk], y[i : i + args.chunk]) for i in range(0, len(x), args.chunk)]
    flops = sum(gradient_flops(model, cx) for cx, _ in chunks)
    measurer = Measurer(model, nn.CrossEntropyLoss(), (x, y), chunk_size=args.chunk)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    product = "lca.measure" + (", channels-last convs" if measurer.channels_last else "")
    variants: list[tuple[str, Callable[[], object]]] = [
        ("plain fwd+bwd", plain_gradient(model, chunks, len(x))),
        (product, lambda: measurer.flat_grad(flat)),
    ]
    references = ["plain fwd+bwd"]
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        # ``to(memory_format=...)`` restrides even a one-channel tensor, whose NCHW strides
        # ``contiguous(memory_format=...)`` would keep (and oneDNN would then run NCHW).
        cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        cl_chunks = [(cx.to(memory_format=torch.channels_last), cy) for cx, cy in chunks]
        nchw = Measurer(
            model, nn.CrossEntropyLoss(), (x, y), chunk_size=args.chunk, channels_last=False
        )
        variants += [
            ("plain, channels-last", plain_gradient(cl_model, cl_chunks, len(x))),
            ("lca.measure, NCHW", lambda: nchw.flat_grad(flat)),
        ]
        references.append("plain, channels-last")
    for _, fn in variants:  # warm-up
        fn()
    sync(device)
    times: dict[str, list[float]] = {label: [] for label, _ in variants}
    cpu: dict[str, list[float]] = {label: [] for label, _ in variants}
    for r in range(args.repeats):
        for label, fn in variants[r % len(variants) :] + variants[: r % len(variants)]:
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            sync(device)
            times[label].append(time.perf_counter() - t0)
            cpu[label].append(time.process_time() - c0)

    def paired(clock: dict[str, list[float]], ref: str, label: str) -> float:
        return statistics.median(
            [p / max(v, 1e-9) for p, v in zip(clock[ref], clock[label], strict=True)]
        )

    rows = []
    for label, _ in variants:
        cells = []
        for ref in references:
            cell = f"{paired(times, ref, label):.2f}"
            if device.type == "cpu":  # CPU time: the time the process ran, not waited
                cell += f" / {paired(cpu, ref, label):.2f}"
            cells.append(cell)
        vs_cl = cells[1] if len(cells) > 1 else "—"
        best, median = min(times[label]), statistics.median(times[label])
        rows.append(
            f"| {name} | {len(x):,} | {label} | {1e3 * best:,.1f} ({1e3 * median:,.1f}) | "
            f"{flops / best / 1e9:.1f} | {cells[0]} | {vs_cl} | "
            f"{flops / best / 1e9 / peak:.2f} |"
        )
    return rows


def fashion_or_synthetic(size: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    if data.locate("fashion-mnist") is not None:
        ds = data.load("fashion-mnist")
        return ds.x_train[:size], ds.y_train[:size], "Fashion-MNIST"
    g = torch.Generator().manual_seed(0)
    return (
        torch.rand(size, 1, 28, 28, generator=g),
        torch.randint(0, 10, (size,), generator=g),
        "random 28×28",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="auto", help="torch threads (auto: lca.threads)")
    ap.add_argument("--repeats", type=int, default=7, help="rounds of every variant")
    ap.add_argument("--fc-size", type=int, default=60000, help="fc-mnist measurement set")
    ap.add_argument("--lenet-size", type=int, default=5000, help="lenet measurement set")
    ap.add_argument("--chunk", type=int, default=2048, help="measurement chunk size")
    ap.add_argument(
        "--models", default="mlp,fc-mnist,lenet", help="comma-separated: mlp, fc-mnist, lenet"
    )
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(
        threads.resolve(args.threads if args.threads == "auto" else int(args.threads))
    )
    wanted = set(args.models.split(","))
    if not wanted <= {"mlp", "fc-mnist", "lenet"}:
        ap.error(f"--models takes mlp, fc-mnist and lenet, not {args.models!r}.")
    torch.manual_seed(0)
    load = os.getloadavg()[0]
    peak = mm_peak(device, args.repeats)
    print(
        f"device {device}, torch threads {torch.get_num_threads()}, chunk {args.chunk}, "
        f"torch.mm 2048² float32: {peak:.1f} GFLOP/s, load average {load:.1f}"
    )
    print(
        "| model | examples | gradient | ms min (median) | GFLOP/s at min | speed × plain "
        "(paired median: wall / CPU) | × plain channels-last | ÷ torch.mm |"
    )
    print("|---|---|---|---|---|---|---|---|")
    rows: list[str] = []
    if "mlp" in wanted:
        digits = data.load("digits")
        rows += bench(
            "mlp (digits 8×8)",
            models.build("mlp", digits.input_shape, 10),
            digits.x_train,
            digits.y_train,
            args,
            device,
            peak,
        )
    if wanted & {"fc-mnist", "lenet"}:
        x, y, source = fashion_or_synthetic(max(args.fc_size, args.lenet_size))
    if "fc-mnist" in wanted:
        rows += bench(
            f"fc-mnist ({source})",
            models.build("fc-mnist", (1, 28, 28), 10),
            x[: args.fc_size],
            y[: args.fc_size],
            args,
            device,
            peak,
        )
    if "lenet" in wanted:
        rows += bench(
            f"lenet ({source})",
            models.build("lenet", (1, 28, 28), 10),
            x[: args.lenet_size],
            y[: args.lenet_size],
            args,
            device,
            peak,
        )
    print("\n".join(rows))
    print(f"load average {load:.1f} before, {os.getloadavg()[0]:.1f} after")


if __name__ == "__main__":
    main()
