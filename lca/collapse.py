"""Neural collapse (Papyan, Han & Donoho 2020): how far the last layer is from a simplex ETF.

Late in training a classifier's penultimate features collapse to their class means (NC1), the
centred class means become equal-norm and equally, maximally separated (NC2: a simplex
equiangular tight frame), the classifier rows line up with them (NC3, self-duality) and the
classifier acts as a nearest-class-centre rule (NC4). Each measure here is 0 at perfect
collapse and grows with the distance from it, so the Layers page can draw them on a log axis
beside the last layer's LCA: does the last layer keep lowering the loss after it collapsed?

The features are the inputs of the model's last ``nn.Linear`` (its classifier), taken on the
fixed measurement set at each evaluation step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

__all__ = [
    "COLLAPSE_COLUMNS",
    "COLLAPSE_TABLE",
    "CollapseMeasures",
    "classifier_layer",
    "collapse_measures",
    "penultimate_features",
]

COLLAPSE_TABLE = "collapse"  # the run file's event table, one row per evaluation step
COLLAPSE_COLUMNS = (
    "train_step",
    "nc1",  # Tr(Σ_W Σ_B^†) / C: within-class spread relative to between-class spread
    "nc2_equinorm",  # std / mean of the centred class-mean norms
    "nc2_equiangle",  # std of the cosines between distinct centred class means
    "nc2_max_angle",  # mean |cos + 1/(C-1)|: distance from the simplex angle
    "nc3",  # ‖W/‖W‖ − M/‖M‖‖²_F: classifier rows vs centred class means
    "nc4",  # fraction of examples where the classifier and nearest class mean disagree
    "classes",  # C: classes present in the measurement set
)


@dataclass(frozen=True)
class CollapseMeasures:
    """The four neural-collapse measures of one set of features (each 0 at full collapse)."""

    nc1: float
    nc2_equinorm: float
    nc2_equiangle: float
    nc2_max_angle: float
    nc3: float
    nc4: float
    classes: int

    def row(self, step: int) -> list[float]:
        """The run file's row for evaluation step ``step`` (columns ``COLLAPSE_COLUMNS``)."""
        return [
            step,
            self.nc1,
            self.nc2_equinorm,
            self.nc2_equiangle,
            self.nc2_max_angle,
            self.nc3,
            self.nc4,
            self.classes,
        ]


@torch.no_grad()
def collapse_measures(
    features: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> CollapseMeasures:
    """NC1–NC4 of ``features`` (N, d) with labels (N,) and classifier ``weight`` (K, d), ``bias``.

    Only the C classes present in ``labels`` count (a small measurement set may miss some);
    the classifier rows of those classes are compared with their means. Computed in float64.
    Raises ValueError with fewer than two classes present (no between-class structure).
    """
    h = features.detach().reshape(len(features), -1).double()
    y = labels.detach().long()
    w = weight.detach().double()
    b = None if bias is None else bias.detach().double()
    present = torch.unique(y)
    c = len(present)
    if c < 2:
        raise ValueError("Neural collapse needs features of at least two classes.")
    n = len(h)
    mu_g = h.mean(0)
    means = torch.stack([h[y == k].mean(0) for k in present])  # (C, d)
    centred = means - mu_g  # M
    # NC1: Σ_W over all examples, Σ_B over the C class means.
    index = torch.searchsorted(present, y)
    within = h - means[index]
    sigma_w = within.T @ within / n
    sigma_b = centred.T @ centred / c
    nc1 = float(torch.trace(sigma_w @ torch.linalg.pinv(sigma_b, hermitian=True)) / c)
    # NC2: equal norms, equal angles at the simplex value −1/(C−1).
    norms = centred.norm(dim=1)
    equinorm = float(norms.std(unbiased=False) / norms.mean()) if norms.mean() > 0 else float("nan")
    unit = centred / norms.clamp_min(1e-300)[:, None]
    cos = unit @ unit.T
    off = cos[~torch.eye(c, dtype=torch.bool)]
    equiangle = float(off.std(unbiased=False))
    max_angle = float((off + 1.0 / (c - 1)).abs().mean())
    # NC3: the classifier rows of the present classes against the centred means.
    w_c = w[present]
    nc3 = float(((w_c / w_c.norm() - centred / centred.norm()) ** 2).sum())
    # NC4: the classifier's choice vs the nearest class mean (among the present classes).
    logits = h @ w_c.T + (0 if b is None else b[present])
    chosen = logits.argmax(1)
    nearest = torch.cdist(h, means).argmin(1)
    nc4 = float((chosen != nearest).double().mean())
    return CollapseMeasures(nc1, equinorm, equiangle, max_angle, nc3, nc4, c)


def classifier_layer(model: nn.Module, num_classes: int | None = None) -> str | None:
    """Name of the model's last ``nn.Linear`` (its classifier), or None when it has none or
    the last one does not output ``num_classes`` values."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None or (num_classes is not None and last[1].out_features != num_classes):
        return None
    return last[0]


@torch.no_grad()
def penultimate_features(
    model: nn.Module,
    params: dict[str, torch.Tensor],
    layer: str,
    x: torch.Tensor,
    chunk: int = 1024,
) -> torch.Tensor:
    """The inputs of ``layer`` for inputs ``x``, in eval mode with the weights ``params``."""
    module = model.get_submodule(layer)
    caught: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda _m, args: caught.append(args[0].detach()))
    was = model.training
    model.eval()
    try:
        for i in range(0, len(x), chunk):
            functional_call(model, params, (x[i : i + chunk],))
    finally:
        handle.remove()
        model.train(was)
    return torch.cat(caught).reshape(len(x), -1)
