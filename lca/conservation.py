"""When LCA did not conserve the loss well enough, and what fixing it costs.

The LCA paper refined every step until |ΔL − ΣA| ≤ 1e-3. A fixed rule (rk4, gauss3) leaves the
first, large steps of a run above that (measured on Fashion-MNIST: docs/RESULTS.md, section
"Conservation per step"), so a run says how many of its steps did and what a rerun with the
paper's rule would cost: ``rk4-paper`` keeps rk4's 2 gradient evaluations on a step that
conserves and adds 2 (the 2-panel split) on one that does not — more only where 2 panels are
still not enough, so the figure is a lower bound.
"""

from __future__ import annotations

import numpy as np

from . import integrate

PAPER_TOLERANCE = 1e-3  # the paper's per-step |ΔL − ΣA|
FIX_METHOD = "rk4-paper"


def steps_over(errors: np.ndarray, tolerance: float = PAPER_TOLERANCE) -> int:
    """Optimizer steps whose |ΔL − ΣA| exceeds ``tolerance`` (NaN rows are not counted)."""
    e = np.abs(np.asarray(errors, dtype=float))
    return int(np.sum(e[np.isfinite(e)] > tolerance))


def fix_cost(method: str, steps: int, over: int) -> float:
    """LCA time of a rk4-paper rerun over this run's (ratio of gradient evaluations)."""
    now = integrate.new_evaluations_per_step(method) * steps
    fixed = 2 * steps + 2 * over
    return fixed / max(1, now)


def advice(
    errors: np.ndarray,
    method: str,
    *,
    tolerance: float = PAPER_TOLERANCE,
    option: str = "--method",
) -> str | None:
    """One sentence when some step of the run left more than ``tolerance`` unallocated: how
    many, the worst, and the cost of the fix; None when every step conserved."""
    e = np.abs(np.asarray(errors, dtype=float))
    e = e[np.isfinite(e)]
    over = steps_over(e, tolerance)
    if not over:
        return None
    head = (
        f"{over:,} of {len(e):,} steps left more than {tolerance:g} of their loss change "
        f"unallocated (worst {e.max():.1e}; the LCA paper's limit is {PAPER_TOLERANCE:g})"
    )
    if integrate.is_adaptive(method):
        return (
            head + f": {method} reached its finest split on them; a smaller learning rate "
            "makes the steps shorter and the error smaller."
        )
    return (
        head + f"; rerun with {option} {FIX_METHOD} to split just those steps: about "
        f"{fix_cost(method, len(e), over):.2f}× this run's LCA time (2 more gradient "
        "evaluations per such step, more where 2 panels are not enough)."
    )
