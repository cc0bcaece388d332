"""The one small interface every efficiency technique plugs into the training loop through.

Like ``torch.nn.utils.prune``, a technique is a small object with clear hooks; the loop in
``lca/train.py`` calls them in a fixed order and knows nothing else about any technique:

    setup(ctx)                       once, after the model and optimizer exist
    wants_intervention(ctx) -> bool  before each step; if True the loop calls
    intervene(ctx, row)              inside ``tracker.intervention(name)``: a weight move outside
                                     the optimizer (a prune) becomes its own LCA segment
    forward_params(params)           the weights the training forward uses (STE quantizers)
    effective(params)                the same weights, detached: what LCA is measured on
    autocast(ctx)                    a context for the forward pass (mixed precision)
    loss_term(ctx, params)           a regularizer added to the training loss
    backward(ctx, loss) -> bool      True if it ran the backward itself (loss scaling)
    before_step(ctx)                 gradients exist: mask them or drop them (grad = None)
    optimizer_step(ctx) -> bool      True if it stepped the optimizer itself (grad scaler)
    after_step(ctx, row)             weights moved: re-apply masks, clip; fill row[series]
    summary() -> dict                what it did and saved, for the run file and the app

Where a technique acted is recorded under ``/techniques/<name>/`` in the run file: it declares
its series (one value per segment), event tables and fixed arrays up front (``declare``),
because HDF5 in SWMR mode cannot create datasets once a run is live.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from lca.spec import Spec


class TechniqueError(ValueError):
    """A technique name or option is not allowed; one sentence with the allowed values."""


@dataclass(frozen=True)
class Option(Spec):
    """One knob of a technique: default, one-line help, type, and the allowed range.

    A ``lca.spec.Spec`` (the one way LCA Lab describes and checks a setting) whose values may
    arrive as CLI text (``prune-magnitude:sparsity=0.5``): "0.5" becomes 0.5, "a+b" a list.
    """

    from_text: bool = True


@dataclass
class Declarations:
    """What a technique will write, relative to ``/techniques/<name>/``."""

    series: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)
    events: dict[str, tuple[str, ...]] = field(default_factory=dict)
    arrays: dict[str, tuple[str, tuple[int, ...], float]] = field(default_factory=dict)


@dataclass
class Context:
    """What the loop shares with techniques. Techniques never reach past it into the loop."""

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
    tracker: Any = None  # lca.Tracker: ``tracker.cumulative`` holds each parameter's ΣA so far
    writer: Any = None  # lca.Writer or None
    scheduler: Any = None
    lr_factor: float = 1.0  # multiplies the scheduled learning rate (WUS+LR lowers it)
    batch: tuple[torch.Tensor, torch.Tensor] | None = None  # the current minibatch
    accuracy: list[tuple[int, float, float]] = field(default_factory=list)  # (step, train, test)
    evaluate: Callable[[], tuple[float, float]] | None = None  # (train acc, test acc) now

    def params(self) -> dict[str, nn.Parameter]:
        return dict(self.model.named_parameters())

    def event(self, technique: Technique, table: str, row: list[float]) -> None:
        if self.writer is not None:
            self.writer.add_event(technique.path(table), row)

    def set_array(self, technique: Technique, name: str, value) -> None:
        if self.writer is not None:
            self.writer.set_array(technique.path(name), value)


class Technique:
    """Base class: every hook is a no-op, so a technique overrides only what it needs."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options: ClassVar[dict[str, Option]] = {}
    reconstructed: ClassVar[bool] = False  # the paper's exact algorithm is not public

    def __init__(self, **values: Any) -> None:
        unknown = sorted(set(values) - set(self.options))
        if unknown:
            allowed = ", ".join(sorted(self.options)) or "none"
            raise TechniqueError(
                f"Technique {self.name!r} has no option {unknown[0]!r}; allowed options: {allowed}."
            )
        self.opts: dict[str, Any] = {
            k: (
                o.parse(values[k], f"option {k!r} of technique {self.name!r}", TechniqueError)
                if k in values
                else o.default
            )
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

    def wants_intervention(self, ctx: Context) -> bool:
        return False

    def intervene(self, ctx: Context, row: dict[str, object]) -> None:
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
