"""Compressibility loss: strength · Σ_l ‖w_l‖₁ / ‖w_l‖₂ over Linear/Conv weights.

‖w‖₁/‖w‖₂ lies between 1 (one non-zero weight) and √n (all weights equal in size), and unlike
plain L1 it does not depend on the scale of w: it rewards concentrating a layer's magnitude in
few weights, which makes the layer easier to prune or quantize afterwards. It is added to the
*training* loss only; LCA is measured on the plain cross-entropy of the measurement set, so the
regularizer's own pull shows up as weights that move without lowering that loss.

The regularizer is evaluated on the weights the forward pass uses (the ``params`` handed to
``loss_term``); with a quantizer on, the straight-through estimator carries its gradient to the
latent weights.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from . import register
from .base import Context, Declarations, Option, Technique

EPS = 1e-12  # keeps ‖w‖₁/‖w‖₂ finite for an all-zero layer
SMALL = 1e-3  # "near zero" = |w| below this fraction of the layer's max|w|


def compressibility(params: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    """Σ over ``names`` of ‖w‖₁ / ‖w‖₂ (differentiable)."""
    total = None
    for n in names:
        w = params[n]
        ratio = w.abs().sum() / (w.norm(2) + EPS)
        total = ratio if total is None else total + ratio
    return total if total is not None else torch.zeros(())


@register
class Compressibility(Technique):
    """Add strength · Σ_l ‖w_l‖₁/‖w_l‖₂ to the training loss."""

    name = "compress"
    description = (
        "Compressibility loss: adds strength × Σ ‖w‖₁/‖w‖₂ over Linear/Conv weights to the "
        "training loss, pushing each layer towards few large weights."
    )
    options: dict[str, Option] = {
        "strength": Option(
            1e-3, "multiplier of the regularizer in the training loss", float, minimum=0.0
        ),
    }

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self._names: list[str] = []
        self._ctx: Context | None = None
        self._value = math.nan
        self._initial = math.nan

    def declare(self, ctx: Context) -> Declarations:
        return Declarations(series={"value": ("f8", ())})

    def setup(self, ctx: Context) -> None:
        self._ctx = ctx
        params = ctx.params()
        self._names = [n for n in self.weight_names(ctx.model) if n in params]
        with torch.no_grad():
            self._initial = float(compressibility(params, self._names))

    def loss_term(self, ctx: Context, params: dict[str, torch.Tensor]) -> torch.Tensor | None:
        value = compressibility(params, self._names)
        self._value = float(value.detach())
        return value * self.opts["strength"]

    def after_step(self, ctx: Context, row: dict[str, object]) -> None:
        row[self.path("value")] = self._value  # Σ‖w‖₁/‖w‖₂ at the start of this step, unscaled

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "strength": self.opts["strength"],
            "value_initial": self._initial,
            "value_final": math.nan,
            "fraction_near_zero": math.nan,
        }
        if self._ctx is None:
            return out
        params = self._ctx.params()
        with torch.no_grad():
            out["value_final"] = float(compressibility(params, self._names))
            small = total = 0
            for n in self._names:
                a = params[n].detach().abs()
                small += int((a < SMALL * a.max()).sum())
                total += a.numel()
        out["value_max"] = sum(math.sqrt(params[n].numel()) for n in self._names)
        out["fraction_near_zero"] = small / total if total else 0.0
        return out
