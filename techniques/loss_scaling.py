"""Adaptive layer-wise loss scaling (Zhao, Vogel, Ahmed, Luk; arXiv 1910.12385), with the float16
backward simulated by casting (so it runs the same on CPU and CUDA).

The rules are the official Chainer code's defaults (``kumasento/gradient-scaling``,
``loss_scale_method="approx_range"``, SEED-TECHNIQUES §3.2). At every Linear/Conv layer the
error g_y arriving at its output is a float16 tensor carrying the scale S accumulated above it.
A forward hook on the layer's output inserts an autograd identity whose backward

1. casts g_y to float16 (the value a float16 backward would hold: this is where gradients
   *underflow*, i.e. become 0, counted in ``underflow``);
2. picks the layer's scale s from statistics of g_y and the layer's weight W:
   o_σ = √((σ_g² + μ_g²)(σ_W² + μ_W²))·√(n/2) (n = terms summed in Wᵀg_y, ReLU assumed),
   s = max(1, u_min / (erfinv(10⁻³)·√2·o_σ)) with u_min = 2⁻²⁴ (float16's smallest subnormal),
   s ≤ (65504/n) / (max|g|·max|W|) (no overflow), s ≤ 1024/S and s ≤ 16 (the code's bounds),
   rounded down to a power of two;
3. passes s·g_y on (float16), so the layer's input gradient and weight gradient carry S·s.

``before_step`` casts each weight and bias gradient to float16 and divides it by its layer's
S·s: a power of two, so the unscaled gradient is exact (the true gradient up to float16
rounding). A float16 overflow anywhere skips the step and halves the loss scale (GradScaler's
fallback). The forward pass stays float32.

For comparison the same gradients are checked against one global scale as
``torch.amp.GradScaler`` would hold it (start 2^16, halve on overflow, double after 2000 clean
steps), or a fixed one: ``underflow_global`` is the fraction of nonzero gradient values that
scale would flush to zero in float16. Layer scales are assigned in backward order, so models
whose layers form a chain (mlp, lenet, cnn-small) are what the method describes; residual
connections mix scales (the unscaling stays exact only along the chain).

LCA is measured in float32 without the boundary hooks; the scales change only the trajectory.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from . import register
from .base import Context, Declarations, Option, Technique
from .lowbit import Hooks, full_name, layers, quant

FP16_MAX = 65504.0
FP16_TINY = 2.0**-24  # smallest float16 subnormal
N_UF = 1e-3  # the code's n_uf_threshold


def to_fp16(x: torch.Tensor) -> torch.Tensor:
    """x rounded to float16 (returned in x's dtype): underflow to 0, overflow to inf."""
    return x.to(torch.float16).to(x.dtype)


def layer_scale(
    g: torch.Tensor, w: torch.Tensor, prev_scale: float, *, accum_bound: float, scale_bound: float
) -> float:
    """The code's ``approx_range`` scale for error g (carrying ``prev_scale``) at weight w."""
    n = w.shape[0] * (math.prod(w.shape[2:]) if w.dim() > 2 else 1)  # terms in Wᵀg
    gd, wd = g.detach().double(), w.detach().double()
    o_sigma = math.sqrt(
        float(gd.var(unbiased=False) + gd.mean() ** 2)
        * float(wd.var(unbiased=False) + wd.mean() ** 2)
    ) * math.sqrt(0.5 * n)
    erfinv = float(torch.erfinv(torch.tensor(N_UF, dtype=torch.float64)))
    s = FP16_TINY / (erfinv * math.sqrt(2) * o_sigma) if o_sigma > 0 else scale_bound
    s = max(s, 1.0)
    o_max = float(gd.abs().max()) * float(wd.abs().max())
    if o_max > 0:
        s = min(s, (FP16_MAX / n) / o_max)
    s = min(s, accum_bound / prev_scale, scale_bound)
    return 2.0 ** math.floor(math.log2(s)) if s > 0 else 1.0


@register
class AdaptiveLossScaling(Technique):
    """Zhao et al.: a power-of-two loss scale per layer from gradient and weight statistics."""

    name = "adaptive-loss-scaling"
    conflicts = {
        "fixed-point": "the per-layer scaled backward (torch.func) cannot run "
        "fixed-point's rounding autograd functions"
    }
    description = (
        "Adaptive layer-wise loss scaling (Zhao et al.): each layer's float16 error gets its "
        "own power-of-two scale from gradient and weight statistics, weight gradients unscaled "
        "exactly; float16 simulated by casting."
    )
    options: dict[str, Option] = {
        "loss_scale": Option(
            1.0,
            "scale of the loss before backward (a power of two)",
            float,
            minimum=2.0**-24,
            maximum=2.0**24,
        ),
        "scale_bound": Option(
            16.0,
            "largest scale one layer adds (the code's scale_upper_bound)",
            float,
            minimum=1.0,
            maximum=2.0**24,
        ),
        "accum_bound": Option(
            1024.0,
            "largest accumulated scale (the code's accum_upper_bound)",
            float,
            minimum=1.0,
            maximum=2.0**30,
        ),
        "global_scale": Option(
            0.0,
            "the single scale compared against: 0 = GradScaler's "
            "dynamic scale, else this fixed value",
            float,
            minimum=0.0,
        ),
    }

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self._layers: list[tuple[str, nn.Module]] = []
        self._order: list[str] = []
        self._hooks = Hooks()
        self.scales: dict[str, float] = {}  # layer -> S·s used by its weight gradient
        self._flowing = 1.0  # the scale of the gradient now flowing down
        self._loss_scale = self.opts["loss_scale"]
        self._global = self.opts["global_scale"] or 2.0**16
        self._clean = 0
        self._counts = self._zero()
        self._overflow = False
        self._skipped = False
        self._history: dict[str, list[float]] = {"underflow": [], "underflow_global": []}
        self._skips = 0

    @staticmethod
    def _zero() -> dict[str, int]:
        return {"nonzero": 0, "flushed": 0, "flushed_global": 0, "overflow_global": 0}

    def declare(self, ctx: Context) -> Declarations:
        n = len(ctx.params())
        return Declarations(
            series={
                "scale": ("f8", (n,)),
                "underflow": ("f8", ()),
                "underflow_global": ("f8", ()),
                "global_scale": ("f8", ()),
                "loss_scale": ("f8", ()),
                "skipped": ("i1", ()),
            }
        )

    def setup(self, ctx: Context) -> None:
        self._layers = layers(ctx.model)
        self._order = list(ctx.params())
        for name, m in self._layers:
            self._hooks.output(
                m,
                lambda mod, x, y, name=name: quant(
                    y, None, lambda g, mod=mod, name=name: self._boundary(name, mod, g)
                ),
            )

    # -- backward ------------------------------------------------------------------------------
    def _count(self, true: torch.Tensor, flowing: torch.Tensor) -> None:
        """Underflow of ``flowing`` (already float16) and of ``true`` at the global scale."""
        nz = true != 0
        glob = to_fp16(true * self._global)
        self._counts["nonzero"] += int(nz.sum())
        self._counts["flushed"] += int((nz & (flowing == 0)).sum())
        self._counts["flushed_global"] += int((nz & (glob == 0)).sum())
        self._counts["overflow_global"] += int(torch.isinf(glob).sum())

    def _boundary(self, name: str, mod: nn.Module, g: torch.Tensor) -> torch.Tensor:
        prev = self._flowing
        g16 = to_fp16(g)
        self._count(g / prev, g16)
        if not torch.isfinite(g16).all():
            self._overflow = True
            self.scales[name] = prev
            return g16
        s = layer_scale(
            g16,
            mod.weight,
            prev,
            accum_bound=self.opts["accum_bound"],
            scale_bound=self.opts["scale_bound"],
        )
        self._flowing = prev * s
        self.scales[name] = self._flowing
        out = to_fp16(g16 * s)
        if not torch.isfinite(out).all():
            self._overflow = True
        return out

    def backward(self, ctx: Context, loss: torch.Tensor) -> bool:
        self._flowing = self._loss_scale
        self.scales = {}
        (loss * self._loss_scale).backward()
        return True

    def before_step(self, ctx: Context) -> None:
        params = ctx.params()
        for name, _ in self._layers:
            scale = self.scales.get(name, self._loss_scale)
            for leaf in ("weight", "bias"):
                p = params.get(full_name(name, leaf))
                if p is None or p.grad is None:
                    continue
                g16 = to_fp16(p.grad)
                self._count(p.grad / scale, g16)
                if not torch.isfinite(g16).all():
                    self._overflow = True
                p.grad = g16 / scale  # a power of two: exact
        covered = {full_name(n, leaf) for n, _ in self._layers for leaf in ("weight", "bias")}
        for n, p in params.items():  # other parameters (norm layers) carry the loss scale
            if n not in covered and p.grad is not None:
                p.grad = p.grad / self._loss_scale

    def optimizer_step(self, ctx: Context) -> bool:
        self._skipped = self._overflow
        if self._overflow:  # GradScaler's fallback: skip the step, halve the loss scale
            self._loss_scale /= 2
            return True
        return False

    def after_step(self, ctx: Context, row: dict[str, object]) -> None:
        c = self._counts
        under = c["flushed"] / c["nonzero"] if c["nonzero"] else 0.0
        under_g = c["flushed_global"] / c["nonzero"] if c["nonzero"] else 0.0
        where = {
            full_name(n, leaf): self.scales.get(n, math.nan)
            for n, _ in self._layers
            for leaf in ("weight", "bias")
        }
        row[self.path("scale")] = [where.get(n, math.nan) for n in self._order]
        row[self.path("underflow")] = under
        row[self.path("underflow_global")] = under_g
        row[self.path("global_scale")] = self._global
        row[self.path("loss_scale")] = self._loss_scale
        row[self.path("skipped")] = int(self._skipped)
        self._history["underflow"].append(under)
        self._history["underflow_global"].append(under_g)
        self._skips += int(self._skipped)
        if not self.opts["global_scale"]:  # GradScaler's rule for the compared global scale
            if c["overflow_global"]:
                self._global /= 2
                self._clean = 0
            else:
                self._clean += 1
                if self._clean >= 2000:
                    self._global *= 2
                    self._clean = 0
        self._counts = self._zero()
        self._overflow = self._skipped = False

    def summary(self) -> dict[str, Any]:
        def mean(k: str) -> float:
            v = self._history[k]
            return sum(v) / len(v) if v else 0.0

        return {
            "simulated": True,
            "speed": "not claimed: float16 is simulated by casting in a float32 backward",
            "gradient_bits": 16,
            "activation_bits": 32,
            "mean_underflow": mean("underflow"),
            "mean_underflow_global": mean("underflow_global"),
            "final_layer_scales": dict(self.scales),
            "steps_skipped": self._skips,
            "final_loss_scale": self._loss_scale,
            "final_global_scale": self._global,
        }
