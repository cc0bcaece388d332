"""Low-bit weights with a straight-through estimator: fixed point, binary, ternary.

The optimizer keeps float32 *latent* weights w; the forward pass uses q(w), and the gradient
with respect to q(w) is passed straight through to w (REFERENCE §2). ``forward_params`` returns
``q + (w − w.detach())``: its value is q *exactly* (w − w is exactly 0 for finite w, and q + 0 is
q), and its gradient with respect to w is the identity. The more common ``w + (q − w).detach()``
is q only up to a rounding error, which would make the training forward and the LCA measurement
see slightly different weights.

``effective`` returns q(w) detached: LCA is measured on the weights the forward pass really uses,
along the straight path between consecutive *effective* weights, so Σ_i A = ΔL still holds up to
the integrator's error (only quantized *activations* would break that).

Stochastic rounding, floor(x) + Bernoulli(frac(x)), is written as floor(x + u) with u ~ U[0, 1).
LCA needs ``effective`` to be a deterministic function of the latent weights between two steps,
so u is drawn once per step (from a seeded generator, in ``after_step`` of the previous step, or
in ``setup`` for the first one) and both ``forward_params`` and ``effective`` use that same u.
The weights a step's segment ends on are therefore exactly the weights the next forward uses.
A consequence worth knowing: a weight that does not move (frozen, skipped) can still change its
rounding from step to step, and that change is allocated like any other weight change.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from . import register
from .base import Context, Declarations, Option, Technique


def _conv_or_linear(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear | nn.modules.conv._ConvNd)
    ]


def _full(mod_name: str, leaf: str) -> str:
    return f"{mod_name}.{leaf}" if mod_name else leaf


class _Quantizer(Technique):
    """Shared machinery: which tensors, STE forward, effective weights, what is recorded.

    A subclass defines ``codes(name, w) -> (integer-valued codes, per-tensor scale)`` so that
    q(w) = codes · scale, and ``bits``/``levels`` for the record.
    """

    bits: float = 32.0
    levels: int = 0  # codes lie in [-levels, levels]
    values: int = 0  # how many distinct values a quantized tensor can take

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self.targets: list[str] = []
        self._order: list[str] = []  # every parameter, in model order (/layers/names)
        self._numel = 0
        self._total = 0
        self._codes_prev: dict[str, torch.Tensor] = {}
        self._changed: list[float] = []
        self._scales: dict[str, float] = {}

    # -- to be defined by subclasses -------------------------------------------------------------
    def select(self, model: nn.Module) -> list[str]:
        raise NotImplementedError

    def codes(self, name: str, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------------
    def quantized(self, name: str, w: torch.Tensor) -> torch.Tensor:
        """q(w) for the tensor ``name``, detached."""
        with torch.no_grad():
            c, scale = self.codes(name, w.detach())
            return c * scale

    def declare(self, ctx: Context) -> Declarations:
        n = len(self._order)
        return Declarations(
            series={"scale": ("f8", (n,)), "changed": ("f8", ())},
            arrays={"bits": ("f8", (n,), math.nan)},
        )

    def setup(self, ctx: Context) -> None:
        params = ctx.params()
        self._order = list(params)
        self.targets = [n for n in self.select(ctx.model) if n in params]
        self._numel = sum(params[n].numel() for n in self.targets)
        self._total = sum(p.numel() for p in params.values())
        self._codes_prev = self._current_codes(params)

    def forward_params(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(params)
        for n in self.targets:
            if n in out:
                w = out[n]
                out[n] = self.quantized(n, w) + (w - w.detach())  # value q exactly, gradient → w
        return out

    def effective(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {k: v.detach() for k, v in params.items()}
        for n in self.targets:
            if n in out:
                out[n] = self.quantized(n, out[n])
        return out

    def begin(self, ctx: Context) -> None:
        """The run file is open: write the per-tensor bits once."""
        targets = set(self.targets)
        ctx.set_array(self, "bits", [self.bits if n in targets else math.nan for n in self._order])

    def after_step(self, ctx: Context, row: dict[str, object]) -> None:
        params = ctx.params()
        now = self._current_codes(params)
        changed = sum(int((now[n] != self._codes_prev[n]).sum()) for n in self.targets)
        frac = changed / self._numel if self._numel else 0.0
        self._changed.append(frac)
        self._codes_prev = now
        row[self.path("scale")] = [self._scales.get(n, math.nan) for n in self._order]
        row[self.path("changed")] = frac

    def summary(self) -> dict[str, Any]:
        quantized_bits = self.bits * self._numel + 32.0 * (self._total - self._numel)
        out: dict[str, Any] = {
            "bits": self.bits,
            "values": self.values,
            "tensors_quantized": len(self.targets),
            "params_quantized": self._numel,
            "fraction_params_quantized": self._numel / self._total if self._total else 0.0,
            # Storage of all parameters relative to float32 (the non-quantized ones stay 32-bit).
            "compression": 32.0 * self._total / quantized_bits if quantized_bits else 1.0,
            "mean_fraction_changed": (
                sum(self._changed) / len(self._changed) if self._changed else 0.0
            ),
        }
        for n in self.targets:
            out[f"scale[{n}]"] = self._scales.get(n, math.nan)
        return out

    def _current_codes(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Codes of every target now (and the per-tensor scales, for the record)."""
        out = {}
        with torch.no_grad():
            for n in self.targets:
                c, scale = self.codes(n, params[n].detach())
                out[n] = c.to(torch.int8 if self.levels < 128 else torch.int32)
                self._scales[n] = float(scale)
        return out


@register
class FixedPoint(_Quantizer):
    """Symmetric per-tensor fixed point with B bits (nearest or stochastic rounding)."""

    name = "quantize"
    roles = ("weight-format",)
    description = (
        "Fixed-point weights: Linear/Conv weights rounded to B-bit symmetric per-tensor grids in "
        "the forward pass, trained through a straight-through estimator."
    )
    options: dict[str, Option] = {
        "bits": Option(8, "bits per weight, sign included", int, minimum=2, maximum=16),
        "rounding": Option(
            "nearest",
            "nearest or stochastic (floor(x) + Bernoulli(frac(x)))",
            str,
            choices=("nearest", "stochastic"),
        ),
        "scale": Option(
            "pow2",
            "grid step: pow2 (a power of two covering max|w|, true fixed "
            "point) or max (max|w| / (2^(B-1) - 1))",
            str,
            choices=("pow2", "max"),
        ),
        "biases": Option(False, "quantize Linear/Conv biases too", bool),
        "seed": Option(0, "seed of the stochastic-rounding noise", int, minimum=0),
    }

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self.bits = float(self.opts["bits"])
        self.levels = 2 ** (self.opts["bits"] - 1) - 1  # codes lie in [-levels, levels]
        self.values = 2 * self.levels + 1
        self._noise: dict[str, torch.Tensor] = {}
        self._gen: torch.Generator | None = None

    def select(self, model: nn.Module) -> list[str]:
        out = []
        for mod_name, m in _conv_or_linear(model):
            out.append(_full(mod_name, "weight"))
            if self.opts["biases"] and m.bias is not None:
                out.append(_full(mod_name, "bias"))
        return out

    def setup(self, ctx: Context) -> None:
        if self.opts["rounding"] == "stochastic":
            self._gen = torch.Generator().manual_seed(self.opts["seed"])
            params = ctx.params()
            self.targets = [n for n in self.select(ctx.model) if n in params]
            self._draw(params)
        super().setup(ctx)

    def step_size(self, w: torch.Tensor) -> torch.Tensor:
        """The grid step of tensor ``w``: every q(w) is an integer multiple of it."""
        m = w.abs().max().to(torch.float32)
        m = torch.where(m > 0, m, torch.ones_like(m))  # an all-zero tensor: any step will do
        if self.opts["scale"] == "max":
            return m / self.levels
        step = torch.exp2(torch.ceil(torch.log2(m / self.levels)))
        return torch.where(m / step > self.levels, step * 2, step)  # guard log2 round-off

    def codes(self, name: str, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        step = self.step_size(w).to(w.dtype)
        x = w / step
        if self._gen is not None and name in self._noise:
            c = torch.floor(x + self._noise[name])
        else:
            c = torch.round(x)
        return c.clamp_(-self.levels, self.levels), step

    def after_step(self, ctx: Context, row: dict[str, object]) -> None:
        if self._gen is not None:
            self._draw(ctx.params())  # the next step's noise, before the tracker's end snapshot
        super().after_step(ctx, row)

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["rounding"] = self.opts["rounding"]
        return out

    def _draw(self, params: dict[str, torch.Tensor]) -> None:
        assert self._gen is not None
        for n in self.targets:
            p = params[n]
            self._noise[n] = torch.rand(p.shape, generator=self._gen).to(p.device, p.dtype)


def _first_weight(model: nn.Module) -> str | None:
    layers = _conv_or_linear(model)
    return _full(layers[0][0], "weight") if layers else None


@register
class Binary(_Quantizer):
    """BNN weights: sign(w)·α with a straight-through estimator, latent weights in [−1, 1]."""

    roles = ("weight-format",)
    name = "binary"
    description = (
        "Binary weights (BNN): each Linear/Conv weight is ±alpha in the forward pass, trained "
        "through a straight-through estimator on latent weights clipped to [-1, 1]."
    )
    options: dict[str, Option] = {
        "alpha": Option(
            "mean",
            "magnitude: mean (alpha = mean|w| per tensor, XNOR-Net style) or one (plain sign)",
            str,
            choices=("mean", "one"),
        ),
        "keep_first": Option(True, "leave the first layer's weights real-valued", bool),
    }
    bits = 1.0
    levels = 1
    values = 2

    def select(self, model: nn.Module) -> list[str]:
        first = _first_weight(model) if self.opts["keep_first"] else None
        return [n for n in (_full(m, "weight") for m, _ in _conv_or_linear(model)) if n != first]

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        self._clip(ctx)  # before θ_0 is recorded, so the clip is not a weight move of step 0
        self._codes_prev = self._current_codes(ctx.params())

    def codes(self, name: str, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = torch.where(w >= 0, 1.0, -1.0).to(w.dtype)  # sign, with sign(0) = +1: two values
        alpha = w.abs().mean() if self.opts["alpha"] == "mean" else torch.ones((), dtype=w.dtype)
        return c, alpha.to(w.dtype)

    def after_step(self, ctx: Context, row: dict[str, object]) -> None:
        self._clip(ctx)
        super().after_step(ctx, row)

    def _clip(self, ctx: Context) -> None:
        params = ctx.params()
        with torch.no_grad():
            for n in self.targets:
                params[n].clamp_(-1.0, 1.0)


@register
class Ternary(_Quantizer):
    """Ternary weights α·sign(w)·[|w| > 0.7·mean|w|] with a straight-through estimator."""

    roles = ("weight-format",)

    name = "ternary"
    description = (
        "Ternary weights: each Linear/Conv weight is -alpha, 0 or +alpha (threshold "
        "0.7·mean|w|) in the forward pass, trained through a straight-through estimator."
    )
    options: dict[str, Option] = {
        "threshold": Option(
            0.7, "weights with |w| <= threshold·mean|w| become 0", float, minimum=0.0, maximum=10.0
        ),
        "keep_first": Option(True, "leave the first layer's weights real-valued", bool),
    }
    bits = 2.0  # three levels need two bits of storage (log2 3 ≈ 1.58 of information)
    levels = 1
    values = 3

    def select(self, model: nn.Module) -> list[str]:
        first = _first_weight(model) if self.opts["keep_first"] else None
        return [n for n in (_full(m, "weight") for m, _ in _conv_or_linear(model)) if n != first]

    def codes(self, name: str, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = w.abs()
        keep = a > self.opts["threshold"] * a.mean()
        c = torch.sign(w) * keep
        alpha = (a * keep).sum() / keep.sum().clamp(min=1)  # mean |w| over the kept weights
        return c.to(w.dtype), alpha.to(w.dtype)
