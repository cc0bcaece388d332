"""Quadrature rules for the LCA path integral, as tables of nodes and weights.

LCA integrates the gradient along one straight optimizer step, θ(s) = θ_t + sΔ for s in [0, 1].
Every integrator is just a table: where on the segment to take the gradient (nodes) and how much
each gradient counts (weights). Keeping them as data makes the cost of a rule (how many new
gradient evaluations it needs, given that the gradient at s=0 is reused from the previous step)
something we can read off the table rather than hide in code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class Rule:
    """A quadrature rule on [0, 1]: ∫_0^1 f(s) ds ≈ Σ_k weights[k] · f(nodes[k]).

    Nodes are Fractions when they are exact dyadic/rational positions so that two rules can
    share evaluations (a refined Simpson rule reuses every node of the coarser one).
    """

    name: str
    nodes: tuple[Fraction | float, ...]
    weights: tuple[float, ...]
    degree: int  # polynomial degree of the integrand integrated exactly

    @property
    def uses_start(self) -> bool:
        return any(n == 0 for n in self.nodes)

    @property
    def uses_end(self) -> bool:
        return any(n == 1 for n in self.nodes)


def composite_simpson(panels: int) -> Rule:
    """Simpson's 1-4-2-4-…-4-1 rule over `panels` equal panels (2·panels + 1 nodes)."""
    if panels < 1:
        raise ValueError("composite Simpson needs at least one panel")
    n = 2 * panels
    nodes = tuple(Fraction(k, n) for k in range(n + 1))
    raw = [1.0] + [4.0 if k % 2 else 2.0 for k in range(1, n)] + [1.0]
    weights = tuple(w / (3 * n) for w in raw)
    name = "rk4" if panels == 1 else f"simpson{panels}"
    return Rule(name, nodes, weights, degree=3)


def gauss_legendre(points: int) -> Rule:
    """Gauss–Legendre rule mapped to [0, 1]; exact for integrands of degree 2·points − 1."""
    import numpy as np

    x, w = np.polynomial.legendre.leggauss(points)
    nodes = tuple(float((xi + 1) / 2) for xi in x)
    weights = tuple(float(wi / 2) for wi in w)
    return Rule(f"gauss{points}", nodes, weights, degree=2 * points - 1)


EULER = Rule("euler", (Fraction(0),), (1.0,), degree=0)
TRAPEZOID = Rule("trapezoid", (Fraction(0), Fraction(1)), (0.5, 0.5), degree=1)
SIMPSON = composite_simpson(1)

# Panel counts tried in turn by our adaptive rule, "rk4-adaptive": after plain Simpson it jumps to
# 4 panels (error ÷ 256 for a smooth integrand), then doubles, at most 32 panels (65 nodes).
ADAPTIVE_PANELS: tuple[int, ...] = (1, 4, 8, 16, 32)
# The LCA paper's released code, "rk4-paper": it doubles the *sub-intervals* 2 → 4 → 8 → 16 → 32,
# i.e. 1, 2, 4, 8, 16 Simpson panels (at most 33 nodes), each step evaluating only new points.
PAPER_PANELS: tuple[int, ...] = (1, 2, 4, 8, 16)
# Adaptive method name -> the panel counts it tries in turn, refining while |ΔL − ΣA| > tolerance
# on the measurement set.
ADAPTIVE: dict[str, tuple[int, ...]] = {"rk4-adaptive": ADAPTIVE_PANELS, "rk4-paper": PAPER_PANELS}
DEFAULT_TOLERANCE = 1e-3
# What an adaptive method refines on: "sum" = |ΔL − ΣA| ≤ tolerance (the paper's criterion);
# "parameters" = that and, per parameter, ‖A_coarse − A_fine‖ / ‖A_fine‖ ≤ the parameter
# tolerance between the last two refinement levels (Simpson 1- vs 2-panel for rk4-paper's
# first test), keeping the finer result.
ADAPT_ON: tuple[str, ...] = ("sum", "parameters")
DEFAULT_PARAM_TOLERANCE = 1e-2

_FIXED: dict[str, Rule] = {
    "euler": EULER,
    "trapezoid": TRAPEZOID,
    "rk4": SIMPSON,
    "gauss2": gauss_legendre(2),
    "gauss3": gauss_legendre(3),
}

#: Names accepted by ``method=`` everywhere (API, CLI, config, app).
METHODS: tuple[str, ...] = (
    "euler",
    "trapezoid",
    "rk4",
    "rk4-adaptive",
    "rk4-paper",
    "gauss2",
    "gauss3",
)

METHOD_HELP: dict[str, str] = {
    "euler": "first order: gradient at the start of the step (exact only for linear loss)",
    "trapezoid": "mean of start and end gradients (exact for quadratic loss)",
    "rk4": "Simpson 1-4-1, the LCA paper's 'RK4' (exact for quartic loss); default",
    "rk4-adaptive": "Simpson, split into 4/8/16/32 panels while |ΔL − ΣA| > tolerance",
    "rk4-paper": "the LCA paper's adaptive rule: Simpson split into 2/4/8/16 panels while "
    "|ΔL − ΣA| > tolerance",
    "gauss2": "2-point Gauss–Legendre (exact for quartic loss, no endpoint reuse)",
    "gauss3": "3-point Gauss–Legendre (exact for degree-6 loss, no endpoint reuse)",
}


def rule(method: str) -> Rule:
    """The first rule a method uses (for the adaptive ones: plain Simpson before any split)."""
    if method in ADAPTIVE:
        return SIMPSON
    try:
        return _FIXED[method]
    except KeyError:
        raise ValueError(
            f"Unknown LCA method {method!r}; choose one of: {', '.join(METHODS)}."
        ) from None


def is_adaptive(method: str) -> bool:
    """True for the methods that refine a step until its conservation error is small enough."""
    return method in ADAPTIVE


def refinements(method: str) -> tuple[int, ...]:
    """The Simpson panel counts an adaptive method tries after plain Simpson, in order."""
    return ADAPTIVE[method][1:] if method in ADAPTIVE else ()


def new_evaluations_per_step(method: str) -> int:
    """Gradient evaluations a tracked step needs when the start gradient is reused.

    The end point is always measured (its loss closes the step); its gradient is needed only
    when the rule has an endpoint node, so Gauss rules pay a forward-only loss there instead.
    """
    r = rule(method)
    interior = sum(1 for n in r.nodes if 0 < n < 1)
    return interior + (1 if r.uses_start or r.uses_end else 0)


def check_weights(r: Rule) -> None:
    """Sanity check used by tests: weights of a rule on [0, 1] sum to 1."""
    if not math.isclose(sum(r.weights), 1.0, rel_tol=0, abs_tol=1e-12):
        raise AssertionError(f"weights of {r.name} sum to {sum(r.weights)}")
