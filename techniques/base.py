"""The one small interface every efficiency technique plugs into the training loop through.

Like ``torch.nn.utils.prune``, a technique is a small object with clear hooks. The loop in
``lca/train.py`` calls them in a fixed order and knows nothing else about any technique; a
technique knows nothing of the loop beyond the ``Context`` below. Everything a technique may do
is in this file: subclass ``Technique``, override the hooks you need (every default is a no-op),
decorate the class with ``techniques.register`` and add its module to ``techniques._MODULES``.

Hooks, in the order the loop calls them (``ctx.step`` = optimizer steps completed so far):

Once, before training
    setup(ctx)                       after the model and optimizer exist: choose layers, build
                                     masks; raise TechniqueError (one sentence) for options the
                                     model cannot satisfy
    declare(ctx) -> Declarations     after ``setup``, before the run file exists: every series,
                                     event table and array the technique will write (HDF5 in SWMR
                                     mode cannot create datasets once a run is live)
    begin(ctx)                       the run file is open and L(θ_0) is measured, before the first
                                     step: write fixed arrays (``ctx.set_array``) known up front

Every step, in this order
    wants_intervention(ctx) -> bool  a question, answered without changing anything (the loop may
                                     ask it any number of times); if True the loop calls
    intervene(ctx, row)              inside ``tracker.intervention(name)``: a weight move outside
                                     the optimizer (a prune) becomes its own LCA segment; ``row``
                                     takes this segment's values of the declared series
    after_intervention(ctx, measured)  right after that segment is measured (``measured`` is its
                                     ``MeasuredSegment``, also ``ctx.last_segment``): record what
                                     the intervention cost
    before_forward(ctx)              every technique, after the step's interventions, before the
                                     minibatch, learning rate and forward pass: per-step state
                                     changes (freeze layers from a step on, accuracy checks,
                                     ``ctx.lr_factor``); not part of the step's measured time
    autocast(ctx)                    a context manager around the forward pass (mixed precision)
    forward_params(params)           the weights the training forward uses (STE quantizers)
    loss_term(ctx, params)           a regularizer added to the training loss
    backward(ctx, loss) -> bool      True if it ran the backward itself (loss scaling)
    before_step(ctx)                 gradients exist: mask them or drop them (grad = None)
    optimizer_step(ctx) -> bool      True if it stepped the optimizer itself (grad scaler)
    after_step(ctx, row)             inside ``tracker.step()``, after the optimizer moved the
                                     weights: re-apply masks, clip; fill ``row`` (this step's
                                     values of the declared series)

Any time
    effective(params)                the weights the forward pass uses, detached: what LCA is
                                     measured on (defaults to ``forward_params`` detached); the
                                     tracker calls it at every segment's end, evaluation too

Once, at the end (also after a stop or a NaN loss; not when an exception ends the run)
    summary() -> dict                what it did and saved, as JSON-able values, for the run
                                     file and the app

Compose or refuse: ``techniques.validate_all`` (run by ``RunConfig`` and the loop before
anything trains) refuses, with one sentence naming both, any two techniques that share a role
(class attribute ``roles``, e.g. ``("weight-format",)``; the roles are ``techniques.ROLES``),
that name each other in ``conflicts`` (``{"other-name": "why, as a clause"}``), or that both
override ``backward`` or ``optimizer_step`` (only the first one's answer would count).

What a technique may read and write, all through ``Context``: the model, optimizer, loss, data,
step and current minibatch (``ctx.batch``); ``ctx.params()``; the LCA measured so far,
read-only (``ctx.cumulative_lca``, ``ctx.last_segment``, ``ctx.segments_measured``);
``ctx.evaluate()``; ``ctx.lr_factor``; and the run file through ``ctx.event`` and
``ctx.set_array`` only. Where a technique acted is recorded under ``/techniques/<name>/``.

Activation hooks (quantized activations, gradient quantizers, loss-scaling boundaries) are
module hooks a technique registers in ``setup``; they run in *every* forward of the model,
including LCA's. LCA is measured in float32 on ``effective(params)`` alone, so such a hook must
step aside while LCA measures: it returns its input unchanged when ``is_measuring()`` is True.
The loop wraps the measurer's one model call in ``while_measuring`` (one line in
``lca/train.py``); ``real_forward()`` lets a technique evaluate the real (hooked) model even
from inside a measurement, e.g. to record the loss its discretized forward really has.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from lca.spec import Spec

_STATE = threading.local()  # per thread: the app may train in a worker thread


def is_measuring() -> bool:
    """True while LCA measures the loss (activation hooks must then return their input)."""
    return getattr(_STATE, "measuring", 0) > 0 and getattr(_STATE, "real", 0) == 0


@contextmanager
def measuring() -> Iterator[None]:
    """Mark the forward passes inside as LCA measurements."""
    _STATE.measuring = getattr(_STATE, "measuring", 0) + 1
    try:
        yield
    finally:
        _STATE.measuring -= 1


@contextmanager
def real_forward() -> Iterator[None]:
    """Run the hooked (discretized) forward even inside a measurement."""
    _STATE.real = getattr(_STATE, "real", 0) + 1
    try:
        yield
    finally:
        _STATE.real -= 1


def while_measuring(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (the measurer's model call) run under ``measuring()``."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with measuring():
            return fn(*args, **kwargs)

    return wrapped


class TechniqueError(ValueError):
    """A technique name or option is not allowed; one sentence with the allowed values."""


@dataclass(frozen=True)
class Option(Spec):
    """One knob of a technique: default, one-line help, type, and the allowed range.

    A ``lca.spec.Spec`` (the one way LCA Lab describes and checks a setting) whose values may
    arrive as CLI text (``prune-magnitude:sparsity=0.5``): "0.5" becomes 0.5, "a+b" a list.
    """

    from_text: bool = True

    def parse(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """``Spec.parse(value, name)`` raising TechniqueError; the form
        ``parse(technique, key, value)`` (the sentence then names the technique's option) is
        accepted too, as techniques and their tests call it so."""
        if len(args) == 3 and not kwargs and not isinstance(args[2], type):
            technique, key, value = args
            where = f"option {key!r} of technique {technique!r}"
            return Spec.parse(self, value, where, TechniqueError)
        kwargs.setdefault("error", TechniqueError)
        return Spec.parse(self, *args, **kwargs)


@dataclass
class Declarations:
    """What a technique will write, relative to ``/techniques/<name>/``."""

    series: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)
    events: dict[str, tuple[str, ...]] = field(default_factory=dict)
    arrays: dict[str, tuple[str, tuple[int, ...], float]] = field(default_factory=dict)


@runtime_checkable
class MeasuredSegment(Protocol):
    """One measured LCA segment, read-only (``lca.allocate.StepRecord`` is one)."""

    @property
    def index(self) -> int: ...  # row in the run: segments are numbered 0, 1, 2, … in time order

    @property
    def kind(self) -> int: ...  # 0: an optimizer step, 1: an intervention

    @property
    def train_step(self) -> int: ...  # optimizer steps completed when the segment ended

    @property
    def label(self) -> str: ...  # the intervening technique's name ("" for a step)

    @property
    def loss_start(self) -> float: ...  # measurement-set loss at the segment's start and end

    @property
    def loss_end(self) -> float: ...

    @property
    def per_param(self) -> Mapping[str, torch.Tensor]: ...  # name -> A, the parameter's shape

    @property
    def total(self) -> float: ...  # ΣA over all parameters

    @property
    def error(self) -> float: ...  # (loss_end − loss_start) − total: what was not allocated


@runtime_checkable
class LCAResults(Protocol):
    """What a technique may read of the tracker (``lca.allocate.Tracker`` is one)."""

    @property
    def cumulative(self) -> Mapping[str, torch.Tensor]: ...  # name -> ΣA over all segments

    @property
    def last(self) -> MeasuredSegment | None: ...  # the latest segment, None before the first


@runtime_checkable
class RunFileWriter(Protocol):
    """Where ``Context.event`` and ``Context.set_array`` write (``lca.store.Writer`` is one)."""

    def add_event(self, path: str, row: Sequence[float]) -> None: ...

    def set_array(self, path: str, value: Any) -> None: ...


@dataclass
class Context:
    """What the loop shares with techniques. Techniques never reach past it into the loop.

    The loop fills ``tracker`` and ``writer`` after ``setup`` and ``declare`` (the run file is
    made from the declarations); read the LCA through the properties below, which are empty (or
    None) when no tracker measures the run (a notebook driving the hooks by hand).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    device: torch.device
    total_steps: int
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    step: int = 0  # optimizer steps completed so far
    tracker: LCAResults | None = None  # the LCA measured so far: read it through the properties
    writer: RunFileWriter | None = None  # the run file, or None: write through event/set_array
    lr_factor: float = 1.0  # multiplies the scheduled learning rate (WUS+LR lowers it)
    batch: tuple[torch.Tensor, torch.Tensor] | None = None  # the current minibatch
    accuracy: list[tuple[int, float, float]] = field(default_factory=list)  # (step, train, test)
    evaluate: Callable[[], tuple[float, float]] | None = None  # (train acc, test acc) now

    def params(self) -> dict[str, nn.Parameter]:
        return dict(self.model.named_parameters())

    @property
    def cumulative_lca(self) -> Mapping[str, torch.Tensor]:
        """Each parameter's ΣA over every segment measured so far (its shape); empty without a
        tracker or before the first segment. Read-only: the tensors are the tracker's own."""
        return self.tracker.cumulative if self.tracker is not None else {}

    @property
    def last_segment(self) -> MeasuredSegment | None:
        """The latest measured segment (a step or an intervention), or None."""
        return self.tracker.last if self.tracker is not None else None

    @property
    def segments_measured(self) -> int:
        """Segments measured so far: the index the next segment (e.g. an intervention) gets."""
        last = self.last_segment
        return last.index + 1 if last is not None else 0

    def event(self, technique: Technique, table: str, row: list[float]) -> None:
        """Append a row to the technique's declared event table ``table``."""
        if self.writer is not None:
            self.writer.add_event(technique.path(table), row)

    def set_array(self, technique: Technique, name: str, value: Any) -> None:
        """Overwrite the technique's declared fixed array ``name``."""
        if self.writer is not None:
            self.writer.set_array(technique.path(name), value)


class Technique:
    """Base class: every hook is a no-op, so a technique overrides only what it needs."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options: ClassVar[dict[str, Option]] = {}
    reconstructed: ClassVar[bool] = False  # the paper's exact algorithm is not public
    # Compose or refuse (checked by ``techniques.validate_all`` before training): two
    # techniques sharing a role (``techniques.ROLES``: "weight-format", "backward", ...) are
    # refused, and so is a pair where either names the other in ``conflicts`` (name -> why).
    roles: ClassVar[tuple[str, ...]] = ()
    conflicts: ClassVar[dict[str, str]] = {}

    def __init__(self, **values: Any) -> None:
        unknown = sorted(set(values) - set(self.options))
        if unknown:
            allowed = ", ".join(sorted(self.options)) or "none"
            raise TechniqueError(
                f"Technique {self.name!r} has no option {unknown[0]!r}; allowed options: {allowed}."
            )
        self.opts: dict[str, Any] = {
            k: (o.parse(self.name, k, values[k]) if k in values else o.default)
            for k, o in self.options.items()
        }

    def path(self, leaf: str) -> str:
        return f"techniques/{self.name}/{leaf}"

    # -- declarations --------------------------------------------------------------------------
    def declare(self, ctx: Context) -> Declarations:
        return Declarations()

    # -- hooks -----------------------------------------------------------------------------------
    def setup(self, ctx: Context) -> None:
        pass

    def begin(self, ctx: Context) -> None:
        pass

    def wants_intervention(self, ctx: Context) -> bool:
        return False

    def intervene(self, ctx: Context, row: dict[str, object]) -> None:
        pass

    def after_intervention(self, ctx: Context, measured: MeasuredSegment) -> None:
        pass

    def before_forward(self, ctx: Context) -> None:
        pass

    def forward_params(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return params

    def effective(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {n: t.detach() for n, t in self.forward_params(params).items()}

    def autocast(self, ctx: Context) -> AbstractContextManager | None:
        return None

    def loss_term(self, ctx: Context, params: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return None

    def backward(self, ctx: Context, loss: torch.Tensor) -> bool:
        return False

    def before_step(self, ctx: Context) -> None:
        pass

    def optimizer_step(self, ctx: Context) -> bool:
        return False

    def after_step(self, ctx: Context, row: dict[str, object]) -> None:
        pass

    def summary(self) -> dict[str, Any]:
        return {}

    # -- helpers shared by techniques ------------------------------------------------------------
    @staticmethod
    def weight_names(model: nn.Module) -> list[str]:
        """Names of the weights of Linear and Conv layers (what skipping/pruning act on)."""
        out = []
        for mod_name, m in model.named_modules():
            if isinstance(m, nn.Linear | nn.modules.conv._ConvNd):
                out.append(f"{mod_name}.weight" if mod_name else "weight")
        return out
