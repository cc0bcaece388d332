"""Weight symmetry (Hu, Zagoruyko, Komodakis): learn part of a layer, mirror the rest.

The layer's forward uses a symmetric Ŵ built from its stored weight U on every call:

* ``tri``  Ŵ = triu(U) + triu(U, 1)ᵀ on square layers (per spatial tap for a conv): only the
  upper triangle and diagonal are learned; n(n−1)/2 entries per n×n matrix are saved;
* ``wwt``  Ŵ = (U + Uᵀ)/2 on square layers: symmetric, but every entry of U stays stored, so
  nothing is saved (the paper's RNN default; it halves the degrees of freedom only);
* ``spa``  the ``tri`` trick on each k×k spatial kernel of a conv (any channels): k(k−1)/2 of
  every kernel's k² entries are saved.

Why the layer's class is swapped (to a subclass whose forward symmetrizes) instead of
``torch.nn.utils.parametrize``: parametrize renames ``fc2.weight`` to
``fc2.parametrizations.weight.original``; the swap keeps every parameter name, and U itself is
the parameter, so LCA is measured on the free entries. The mirrored (dead) entries of U are set
to 0 at setup and get exactly zero gradient, so they never move (even under weight decay) and
their LCA is exactly 0: a built-in check of the LCA pipeline.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import register
from .base import Context, Declarations, Option, Technique, TechniqueError

VARIANTS = ("tri", "wwt", "spa")


def symmetrize(u: torch.Tensor, variant: str) -> torch.Tensor:
    """Ŵ from U. Linear (n, n); conv (n, n, kh, kw): ``tri``/``wwt`` act on the channel matrix of
    every spatial tap, ``spa`` on every kh×kw kernel."""
    if variant == "spa":
        return u.triu() + u.triu(1).transpose(-1, -2)
    m = u if u.dim() == 2 else u.permute(2, 3, 0, 1)  # (kh, kw, n, n): one matrix per tap
    if variant == "tri":
        m = m.triu() + m.triu(1).transpose(-1, -2)
    else:
        m = (m + m.transpose(-1, -2)) / 2
    return m if u.dim() == 2 else m.permute(2, 3, 0, 1)


def dead_mask(shape: tuple[int, ...], variant: str) -> torch.Tensor:
    """True where U's entry is mirrored from another (never used by the forward pass)."""
    if variant == "wwt":
        return torch.zeros(shape, dtype=torch.bool)
    ones = torch.ones(shape, dtype=torch.bool)
    if variant == "spa" or len(shape) == 2:
        return ~ones.triu()
    return ~ones.permute(2, 3, 0, 1).triu().permute(2, 3, 0, 1)


class _SymmetricLinear(nn.Linear):
    symmetry: str

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, symmetrize(self.weight, self.symmetry), self.bias)


class _SymmetricConv2d(nn.Conv2d):
    symmetry: str

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, symmetrize(self.weight, self.symmetry), self.bias)


def eligible(module: nn.Module, variant: str) -> bool:
    """Whether ``variant`` applies to this layer (square weights; square kernels for spa)."""
    if isinstance(module, nn.Conv2d) and type(module) in (nn.Conv2d, _SymmetricConv2d):
        kh, kw = module.kernel_size
        if variant == "spa":
            return kh == kw and kh > 1
        return module.out_channels == module.in_channels and module.groups == 1
    if isinstance(module, nn.Linear) and type(module) in (nn.Linear, _SymmetricLinear):
        return variant != "spa" and module.out_features == module.in_features
    return False


@register
class Symmetry(Technique):
    """Square (or spatially square) layers learn a symmetric weight from part of their entries."""

    name = "symmetry"
    description = (
        "Weight symmetry: square layers use a symmetric weight built from their "
        "upper triangle (tri), (U+Uᵀ)/2 (wwt), or symmetric k×k kernels (spa)."
    )
    options: dict[str, Option] = {
        "variant": Option("tri", "how the symmetric weight is built", str, choices=VARIANTS),
        "layers": Option(
            [],
            "layers to make symmetric, joined by + (empty: every layer the variant applies to)",
            list,
        ),
    }

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self._layers: list[str] = []
        self._saved = 0
        self._total = 0
        self._dead: dict[str, torch.Tensor] = {}

    def declare(self, ctx: Context) -> Declarations:
        return Declarations()

    def setup(self, ctx: Context) -> None:
        variant = self.opts["variant"]
        modules = dict(ctx.model.named_modules())
        fits = [n for n, m in modules.items() if eligible(m, variant)]
        wanted = self.opts["layers"] or fits
        for n in wanted:
            if n not in fits:
                what = (
                    "square-kernel convolutions"
                    if variant == "spa"
                    else "square Linear/Conv2d layers (as many outputs as inputs)"
                )
                raise TechniqueError(
                    f"Technique 'symmetry' ({variant}) cannot use layer {n!r}: it applies to "
                    f"{what}, and this model's are: {', '.join(fits) or 'none'}."
                )
        if not wanted:
            raise TechniqueError(
                f"Technique 'symmetry' ({variant}) finds no layer to make symmetric in this "
                "model; use square hidden layers (e.g. mlp with hidden=32+32) or variant=spa "
                "on a CNN."
            )
        self._layers = list(wanted)
        self._total = sum(p.numel() for p in ctx.model.parameters())
        for n in self._layers:
            m = modules[n]
            m.__class__ = _SymmetricLinear if isinstance(m, nn.Linear) else _SymmetricConv2d
            m.symmetry = variant
            dead = dead_mask(tuple(m.weight.shape), variant).to(m.weight.device)
            with torch.no_grad():
                m.weight.masked_fill_(dead, 0.0)  # unused: 0 stays 0 under weight decay too
            self._dead[f"{n}.weight"] = dead
            self._saved += int(dead.sum())

    def dead_entries(self) -> dict[str, torch.Tensor]:
        """Parameter name -> mask of the mirrored entries (never used, never moved)."""
        return dict(self._dead)

    def summary(self) -> dict[str, Any]:
        return {
            "variant": self.opts["variant"],
            "layers": "+".join(self._layers),
            "params_saved": self._saved,
            "fraction_params_saved": self._saved / self._total if self._total else 0.0,
        }
