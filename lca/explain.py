"""The worked example and the words behind the "What is LCA?" page.

A student meets LCA here first, so the example is the smallest one that still shows everything:
a logistic regression with two weights on eight points. Its loss surface can be drawn, one
gradient step is an arrow on it, and the path integral along the arrow splits the loss change
between the two weights. The numbers are the engine's: the shares come from ``lca.allocate``
(Simpson 1-4-1, as every run uses), and a fine integral of the same gradient is kept beside them
so the page (and its test) can show that Simpson's three points already get it right.

``GLOSSARY`` holds the one-line explanations every page uses for its terms, so a word means the
same thing wherever it appears.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .allocate import allocate

__all__ = ["GLOSSARY", "SCENARIOS", "TwoWeightExample", "glossary", "two_weight_example"]

# Ten points in two classes, not separable, so the loss has a true minimum. The first input is
# stretched (×3) and the second shrunk (×0.6): the valley is steep along weight 1 and shallow
# along weight 2, so a large step overshoots in weight 1 (it hurts) while weight 2 still helps.
_X = np.array(
    [
        [1.2, 1.0],
        [0.5, 1.6],
        [1.5, 0.4],
        [-0.4, 1.2],
        [0.9, -0.3],
        [-1.0, -1.2],
        [-1.4, -0.3],
        [-0.6, -1.5],
        [0.3, -1.0],
        [-1.2, 0.5],
    ],
) * np.array([3.0, 0.6])
_Y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 0], dtype=np.float64)

# Scenarios a teacher can pick: where the weights start and how big the step is.
SCENARIOS: dict[str, tuple[tuple[float, float], float]] = {
    "both weights help": ((-2.0, 2.0), 1.0),
    "one helps, one hurts (overshoot)": ((-0.5, -2.5), 3.0),
    "near the bottom of the valley": ((0.5, -1.5), 1.0),
}

SAMPLES = 201  # points along the step for the drawn integrand and the fine reference integral


@dataclass(frozen=True)
class TwoWeightExample:
    """Everything the page draws: the surface, the step, the integrand and the shares."""

    start: np.ndarray  # (2,) weights before the step
    end: np.ndarray  # (2,) weights after it
    grid_w1: np.ndarray  # (G,) axis of the loss surface
    grid_w2: np.ndarray  # (G,)
    grid_loss: np.ndarray  # (G, G) loss at (w1 = grid_w1[j], w2 = grid_w2[i])
    s: np.ndarray  # (SAMPLES,) position along the step, 0 = start, 1 = end
    integrand: np.ndarray  # (SAMPLES, 2): gradient_i(θ(s)) · Δw_i
    simpson_s: np.ndarray  # (3,) 0, ½, 1: where Simpson evaluates the gradient
    simpson_values: np.ndarray  # (3, 2) the integrand there
    simpson_shares: np.ndarray  # (2,) one Simpson panel (lca.allocate, method "rk4")
    shares: np.ndarray  # (2,) split until exact (lca.allocate, method "rk4-adaptive")
    fine_shares: np.ndarray  # (2,) the same integral by the trapezoid rule on SAMPLES points
    loss_start: float
    loss_end: float

    @property
    def loss_change(self) -> float:
        return self.loss_end - self.loss_start


def _model(w: np.ndarray) -> nn.Module:
    m = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        m.weight.copy_(torch.as_tensor(w, dtype=torch.float64).reshape(1, 2))
    return m


def _loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(out.squeeze(1), y)


def _loss(w: np.ndarray) -> np.ndarray:
    """Mean logistic loss at weights ``w`` (..., 2), in closed form."""
    z = w @ _X.T
    return np.mean(np.logaddexp(0.0, z) - _Y * z, axis=-1)


def _grad(w: np.ndarray) -> np.ndarray:
    """Its gradient at ``w`` (..., 2), in closed form: Xᵀ(σ(Xw) − y) / n."""
    p = 1.0 / (1.0 + np.exp(-(w @ _X.T)))
    return (p - _Y) @ _X / len(_Y)


def two_weight_example(
    start: tuple[float, float] = (-2.0, 2.0), lr: float = 1.0, grid: int = 81
) -> TwoWeightExample:
    """One plain gradient-descent step of size ``lr`` from ``start``, and its LCA."""
    w0 = np.asarray(start, dtype=np.float64)
    w1 = w0 - lr * _grad(w0)
    delta = w1 - w0

    def lca_of_step(method: str):
        return allocate(
            _model(w0),
            _loss_fn,
            (torch.as_tensor(_X), torch.as_tensor(_Y)),
            {"weight": torch.as_tensor(w0).reshape(1, 2)},
            {"weight": torch.as_tensor(w1).reshape(1, 2)},
            method=method,
            tolerance=1e-6,
            dtype=torch.float64,
        )

    alloc = lca_of_step("rk4-adaptive")
    shares = alloc.per_param["weight"].reshape(2).double().numpy()
    simpson = lca_of_step("rk4").per_param["weight"].reshape(2).double().numpy()

    s = np.linspace(0.0, 1.0, SAMPLES)
    integrand = _grad(w0 + s[:, None] * delta) * delta
    simpson_s = np.array([0.0, 0.5, 1.0])
    lo = min(float(np.minimum(w0, w1).min()) - 1.0, -3.5)
    hi = max(float(np.maximum(w0, w1).max()) + 1.0, 3.5)
    axis = np.linspace(lo, hi, grid)
    w1_grid, w2_grid = np.meshgrid(axis, axis)
    surface = _loss(np.stack([w1_grid, w2_grid], axis=-1))
    return TwoWeightExample(
        start=w0,
        end=w1,
        grid_w1=axis,
        grid_w2=axis,
        grid_loss=surface,
        s=s,
        integrand=integrand,
        simpson_s=simpson_s,
        simpson_values=_grad(w0 + simpson_s[:, None] * delta) * delta,
        simpson_shares=simpson,
        shares=shares,
        fine_shares=np.trapezoid(integrand, s, axis=0),
        loss_start=alloc.loss_start,
        loss_end=alloc.loss_end,
    )


# One line per term the app shows. Pages use ``glossary(term)`` as a widget's help text and the
# "What is LCA?" page lists them all, so the words mean one thing everywhere.
GLOSSARY: dict[str, str] = {
    "loss": "How wrong the network is on the measurement set: lower is better.",
    "step": "One update of the weights by the optimizer, after one minibatch.",
    "LCA": "Loss Change Allocation: each step's change of the loss, split among the weights. "
    "The shares add up to the change.",
    "helped": "A weight helped on a step when its share of the loss change is negative: its move "
    "lowered the loss (green).",
    "hurt": "A weight hurt on a step when its share is positive: its move raised the loss (red).",
    "measurement set": "A fixed set of training examples on which the loss is measured before "
    "and after every step, so every step is judged by the same yardstick.",
    "segment": "A straight move of the weights that LCA measures: usually one optimizer step; a "
    "technique's own move (such as pruning) is a segment of its own.",
    "intervention": "A change of the weights made outside the optimizer, for example pruning; "
    "it is measured as its own segment and drawn half-way between two steps.",
    "conservation error": "The part of the loss change that the shares do not add up to. Near "
    "zero means the split is exact.",
    "parameter tensor": "One block of weights of a layer, for example the weight matrix of the "
    "first layer or its biases.",
    "layer": "A stage of the network; its LCA is the sum over its weights.",
    "unit": "One neuron (dense layer) or one channel (convolution); its LCA is the sum over "
    "the weights feeding it.",
    "Simpson 1-4-1 (rk4)": "How LCA measures the path: it looks at the gradient at the start, "
    "the middle and the end of the step and weighs them 1 : 4 : 1.",
    "rk4-adaptive": "Simpson's rule that splits a step into smaller pieces until the shares add "
    "up to the loss change within a tolerance.",
    "helped fraction": "The share of all weights that helped on a step. The LCA paper found it "
    "barely above one half.",
    "synchronization": "Whether layers learn at the same moments: peaks of their LCA are "
    "compared with what shuffled steps would give by chance.",
    "z-score": "How many standard deviations a value is above what chance gives; above 2 is "
    "rarely chance.",
    "p-value": "How often chance alone would give a result at least this strong; p < 0.001 "
    "means less than once in a thousand tries.",
    "technique": "A method that makes training cheaper (skipping updates, pruning, low "
    "precision, freezing); LCA shows what it took away.",
}


def glossary(term: str) -> str:
    """The one-line explanation of ``term`` (case-insensitive); KeyError names the known terms."""
    for key, text in GLOSSARY.items():
        if key.lower() == term.lower():
            return text
    raise KeyError(f"No glossary entry {term!r}; known: {', '.join(GLOSSARY)}.")
