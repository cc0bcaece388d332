"""Loss and gradient of the fixed measurement set at any point in parameter space.

LCA needs L(θ) to be a function of θ alone, so the measurement must not depend on the model's
state: dropout is off, BatchNorm normalises each fixed chunk with its own statistics (train mode)
while the running buffers are neither used nor updated, chunks are fixed, and chunk losses are
weighted by their size so the result is a per-example average whatever the chunking. The model
itself is never modified: parameters come in as a dict and go through
``torch.func.functional_call``; buffers are scratch copies; module modes are restored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call

Params = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DEFAULT_CHUNK = 2048


class MeasurementError(ValueError):
    """Bad measurement data (empty, mismatched lengths, unknown dtype)."""


@contextmanager
def no_tf32() -> Iterator[None]:
    """TF32 would round matmul inputs to 10 mantissa bits: too coarse for per-step LCA."""
    if not torch.cuda.is_available():
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


@contextmanager
def measurement_mode(model: nn.Module) -> Iterator[None]:
    """Dropout off, BatchNorm on batch statistics; every module's mode restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
    try:
        yield
    finally:
        for m, was_training in modes:
            m.training = was_training


def _chunks(data, chunk_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(data, tuple | list) and len(data) == 2 and torch.is_tensor(data[0]):
        x, y = data
        if len(x) != len(y):
            raise MeasurementError(
                f"Measurement inputs and targets differ in length ({len(x)} vs {len(y)})."
            )
        return [
            (x[i : i + chunk_size], y[i : i + chunk_size]) for i in range(0, len(x), chunk_size)
        ]
    if isinstance(data, Iterable):
        return [(x, y) for x, y in data]
    raise MeasurementError("Measurement data must be a pair (inputs, targets) or batches of pairs.")


class Measurer:
    """Evaluates L(θ) and ∇L(θ) on a fixed measurement set, counting gradient evaluations."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data,
        *,
        chunk_size: int = DEFAULT_CHUNK,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        if dtype not in (torch.float32, torch.float64):
            raise MeasurementError(f"LCA is measured in float32 or float64, not {dtype}.")
        self.model = model
        self.loss_fn = loss_fn
        self.dtype = dtype
        first = next(iter(model.parameters()), None)
        self.device = (
            torch.device(device)
            if device is not None
            else (first.device if first is not None else torch.device("cpu"))
        )
        chunks = _chunks(data, chunk_size)
        if not chunks or sum(len(x) for x, _ in chunks) == 0:
            raise MeasurementError("The measurement set is empty.")
        self.size = sum(len(x) for x, _ in chunks)
        self._chunks = [(self._cast(x), y.to(self.device)) for x, y in chunks]
        self._weights = [len(x) / self.size for x, _ in chunks]
        self.names = [n for n, _ in model.named_parameters()]
        self.evaluations = 0  # full measurement-set gradient evaluations so far
        self.loss_evaluations = 0  # loss-only evaluations (no backward)

    def _cast(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        return x.to(self.dtype) if x.is_floating_point() else x

    def _buffers(self) -> Params:
        # Scratch copies: BatchNorm in train mode writes running stats into these, not the model.
        return {
            n: (
                b.detach().to(self.device, self.dtype, copy=True)
                if b.is_floating_point()
                else b.detach().clone()
            )
            for n, b in self.model.named_buffers()
        }

    def loss_and_grad(self, params: Params, *, need_grad: bool = True) -> tuple[float, Params]:
        """Mean loss over the measurement set at ``params`` and its gradient (name -> tensor)."""
        leaves = {
            n: params[n].detach().to(self.device, self.dtype).requires_grad_(need_grad)
            for n in self.names
        }
        buffers = self._buffers()
        total = 0.0
        with (
            torch.enable_grad() if need_grad else torch.no_grad(),
            no_tf32(),
            measurement_mode(self.model),
        ):
            for (x, y), w in zip(self._chunks, self._weights, strict=True):
                out = functional_call(self.model, {**leaves, **buffers}, (x,))
                loss = self.loss_fn(out, y) * w
                if need_grad:
                    loss.backward()
                total += float(loss.detach())
        if need_grad:
            self.evaluations += 1
            grads = {
                n: (t.grad if t.grad is not None else torch.zeros_like(t))
                for n, t in leaves.items()
            }
        else:
            self.loss_evaluations += 1
            grads = {}
        return total, grads

    def loss(self, params: Params) -> float:
        return self.loss_and_grad(params, need_grad=False)[0]


def current_params(model: nn.Module, dtype: torch.dtype | None = None) -> Params:
    """A detached copy of the model's parameters (optionally cast), in model order."""
    return {n: p.detach().to(dtype or p.dtype, copy=True) for n, p in model.named_parameters()}
