"""Binarized neural networks (Hubara, Courbariaux, Soudry, El-Yaniv, Bengio 2016), after the
reference code ``itayhubara/BinaryNet.pytorch`` (``binarized_modules.py``, ``main_mnist.py``).

* Weights: every Linear/Conv weight is sign(w) (times mean|w| with ``alpha = mean``) in the
  forward pass; the gradient passes straight through to the latent real weight, which is clipped
  to [−1, 1] after every step (and before the first). Biases stay real, as in the reference.
* Activations: the input of every Linear/Conv layer except the first is sign(x) (the first
  layer's input, the data, stays real). ``Binarize.backward`` is the identity; the "cancel the
  gradient where |x| > 1" of the paper comes from the Hardtanh before it, so ``setup`` replaces
  the model's activation modules (ReLU, GELU, Tanh, Sigmoid) by ``nn.Hardtanh``.
* Architecture pattern: BinarizeLinear → BatchNorm → Hardtanh, the last layer followed by
  BatchNorm(affine=False). With ``batchnorm`` on, every layer's output is batch-normalized
  without affine parameters or running statistics (parameter-free, so LCA's parameter names do
  not change; the reference's hidden BatchNorms have a learned affine).

**LCA on a BNN.** With sign activations the loss is piecewise constant in the weights: its
gradient is 0 almost everywhere and Σ A could not follow ΔL. LCA is therefore measured on the
straight-through *surrogate*: binary weights, Hardtanh activations with the sign left out (the
function whose gradient the STE uses). The binary network's own loss on the measurement set is
recorded per step (``loss_binary``), and ``residual`` = ΔL_binary − ΔL_surrogate; the gap between
the binary network's loss change and the allocated Σ A is that residual plus the step's
integration error (``error`` in the run file).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import register
from .base import Context, Declarations, Option, Technique, real_forward
from .lowbit import Hooks, full_name, layers, quant

ACTIVATIONS = (nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.SiLU)


def binarize(x: torch.Tensor) -> torch.Tensor:
    """sign(x) with sign(0) = +1: exactly two values."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


@register
class BNN(Technique):
    """Binary weights and activations, Hardtanh + sign, latent weights clipped to [−1, 1]."""

    name = "bnn"
    roles = ("weight-format",)
    description = (
        "Binarized neural network (Hubara/Courbariaux): binary weights and activations (the "
        "first layer's input real), Hardtanh before sign, latent weights clipped to [-1, 1]; "
        "LCA is measured on the straight-through surrogate and the discretization residual "
        "is recorded."
    )
    options: dict[str, Option] = {
        "alpha": Option(
            "one",
            "weight magnitude: one (the paper's ±1) or mean (mean|w| per tensor)",
            str,
            choices=("one", "mean"),
        ),
        "batchnorm": Option(
            True,
            "batch-normalize every layer's output (no affine, batch "
            "statistics), the reference architecture's BatchNorm",
            bool,
        ),
        "residual": Option(
            True,
            "record the binary network's loss and the discretization "
            "residual each step (two extra forward passes of the measurement "
            "set)",
            bool,
        ),
    }

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self.targets: list[str] = []
        self._layers: list[tuple[str, nn.Module]] = []
        self._hooks = Hooks()
        self._bn_handles: list = []
        self.swapped = 0
        self._prev: tuple[float, float] | None = None  # (L_binary, L_surrogate) at θ_t
        self._residuals: list[float] = []
        self._flips: list[float] = []
        self._signs: dict[str, torch.Tensor] = {}
        self._numel = 0
        self._total = 0

    def declare(self, ctx: Context) -> Declarations:
        return Declarations(
            series={"loss_binary": ("f8", ()), "residual": ("f8", ()), "flipped": ("f8", ())}
        )

    def setup(self, ctx: Context) -> None:
        model = ctx.model
        for parent in list(model.modules()):
            for child_name, child in list(parent.named_children()):
                if isinstance(child, ACTIVATIONS):
                    setattr(parent, child_name, nn.Hardtanh())
                    self.swapped += 1
        self._layers = layers(model)
        params = ctx.params()
        self.targets = [full_name(n, "weight") for n, _ in self._layers]
        self._numel = sum(params[n].numel() for n in self.targets)
        self._total = sum(p.numel() for p in params.values())
        for i, (_, m) in enumerate(self._layers):
            if i > 0:  # the first layer's input (the data) stays real
                self._hooks.input(m, lambda x: quant(x, binarize, None))
            if self.opts["batchnorm"]:
                self._bn_handles.append(m.register_forward_hook(_batchnorm))
        self._clip(params)  # before θ_0 is recorded
        self._signs = {n: params[n].detach() >= 0 for n in self.targets}

    # -- weights -------------------------------------------------------------------------------
    def quantized(self, w: torch.Tensor) -> torch.Tensor:
        q = binarize(w.detach())
        if self.opts["alpha"] == "mean":
            q = q * w.detach().abs().mean()
        return q

    def forward_params(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(params)
        for n in self.targets:
            if n in out:
                w = out[n]
                out[n] = self.quantized(w) + (w - w.detach())
        return out

    def effective(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {k: v.detach() for k, v in params.items()}
        for n in self.targets:
            if n in out:
                out[n] = self.quantized(out[n])
        return out

    def _clip(self, params: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n in self.targets:
                params[n].clamp_(-1.0, 1.0)

    # -- residual ------------------------------------------------------------------------------
    def _losses(self, ctx: Context) -> tuple[float, float]:
        """(binary network's loss, surrogate's loss) on the measurement set at θ now."""
        # The tracker's own measurement set and composed ``effective`` (reached past the
        # read-only Context properties: no property gives a loss at given weights yet).
        measurer = ctx.tracker.measurer  # type: ignore[union-attr]
        params = {n: p.detach() for n, p in ctx.model.named_parameters()}
        eff = getattr(ctx.tracker, "effective", None) or self.effective
        params = eff(params)
        with real_forward():
            binary = measurer.loss(params)
        return binary, measurer.loss(params)

    def before_forward(self, ctx: Context) -> None:
        if self._prev is None and self.opts["residual"] and hasattr(ctx.tracker, "measurer"):
            self._prev = self._losses(ctx)

    def after_step(self, ctx: Context, row: dict[str, object]) -> None:
        params = ctx.params()
        self._clip(params)
        signs = {n: params[n].detach() >= 0 for n in self.targets}
        flipped = sum(int((signs[n] != self._signs[n]).sum()) for n in self.targets)
        self._signs = signs
        frac = flipped / self._numel if self._numel else 0.0
        self._flips.append(frac)
        row[self.path("flipped")] = frac
        binary, residual = math.nan, math.nan
        if self.opts["residual"] and hasattr(ctx.tracker, "measurer") and self._prev is not None:
            binary, surrogate = self._losses(ctx)
            residual = (binary - self._prev[0]) - (surrogate - self._prev[1])
            self._prev = (binary, surrogate)
            self._residuals.append(residual)
        row[self.path("loss_binary")] = binary
        row[self.path("residual")] = residual

    def summary(self) -> dict[str, Any]:
        r = self._residuals
        w_bits = (
            (self._numel + 32 * (self._total - self._numel)) / self._total if self._total else 32.0
        )
        return {
            "lca_measured_on": "straight-through surrogate: binary weights, Hardtanh "
            "activations without sign",
            "bits": 1,
            "activation_bits": 1,
            "weight_bits_deployed": w_bits,
            "compression_vs_float32": 32.0 / w_bits,
            "note": "training keeps float32 latent weights (the paper's scheme); the 32x "
            "saving is for the deployed binary weights; simulated, no speed claimed",
            "activations_replaced_by_hardtanh": self.swapped,
            "mean_fraction_flipped": sum(self._flips) / len(self._flips) if self._flips else 0.0,
            "mean_abs_residual": sum(abs(v) for v in r) / len(r) if r else math.nan,
            "total_residual": sum(r) if r else math.nan,
        }


def _batchnorm(mod: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
    """BatchNorm(affine=False) with batch statistics, parameter- and buffer-free."""
    if out.dim() < 2 or out.shape[0] < 2:
        return out
    return F.batch_norm(out, None, None, training=True)
