"""Freezing layers: from a chosen step on, the named layers stop training.

The LCA paper (Lan et al. 2019, Fig. 7) froze the last layer to see where learning moves to;
``layers = ["out"]`` reproduces that on every model of the zoo (the classifier is always ``out``).

Why ``requires_grad_(False)`` *and* ``grad = None``: turning off requires_grad saves the
gradient matmuls of the frozen weights; dropping any gradient that still appears (another
technique may turn requires_grad back on, a caller may have computed it) guarantees the optimizer
skips the parameter, so the frozen weights and their optimizer state stay bit-identical even with
momentum or weight decay, which a zeroed gradient would not.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from . import register
from .base import Context, Declarations, Option, Technique, TechniqueError


def layer_names(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters directly (``fc1``, ``out``, …), in model order."""
    return [
        name or "model"
        for name, module in model.named_modules()
        if any(True for _ in module.parameters(recurse=False))
    ]


def match_params(model: nn.Module, prefixes: list[str]) -> tuple[list[str], list[str]]:
    """Parameter names under each prefix (a module or parameter name) and the prefixes that
    matched nothing. A prefix matches on ``.`` boundaries, so ``fc1`` never matches ``fc10``."""
    names = [n for n, _ in model.named_parameters()]
    chosen: list[str] = []
    unknown: list[str] = []
    for prefix in prefixes:
        hits = [n for n in names if n == prefix or n.startswith(prefix + ".")]
        if not hits:
            unknown.append(prefix)
        chosen.extend(h for h in hits if h not in chosen)
    return [n for n in names if n in chosen], unknown


@register
class Freeze(Technique):
    """Stop training the named layers from step ``start`` on."""

    name = "freeze"
    description = (
        "Freeze layers: from a chosen step on the named layers stop training "
        "(the LCA paper froze the last layer, 'out')."
    )
    options: dict[str, Option] = {
        "layers": Option(
            ["out"], "layers (or parameter names) to freeze, joined by +, e.g. out+fc2", list
        ),
        "start": Option(0, "step from which the layers are frozen", int, minimum=0),
    }

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        if not self.opts["layers"]:
            raise TechniqueError(
                "Option 'layers' of technique 'freeze' is empty; name at least one layer, "
                "e.g. layers=out."
            )
        self._names: list[str] = []
        self._numel = 0
        self._total = 0
        self._active = False
        self._steps_frozen = 0

    def declare(self, ctx: Context) -> Declarations:
        return Declarations(series={"frozen": ("i8", ())})

    def setup(self, ctx: Context) -> None:
        self._names, unknown = match_params(ctx.model, self.opts["layers"])
        if unknown:
            raise TechniqueError(
                f"Technique 'freeze' cannot find layer {unknown[0]!r} in this model; its layers "
                f"are: {', '.join(layer_names(ctx.model))}."
            )
        params = ctx.params()
        if len(self._names) == len(params):
            raise TechniqueError(
                "Technique 'freeze' would freeze every parameter of this model, leaving nothing "
                "to train; name fewer layers."
            )
        self._numel = sum(params[n].numel() for n in self._names)
        self._total = sum(p.numel() for p in params.values())
        self._apply(ctx)

    def before_forward(self, ctx: Context) -> None:
        """Before each step's forward pass: freeze once ``start`` is reached."""
        self._apply(ctx)

    def before_step(self, ctx: Context) -> None:
        if self._active:
            params = ctx.params()
            for n in self._names:
                params[n].grad = None

    def after_step(self, ctx: Context, row: dict[str, object]) -> None:
        row[self.path("frozen")] = self._numel if self._active else 0
        self._steps_frozen += int(self._active)

    def summary(self) -> dict[str, Any]:
        return {
            "layers": "+".join(self.opts["layers"]),
            "start": self.opts["start"],
            "tensors_frozen": len(self._names),
            "params_frozen": self._numel,
            "fraction_params_frozen": self._numel / self._total if self._total else 0.0,
            "steps_frozen": self._steps_frozen,
        }

    def _apply(self, ctx: Context) -> None:
        if ctx.step < self.opts["start"]:
            return
        self._active = True
        params = ctx.params()
        for n in self._names:  # re-asserted every step in case another technique restored it
            if params[n].requires_grad:
                params[n].requires_grad_(False)
