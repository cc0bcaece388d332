"""What a run says about generalization and about its own accuracy, read from a run file.

* ``generalization_view``: LCA of the training loss beside LCA of the held-out loss (runs
  recorded with ``measure_val``), per layer and per weight: which weights lowered the loss they
  were trained on but raised the held-out one.
* ``param_error_view``: the per-parameter error estimate (``error_every``), summarised.
* ``rounding_tensors``: the tensors whose LCA is only rounding noise (a structurally zero
  gradient, e.g. a convolution's bias right before BatchNorm), which helped fractions leave out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lca.store import Reader

__all__ = [
    "ERROR_REL_SERIES",
    "ERROR_SIGNS_SERIES",
    "GeneralizationView",
    "ParamErrorView",
    "generalization_view",
    "param_error_view",
    "rounding_floor",
    "rounding_mask",
    "rounding_tensors",
    "structural_zeros",
]

# Series the tracker writes with error_every (lca.allocate.ERROR_REL / ERROR_SIGNS; named here so
# reading a run never imports torch).
ERROR_REL_SERIES = "lca/panel_error_rel"
ERROR_SIGNS_SERIES = "lca/panel_sign_agreement"


def rounding_floor(dtype: str) -> float:
    """√eps of the precision LCA was measured in: below this share of a step's largest layer
    sum, a layer's LCA on that step is rounding (float32: 3.45e-4, float64: 1.49e-8)."""
    eps = np.finfo(np.float64 if dtype == "float64" else np.float32).eps
    return math.sqrt(float(eps))


def rounding_tensors(layer_lca: np.ndarray, kind: np.ndarray, dtype: str) -> np.ndarray:
    """(L,) bool: tensors whose LCA is rounding noise on *every* optimizer step.

    The rule (docs/FORMAT.md, "Structurally-zero parameters"): on each optimizer step, a tensor
    whose |Σ_i A| is at most √eps(dtype) × the step's largest |Σ_i A| over tensors is at
    rounding level; a tensor at rounding level on every optimizer step (and that moved at all)
    has a structurally zero gradient, e.g. a convolution's bias right before BatchNorm, which
    subtracts it again. Its weights' signs are coin flips, so helped fractions leave them out.
    Read from /layers/lca, which every run file has, so older files get the same rule.
    """
    lca = np.asarray(layer_lca, dtype=np.float64)
    steps = lca[np.asarray(kind) == 0] if len(kind) == len(lca) else lca
    if steps.ndim != 2 or steps.shape[0] == 0:
        return np.zeros(lca.shape[1] if lca.ndim == 2 else 0, dtype=bool)
    a = np.abs(steps)
    top = a.max(axis=1, keepdims=True)
    live = top[:, 0] > 0  # a step where nothing moved says nothing
    if not live.any():
        return np.zeros(a.shape[1], dtype=bool)
    noise = a[live] <= rounding_floor(dtype) * top[live]
    moved = (a != 0).any(axis=0)
    return noise.all(axis=0) & moved


def rounding_mask(r: Reader) -> np.ndarray:
    """``rounding_tensors`` of a run file."""
    t = r.num_steps
    return rounding_tensors(r.layer_lca(0, t), r.steps("kind", 0, t), r.dtype)


def structural_zeros(r: Reader) -> tuple[list[str], int]:
    """(tensor names, weights) whose gradient is structurally zero (``rounding_tensors``): what
    the helped fractions leave out, for the pages to say."""
    mask = rounding_mask(r)
    names = [n for n, z in zip(r.names, mask, strict=True) if z]
    return names, int(sum(math.prod(r.shapes[n]) for n in names))


@dataclass
class ParamErrorView:
    """The per-parameter error estimate of a run (``error_every`` > 0), summarised.

    ``rel`` is ‖A₁ − A₂‖ / ‖A₂‖ on each sampled step, where A₁ is Simpson's 1-panel and A₂ its
    2-panel LCA: about the relative error of rk4's per-weight values (A₂ is ~16× closer to the
    exact integral). ``signs`` is the share of weights whose A₁ and A₂ have the same sign.
    """

    steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # rows
    rel: np.ndarray = field(default_factory=lambda: np.zeros(0))
    signs: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def recorded(self) -> bool:
        return len(self.rel) > 0

    @property
    def median_rel(self) -> float:
        return float(np.median(self.rel)) if self.recorded else math.nan

    @property
    def worst_rel(self) -> float:
        return float(self.rel.max()) if self.recorded else math.nan

    @property
    def worst_step(self) -> int:
        return int(self.steps[int(np.argmax(self.rel))]) + 1 if self.recorded else 0

    @property
    def median_signs(self) -> float:
        return float(np.median(self.signs)) if self.recorded else math.nan

    @property
    def worst_signs(self) -> float:
        return float(self.signs.min()) if self.recorded else math.nan


def param_error_view(r: Reader) -> ParamErrorView:
    """The sampled steps of the per-parameter error estimate (empty when it was not recorded)."""
    if ERROR_REL_SERIES not in r.series_layout or ERROR_SIGNS_SERIES not in r.series_layout:
        return ParamErrorView()
    t = r.num_steps
    rel = np.asarray(r.series(ERROR_REL_SERIES, 0, t), dtype=np.float64)
    signs = np.asarray(r.series(ERROR_SIGNS_SERIES, 0, t), dtype=np.float64)
    rows = np.flatnonzero(np.isfinite(rel) & np.isfinite(signs))
    return ParamErrorView(steps=rows, rel=rel[rows], signs=signs[rows])


@dataclass
class GeneralizationView:
    """Training LCA beside held-out LCA, per layer and per weight (``measure_val`` runs).

    Per layer, over the weights that count (the ``left_out`` tensors at rounding level are not
    counted): ``helped_both`` lowered both losses over the run (total A < 0 on each),
    ``train_only`` lowered the training loss but raised the held-out one (the generalization
    gap, weight by weight), ``val_only`` the other way round, ``hurt_both`` raised both.
    """

    recorded: bool = False
    names: list[str] = field(default_factory=list)
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    train_totals: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (L,) Σ_t A_train
    val_totals: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (L,) Σ_t A_val
    loss: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (T+1,) training loss
    val_loss: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (T+1,) held-out loss
    val_lca: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (T,) Σ_i A_val
    val_error: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (T,) ΔL_val − ΣA_val
    helped_both: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    train_only: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    val_only: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    hurt_both: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    left_out: list[str] = field(default_factory=list)  # rounding-level tensors
    left_out_params: int = 0

    @property
    def val_conservation_error(self) -> float:
        return math.fsum(self.val_error.tolist())


def generalization_view(r: Reader) -> GeneralizationView:
    """Training and held-out LCA side by side; ``recorded`` False for runs without it."""
    if not r.has_val:
        return GeneralizationView()
    t = r.num_steps
    names = list(r.names)
    counts = np.array([math.prod(r.shapes[n]) for n in names], dtype=np.int64)
    kind = np.asarray(r.steps("kind", 0, t))
    layer = np.asarray(r.layer_lca(0, t), dtype=np.float64)
    noise = rounding_tensors(layer, kind, r.dtype)
    shares = {k: np.zeros(len(names), dtype=np.int64) for k in ("hb", "to", "vo", "xb")}
    for i, n in enumerate(names):
        if noise[i]:
            continue
        a = np.ravel(r.param_totals(n))
        b = np.ravel(r.val_param_totals(n))
        shares["hb"][i] = int(((a < 0) & (b < 0)).sum())
        shares["to"][i] = int(((a < 0) & (b > 0)).sum())
        shares["vo"][i] = int(((a > 0) & (b < 0)).sum())
        shares["xb"][i] = int(((a > 0) & (b > 0)).sum())
    return GeneralizationView(
        recorded=True,
        names=names,
        counts=counts,
        train_totals=layer.sum(axis=0),
        val_totals=np.asarray(r.val_layer_lca(0, t), dtype=np.float64).sum(axis=0),
        loss=np.asarray(r.steps("loss", 0, t + 1), dtype=np.float64),
        val_loss=np.asarray(r.val_steps("loss", 0, t + 1), dtype=np.float64),
        val_lca=np.asarray(r.val_steps("lca", 0, t), dtype=np.float64),
        val_error=np.asarray(r.val_steps("error", 0, t), dtype=np.float64),
        helped_both=shares["hb"],
        train_only=shares["to"],
        val_only=shares["vo"],
        hurt_both=shares["xb"],
        left_out=[n for n, z in zip(names, noise, strict=True) if z],
        left_out_params=int(counts[noise].sum()),
    )
