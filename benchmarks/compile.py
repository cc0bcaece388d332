"""Would ``torch.compile`` make the measurement gradient faster without changing LCA?

LCA's cost is the measurement-set gradient, so a compiler that fuses its kernels is tempting.
The scale issue allows it only where results stay identical. This prints, for one model, the
eager gradient (the product's path), the compiled one (``torch.compile`` of the Measurer's
``chunk_loss``), the one-off compile time, the speed-up, and how far the compiled loss and
gradient are from the eager ones. The product measures eagerly: on every model we tried the
compiled gradient differs from the eager one in float32 (kernels fused and reductions reordered).

    python benchmarks/compile.py [--model resnet20] [--measure 1024] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.lca_step import best_time  # noqa: E402
from lca import models  # noqa: E402
from lca.measure import Measurer  # noqa: E402

SHAPES = {
    "resnet20": (3, 32, 32),
    "lenet": (1, 28, 28),
    "fc-mnist": (1, 28, 28),
    "cnn-small": (1, 8, 8),
    "mlp": (1, 8, 8),
}


def measurer(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int, device: str):
    return Measurer(model, nn.CrossEntropyLoss(), (x, y), chunk_size=chunk, device=device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20", choices=sorted(SHAPES))
    ap.add_argument("--measure", type=int, default=1024, help="measurement-set size")
    ap.add_argument("--chunk", type=int, default=512, help="measurement chunk size")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3, help="timed gradients, fastest kept")
    ap.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = SHAPES[args.model]
    model = models.build(args.model, shape, 10).to(args.device)
    x = torch.rand(args.measure, *shape, device=args.device)
    y = torch.randint(0, 10, (args.measure,), device=args.device)
    eager = measurer(model, x, y, args.chunk, args.device)
    compiled = measurer(model, x, y, args.chunk, args.device)
    compiled.chunk_loss = torch.compile(compiled.chunk_loss)
    flat = eager.flatten(dict(model.named_parameters()))

    print(
        f"{args.model} ({flat.numel():,} parameters), measurement set {args.measure:,} "
        f"in chunks of {args.chunk}, device {args.device}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}"
    )
    loss_e, grad_e = eager.flat_loss_and_grad(flat)
    t0 = time.perf_counter()
    loss_c, grad_c = compiled.flat_loss_and_grad(flat)
    first = time.perf_counter() - t0
    t_eager = best_time(lambda: eager.flat_loss_and_grad(flat), args.repeats)
    t_comp = best_time(lambda: compiled.flat_loss_and_grad(flat), args.repeats)
    diff = (grad_c - grad_e).abs()
    print(f"eager gradient            {t_eager * 1e3:10.1f} ms")
    print(f"compiled gradient         {t_comp * 1e3:10.1f} ms   speed-up {t_eager / t_comp:.2f}x")
    print(f"first compiled call       {first:10.1f} s    (compilation, once per shape)")
    print(f"loss   |compiled − eager| {abs(loss_c - loss_e):10.2e}   (loss {loss_e:.6f})")
    print(f"grad   max |Δ| / max |g|  {float(diff.max() / grad_e.abs().max()):10.2e}")
    print(f"grad   ‖Δ‖ / ‖g‖          {float(diff.norm() / grad_e.norm()):10.2e}")
    print(f"bit-identical             {'yes' if torch.equal(grad_c, grad_e) else 'no'}")


if __name__ == "__main__":
    main()
