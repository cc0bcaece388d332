"""Loss and gradient of the fixed measurement set at any point in parameter space.

LCA needs L(θ) to be a function of θ alone, so the measurement must not depend on the model's
state: dropout is off, BatchNorm normalises each fixed chunk with its own statistics (train mode)
while the running buffers are neither used nor updated, chunks are fixed, and chunk losses are
weighted by their size so the result is a per-example average whatever the chunking. The model
itself is never modified: the evaluated parameters stand in its parameter slots only for the
evaluation; buffers are scratch copies; module modes are restored.

Speed (the measurement gradient is LCA's whole cost): chunk losses are summed on the device in
float64 and read back once per evaluation, not once per chunk, so a GPU never waits on the host
between chunks; the sum is the same float64 sum the per-chunk ``float()`` made, so values are
bit-for-bit unchanged. The model runs as itself (``model(x)``), not through
``functional_call`` (~0.4 ms of bookkeeping per chunk, 1.3–1.45× the plain gradient on a small
MLP): for one evaluation each parameter slot of the module holds one of the Measurer's own
leaves, made once as views of one point buffer with their ``.grad`` views of one gradient
buffer (``lca.flatviews``), so an evaluation copies the point in, autograd accumulates the
gradient flat in place, and no view, ``cat`` or context manager is made per evaluation; the
original Parameters, gradients, buffers and modes are put back afterwards, and the buffers
hold no memory between evaluations. A gradient alone (``flat_grad``) skips the loss.
Convolution weights run channels-last where that is PyTorch's fastest layout (float32 on the
CPU: 1.3–1.9× the NCHW gradient of LeNet), as a true channels-last copy of their view. A
replaced ``chunk_loss`` (``benchmarks/compile.py``) still goes through ``functional_call``.
With ``shard`` the fixed chunks are split across torch.distributed ranks (each rank a
contiguous slice; weights stay relative to the whole set) and one all-reduce of a
flat buffer per dtype (loss, every gradient) gives every rank the whole-set result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from . import distributed
from .flatviews import FlatLeaves

Params = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DEFAULT_CHUNK = 2048


class MeasurementError(ValueError):
    """Bad measurement data (empty, mismatched lengths, unknown dtype)."""


def _tf32_switches() -> list[tuple[object, str]]:
    """The per-operation precision switches of PyTorch's newer TF32 API (absent before 2.9)."""
    m, c = torch.backends.cuda.matmul, torch.backends.cudnn
    switches = [(m, "fp32_precision")]
    for op in ("conv", "rnn"):
        sub = getattr(c, op, None)
        if sub is not None:
            switches.append((sub, "fp32_precision"))
    try:
        for obj, name in switches:
            getattr(obj, name)
    except (AttributeError, RuntimeError):
        return []
    return switches


def _legacy_tf32() -> tuple[bool, bool] | None:
    """``allow_tf32`` of cuBLAS and cuDNN, or None where PyTorch refuses to answer (the caller
    set TF32 through the newer ``fp32_precision`` API, and reading the old one is an error)."""
    try:
        return bool(torch.backends.cuda.matmul.allow_tf32), bool(torch.backends.cudnn.allow_tf32)
    except RuntimeError:
        return None


@contextmanager
def no_tf32() -> Iterator[None]:
    """TF32 would round matmul inputs to 10 mantissa bits: too coarse for per-step LCA.

    Both of PyTorch's TF32 APIs are switched off (the legacy ``allow_tf32`` flags and, where it
    exists, the per-operation ``fp32_precision = "ieee"``, which also overrides a global "tf32"),
    and both are put back exactly as they were, whichever of them the caller used.
    """
    if not torch.cuda.is_available():
        yield
        return
    legacy = _legacy_tf32()
    switches = _tf32_switches()
    precisions = [getattr(obj, name) for obj, name in switches]
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    for obj, name in switches:
        setattr(obj, name, "ieee")
    try:
        yield
    finally:
        if legacy is not None:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = legacy
        for (obj, name), value in zip(switches, precisions, strict=True):
            setattr(obj, name, value)


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
        shard: Any = None,
        channels_last: bool | None = None,
    ) -> None:
        """``shard``: None (this process measures everything), True (split the chunks over the
        default torch.distributed group) or a ProcessGroup to split over. ``channels_last``: run
        2-D convolutions with channels-last weights (None: where it is measured faster, float32
        on the CPU; see :func:`channels_last_pays`)."""
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
        self.size = sum(len(x) for x, _ in chunks)  # always the whole set, sharded or not
        self.num_chunks = len(chunks)
        # Weights relative to the GLOBAL size, so a shard's weighted sum is its exact share.
        weights = [len(x) / self.size for x, _ in chunks]
        self.group: Any = None
        self.rank, self.world = 0, 1
        self.chunk_range = (0, len(chunks))
        if shard is not None and shard is not False:
            self.group = distributed.resolve_group(shard)
            self.rank, self.world = distributed.group_rank_world(self.group)
            self.chunk_range = distributed.shard_range(len(chunks), self.rank, self.world)
        lo, hi = self.chunk_range
        # Convolutions run channels-last where that is PyTorch's fastest layout (a conv weight
        # leaf in that layout makes oneDNN take its NHWC kernels for the whole network); the
        # inputs are left as given (the conv converts them, and a copy would double the set).
        self.channels_last = (
            channels_last_pays(model, self.device, dtype)
            if channels_last is None
            else bool(channels_last)
        )
        self._chunks = [(self._cast(x), y.to(self.device)) for x, y in chunks[lo:hi]]
        self._weights = weights[lo:hi]
        self.names = [n for n, _ in model.named_parameters()]
        self._flat_layout: list[tuple[str, int, int, tuple[int, ...]]] = []
        offset = 0
        for n, p in model.named_parameters():
            self._flat_layout.append((n, offset, p.numel(), tuple(p.shape)))
            offset += p.numel()
        # The mean loss of one chunk at the given parameters and buffers: the one place the
        # model runs, so ``benchmarks/compile.py`` can swap in ``torch.compile(chunk_loss)``.
        self.chunk_loss: Callable[[Params, torch.Tensor, torch.Tensor], torch.Tensor] = (
            lambda tensors, x, y: self.loss_fn(functional_call(self.model, tensors, (x,)), y)
        )
        self._functional_loss = self.chunk_loss  # replaced: evaluate through functional_call
        self._slots = _slots_of(model, "_parameters", self.names)
        self._buffer_slots = _slots_of(model, "_buffers", [n for n, _ in model.named_buffers()])
        # Per-evaluation bookkeeping made once (a tiny model's whole gradient is ~1 ms, and
        # walking the module tree for modes, buffers and slots cost a tenth of it).
        self._sizes = [k for _, _, k, _ in self._flat_layout]
        self._shapes = [shape for _, _, _, shape in self._flat_layout]
        # One leaf per parameter, kept, bound to its slice of each evaluated point (holding
        # nothing between evaluations: lca.flatviews). A channels-last conv weight's leaf is
        # bound to a channels-last copy of its slice.
        self._conv_weights = _conv_weight_names(model) if self.channels_last else set()
        self._relaid = [i for i, n in enumerate(self.names) if n in self._conv_weights]
        self._flat = FlatLeaves(self._sizes, self._shapes, dtype, self.device, set(self._relaid))
        # (module, slot, the leaf that goes there): the modules, not their parameter tables,
        # are kept, so walkers that skip modules (lca.memory) do not count the model's
        # parameters as the Measurer's
        self._leaf_slots = [
            (module, attr, i) for i, n in enumerate(self.names) for module, attr in self._slots[n]
        ]
        self._modes = _measurement_modes(model)
        self.evaluations = 0  # full measurement-set gradient evaluations so far
        self.loss_evaluations = 0  # loss-only evaluations (no backward)

    @property
    def sharded(self) -> bool:
        return self.group is not None or self.world > 1

    def distribute(self, shard: Any = True) -> Measurer:
        """Keep only this rank's contiguous slice of the chunks (for a Measurer built unsharded,
        e.g. inside a Tracker). The chunking and the weights do not change, so L(θ) does not."""
        if self.sharded:
            raise RuntimeError("This Measurer is already sharded.")
        group = distributed.resolve_group(shard)
        r, w = distributed.group_rank_world(group)
        lo, hi = distributed.shard_range(len(self._chunks), r, w)
        self._chunks, self._weights = self._chunks[lo:hi], self._weights[lo:hi]
        self.group, self.rank, self.world, self.chunk_range = group, r, w, (lo, hi)
        return self

    @property
    def local_size(self) -> int:
        """Examples this rank measures (the whole set when not sharded)."""
        return sum(len(x) for x, _ in self._chunks)

    def _cast(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        if not x.is_floating_point():
            return x
        return x.to(self.dtype)

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

    def flat_loss_and_grad(
        self, flat: torch.Tensor, *, need_grad: bool = True
    ) -> tuple[float, torch.Tensor | None]:
        """Mean loss at the parameters laid out flat in model order, and the flat gradient.

        One leaf for all parameters: the model sees views of it, and backward accumulates
        every gradient into one vector, which is what the LCA bookkeeping works on.
        """
        total, grad = self._evaluate(flat, need_grad)
        assert total is not None
        return float(total), grad  # the one host sync of the evaluation

    def flat_grad(self, flat: torch.Tensor) -> torch.Tensor:
        """The flat gradient alone, with no host sync: a quadrature rule's interior nodes need
        no loss, so a GPU keeps queueing work while they are computed."""
        grad = self._evaluate(flat, True, False)[1]
        assert grad is not None
        return grad

    def _evaluate(
        self, flat: torch.Tensor, need_grad: bool, need_loss: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The float64 loss (None where ``need_loss`` is False and the in-place path skips
        it) and the flat gradient (None where ``need_grad`` is False)."""
        if self.chunk_loss is self._functional_loss:
            total, grad = self._evaluate_in_place(flat, need_grad, need_loss)
        else:
            total, grad = self._evaluate_functional(flat, need_grad)
        if need_grad:
            self.evaluations += 1
        else:
            self.loss_evaluations += 1
        if self.sharded:  # one flat buffer per dtype: the float64 loss, the gradient
            # (every rank makes the same call, so every rank reduces the same entries)
            parts = {"loss": total, "grad": grad}
            reduced = distributed.all_reduce_dict(
                {k: t for k, t in parts.items() if t is not None}, group=self.group
            )
            total, grad = reduced.get("loss"), reduced.get("grad")
        return total, grad

    def _evaluate_functional(
        self, flat: torch.Tensor, need_grad: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Through ``self.chunk_loss`` (functional_call), for a replaced chunk_loss."""
        leaf = flat.detach().to(self.device, self.dtype).requires_grad_(need_grad)
        with torch.enable_grad() if need_grad else torch.no_grad():
            views = {n: leaf[o : o + k].view(shape) for n, o, k, shape in self._flat_layout}
            for n in self._conv_weights:  # the layout the in-place path runs in
                views[n] = _channels_last_copy(views[n])
        buffers = self._buffers()
        # float64 on the device: the same sum the old per-chunk float() made, without a host
        # sync per chunk (float32 -> float64 is exact, and so is the order of the additions).
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        with (
            torch.enable_grad() if need_grad else torch.no_grad(),
            no_tf32(),
            measurement_mode(self.model),
        ):
            for (x, y), w in zip(self._chunks, self._weights, strict=True):
                loss = self.chunk_loss({**views, **buffers}, x, y) * w
                if need_grad:
                    loss.backward()
                total.add_(loss.detach())
        grad = None
        if need_grad:
            grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        return total, grad

    def _evaluate_in_place(
        self, flat: torch.Tensor, need_grad: bool, need_loss: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The module itself runs, each parameter slot holding one of the Measurer's own
        leaves (lca.flatviews): for a small model views of one point buffer made once, with
        their ``.grad`` views of one gradient buffer, into which backward accumulates each
        chunk's gradient in place, so that an evaluation pays one copy of the point, one
        zeroing and one copy of the gradient instead of a view per parameter and a ``cat``;
        for a bigger model views of the point made per evaluation and one ``cat``. The leaves
        go into the slots (plain dict entries, as functional_call does) and each module into
        its measurement mode inline, not through context managers: a tiny model's whole
        gradient is ~1 ms, and those per-evaluation costs were ~5–8% of the digits MLP's. A
        channels-last conv weight's leaf holds a channels-last copy of its view. The values are
        those of the functional path bit for bit: the same additions in the same order (the
        first onto zeros, which is exact), and copies are exact. Afterwards the slots, modes
        and grad mode are put back whatever happened, and nothing parameter-sized is held."""
        space = self._flat
        leaves = space.leaves
        if self._buffer_slots:
            buffers = self._buffers()
            buffer_slots = [
                (module._buffers, attr, buffers[n])
                for n, places in self._buffer_slots.items()
                for module, attr in places
            ]
        else:
            buffer_slots = []
        modes = self._modes
        changed = [] if modes is None else [(m, want) for m, want in modes if m.training != want]
        saved: list[tuple[dict, str, Any]] = []
        grad_was = torch.is_grad_enabled()
        total: torch.Tensor | None = None
        done = False
        try:
            space.fill(flat, need_grad)
            for i in self._relaid:
                leaves[i].data = _channels_last_copy(space.point_views[i])
            if grad_was != need_grad:
                torch.set_grad_enabled(need_grad)
            for m, want in changed:  # object.__setattr__: Module.train walks the whole tree
                object.__setattr__(m, "training", want)
            for module, attr, i in self._leaf_slots:
                table = module._parameters
                saved.append((table, attr, table[attr]))
                table[attr] = leaves[i]
            for table, attr, value in buffer_slots:
                saved.append((table, attr, table[attr]))
                table[attr] = value
            with (
                no_tf32() if self.device.type == "cuda" else nullcontext(),
                measurement_mode(self.model) if modes is None else nullcontext(),
            ):
                for (x, y), w in zip(self._chunks, self._weights, strict=True):
                    loss = self.loss_fn(self.model(x), y)
                    if w != 1.0:  # one chunk: × 1.0 is exact, and skipping it saves a node
                        loss = loss * w
                    if need_grad:
                        loss.backward()
                    # float64 on the device (exact from float32), the chunks added in order
                    if not need_loss:
                        pass
                    elif total is None:
                        total = loss.detach().to(torch.float64)
                    else:
                        total.add_(loss.detach())
                    del loss  # its graph refers to the leaves
            done = True
        finally:
            for table, attr, original in reversed(saved):
                table[attr] = original
            for m, want in changed:
                object.__setattr__(m, "training", not want)
            if grad_was != need_grad:
                torch.set_grad_enabled(grad_was)
            del leaves
            if not done or not need_grad:
                space.release()
        grad = space.take_grad() if need_grad else None
        if total is None and need_loss:  # a shard with no chunks
            total = torch.zeros((), dtype=torch.float64, device=self.device)
        return total, grad

    def flatten(self, params: Params) -> torch.Tensor:
        """Parameters (name -> tensor) as one vector in model order, on the device."""
        return torch.cat(
            [
                params[n].detach().reshape(-1).to(self.device, self.dtype)
                for n, _, _, _ in self._flat_layout
            ]
        )

    def loss_and_grad(self, params: Params, *, need_grad: bool = True) -> tuple[float, Params]:
        """Mean loss over the measurement set at ``params`` and its gradient (name -> tensor)."""
        loss, grad = self.flat_loss_and_grad(self.flatten(params), need_grad=need_grad)
        if grad is None:
            return loss, {}
        return loss, {n: grad[o : o + k].view(shape) for n, o, k, shape in self._flat_layout}

    def loss(self, params: Params) -> float:
        return self.loss_and_grad(params, need_grad=False)[0]


Slots = dict[str, list[tuple[nn.Module, str]]]
Modes = list[tuple[nn.Module, bool]]


def _slots_of(model: nn.Module, kind: str, names: list[str]) -> Slots:
    """Every (module, attribute) that holds each named tensor of ``kind`` ("_parameters" or
    "_buffers"): a tied tensor sits in several modules and is swapped in all of them."""
    where = {
        id(t): n
        for n, t in (model.named_parameters() if kind == "_parameters" else model.named_buffers())
    }
    slots: Slots = {n: [] for n in names}
    for module in model.modules():
        for attr, t in getattr(module, kind).items():
            if t is not None and id(t) in where:
                slots[where[id(t)]].append((module, attr))
    return slots


def _measurement_modes(model: nn.Module) -> Modes | None:
    """Each module's mode under :func:`measurement_mode` (BatchNorm training, the rest in
    eval) for the in-place evaluation to set, or None where a module overrides ``train()`` and must
    be switched through it (by :func:`measurement_mode`)."""
    modes = []
    for m in model.modules():
        if type(m).train is not nn.Module.train:
            return None
        modes.append((m, isinstance(m, nn.modules.batchnorm._BatchNorm)))
    return modes


def channels_last_pays(model: nn.Module, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the model has 2-D convolutions and this is where channels-last is measured
    faster: float32 on the CPU with oneDNN, where the whole gradient of LeNet (28×28), the
    small CNN and ResNet-20 ran 1.15–1.9× faster than NCHW (benchmarks/gradient.py, issue 15).
    CUDA and float64 keep NCHW until measured."""
    return (
        device.type == "cpu"
        and dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and bool(_conv_weight_names(model))
    )


def _conv_weight_names(model: nn.Module) -> set[str]:
    """Names of the 4-D weights of the model's 2-D convolutions."""
    convs = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d) and m.weight is not None
    }
    return {n for n, p in model.named_parameters() if id(p) in convs and p.ndim == 4}


def _channels_last_copy(t: torch.Tensor) -> torch.Tensor:
    """A channels-last copy (differentiable). ``contiguous(memory_format=...)`` would keep the
    NCHW strides of a one-input-channel weight (both layouts hold its values in the same
    order), and oneDNN, reading the strides, would then run that network NCHW."""
    return torch.empty_like(t, memory_format=torch.channels_last).copy_(t)


def current_params(model: nn.Module, dtype: torch.dtype | None = None) -> Params:
    """A detached copy of the model's parameters (optionally cast), in model order."""
    return {n: p.detach().to(dtype or p.dtype, copy=True) for n, p in model.named_parameters()}
