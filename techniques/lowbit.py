"""Low-precision number formats, simulated exactly in float64: the quantizers the low-bit
training techniques share, and the autograd plumbing that puts them on activations and
activation gradients.

Floating point ``(1, E, M)``: sign, E exponent bits, M mantissa bits, IEEE-style: exponent bias
2^(E−1) − 1, the top exponent code reserved (so 1-5-2 is exactly ``torch.float8_e5m2``, largest
value 57344), gradual underflow through subnormals (spacing 2^(emin − M) below 2^emin). Values
beyond the largest finite value *saturate* to it (hardware FP8 training clips rather than making
inf; ``torch``'s cast gives inf). Rounding is to nearest with ties to even, or stochastic:
floor(x/ulp + u)·ulp with u ~ U[0, 1), which is unbiased, E[q(x)] = x, inside the range.

Fixed point ``(B, DR)``: B bits, sign included, range [−DR, DR − LSB] with LSB = DR·2^(1−B)
(Sakr & Shanbhag's ``quantizeWeight``: min(1 − 2^(1−B), round(w·2^(B−1))·2^(1−B)), scaled).

Every quantizer computes in float64 (all grid values of these formats are exact there) and
returns the input's dtype; the grid values of every format here with E ≤ 8 and M ≤ 23 are
exact in float32 too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .base import TechniqueError, is_measuring

ROUNDINGS = ("nearest", "stochastic")


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format with ``exp`` exponent and ``man`` mantissa bits."""

    exp: int
    man: int

    @property
    def name(self) -> str:
        return f"1-{self.exp}-{self.man}"

    @property
    def bits(self) -> int:
        return 1 + self.exp + self.man

    @property
    def bias(self) -> int:
        return 2 ** (self.exp - 1) - 1

    @property
    def emax(self) -> int:
        return 2**self.exp - 2 - self.bias  # the all-ones exponent is inf/NaN

    @property
    def emin(self) -> int:
        return 1 - self.bias

    @property
    def max(self) -> float:
        return (2 - 2.0**-self.man) * 2.0**self.emax

    @property
    def min_normal(self) -> float:
        return 2.0**self.emin

    @property
    def min_subnormal(self) -> float:
        return 2.0 ** (self.emin - self.man)

    def values(self, subnormals: bool = True) -> torch.Tensor:
        """Every finite non-negative value of the format, ascending (float64)."""
        out = [0.0]
        if subnormals:
            out += [k * self.min_subnormal for k in range(1, 2**self.man)]
        for e in range(self.emin, self.emax + 1):
            out += [(1 + k / 2**self.man) * 2.0**e for k in range(2**self.man)]
        return torch.tensor(out, dtype=torch.float64)


def parse_format(text: str, technique: str, option: str) -> FloatFormat:
    """``"1-5-2"`` (sign-exponent-mantissa) to a FloatFormat, or one sentence why not."""
    m = re.fullmatch(r"\s*1-(\d+)-(\d+)\s*", str(text))
    if not m or not (2 <= int(m.group(1)) <= 8 and 1 <= int(m.group(2)) <= 23):
        raise TechniqueError(
            f"Option {option!r} of technique {technique!r} is {text!r}; write it as "
            "sign-exponent-mantissa with 2 to 8 exponent and 1 to 23 mantissa bits, e.g. 1-5-2."
        )
    return FloatFormat(int(m.group(1)), int(m.group(2)))


def float_quantize(
    x: torch.Tensor,
    fmt: FloatFormat,
    rounding: str = "nearest",
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    subnormals: bool = True,
) -> torch.Tensor:
    """x rounded onto ``fmt``'s grid: nearest-even or stochastic, saturating, with subnormals.

    Stochastic rounding uses ``noise`` (U[0, 1), x's shape) if given, else draws it from
    ``generator``. Without subnormals, results below the smallest normal flush to zero.
    """
    xd = x.detach().to(torch.float64)
    a = xd.abs()
    finite = torch.isfinite(a)
    a0 = torch.where(finite, a, torch.zeros_like(a))
    _, e = torch.frexp(a0)  # a = m·2^e with m in [0.5, 1): floor(log2 a) = e − 1
    e = (e.to(torch.int64) - 1).clamp(min=fmt.emin)  # the subnormal range keeps emin's spacing
    ulp = torch.ldexp(torch.ones_like(a0), e - fmt.man)
    scaled = a0 / ulp  # exact: a power-of-two division
    if rounding == "nearest":
        r = torch.round(scaled)  # ties to even
    elif rounding == "stochastic":
        if noise is None:
            noise = torch.rand(x.shape, generator=generator, dtype=torch.float64)
        r = torch.floor(scaled + noise.to(scaled.device, torch.float64))
    else:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, not {rounding!r}")
    q = (r * ulp).clamp(max=fmt.max)  # saturate
    if not subnormals:
        q = torch.where(q < fmt.min_normal, torch.zeros_like(q), q)
    q = torch.where(finite, q, torch.full_like(q, fmt.max))  # ±inf saturates too
    q = torch.where(torch.isnan(xd), xd, q)
    return (torch.sign(xd) * q).to(x.dtype)


def fixed_quantize(
    x: torch.Tensor,
    bits: int,
    dr: float,
    rounding: str = "nearest",
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """x on the B-bit fixed-point grid of range [−DR, DR − LSB], LSB = DR·2^(1−B), clipped."""
    lsb = dr * 2.0 ** (1 - bits)
    xd = x.detach().to(torch.float64) / lsb
    if rounding == "nearest":
        c = torch.round(xd)
    else:
        if noise is None:
            noise = torch.rand(x.shape, generator=generator, dtype=torch.float64)
        c = torch.floor(xd + noise.to(xd.device, torch.float64))
    c = c.clamp(-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1)
    return (c * lsb).to(x.dtype)


def pow2_ceil(x: float) -> float:
    """The smallest power of two ≥ x (1 for x ≤ 0)."""
    return 2.0 ** math.ceil(math.log2(x)) if x > 0 else 1.0


def pow2_floor(x: float) -> float:
    """The largest power of two ≤ x (0 for x ≤ 0)."""
    return 2.0 ** math.floor(math.log2(x)) if x > 0 else 0.0


class _Quant(torch.autograd.Function):
    """Forward ``fwd(x)`` (identity if None), backward ``bwd(g)`` (identity if None): a
    straight-through quantizer whose gradient can be quantized too."""

    @staticmethod
    def forward(ctx, x, fwd, bwd):  # noqa: ANN001, ANN205
        ctx.bwd = bwd
        return fwd(x) if fwd is not None else x.clone()

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        return (ctx.bwd(g) if ctx.bwd is not None else g), None, None


def quant(
    x: torch.Tensor,
    fwd: Callable[[torch.Tensor], torch.Tensor] | None,
    bwd: Callable[[torch.Tensor], torch.Tensor] | None,
) -> torch.Tensor:
    """x with a quantized forward value and/or a quantized gradient (straight through)."""
    return _Quant.apply(x, fwd, bwd)


def layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Linear and Conv layers in model order (the GEMMs the low-bit techniques act on)."""
    return [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear | nn.modules.conv._ConvNd)
    ]


def full_name(mod_name: str, leaf: str) -> str:
    return f"{mod_name}.{leaf}" if mod_name else leaf


class Hooks:
    """Forward hooks on layers that step aside while LCA measures; removable together."""

    def __init__(self) -> None:
        self.handles: list = []

    def input(
        self,
        module: nn.Module,
        fn: Callable[[torch.Tensor], torch.Tensor],
        surrogate: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """Replace the layer's input x by fn(x); while LCA measures, by surrogate(x) (the
        continuous function the straight-through gradient implies) or leave it alone."""

        def pre(mod: nn.Module, args: tuple) -> tuple | None:
            if not args or not torch.is_tensor(args[0]):
                return None
            if is_measuring():
                return None if surrogate is None else (surrogate(args[0]), *args[1:])
            return (fn(args[0]), *args[1:])

        self.handles.append(module.register_forward_pre_hook(pre))

    def output(
        self, module: nn.Module, fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    ) -> None:
        """Replace the layer's output y by fn(module, x, y) (outside measurements)."""

        def post(mod: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
            if is_measuring() or not torch.is_tensor(out):
                return None
            return fn(mod, args[0], out)

        self.handles.append(module.register_forward_hook(post))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
