"""A run whose steps leave more than the paper's 1e-3 unallocated says so, with the cost of the
fix (issue 15 item 5)."""

from __future__ import annotations

import numpy as np
import pytest

from lca.conservation import advice, fix_cost, steps_over


def test_steps_over_the_paper_limit_are_counted_and_the_fix_priced() -> None:
    errors = np.r_[np.full(5, 3e-3), np.full(95, -2e-4), np.nan]
    assert steps_over(errors) == 5
    text = advice(errors, "rk4")
    assert text is not None and "\n" not in text
    assert text.startswith("5 of 100 steps") and "worst 3.0e-03" in text
    assert "--method rk4-paper" in text and "1.05× this run's LCA time" in text


def test_the_fix_can_be_cheaper_than_the_method_used() -> None:
    # gauss3 pays 3 gradients a step; rk4-paper 2, plus 2 on each step over the limit.
    assert fix_cost("gauss3", 100, 10) == pytest.approx(220 / 300)
    assert "0.73×" in (advice(np.r_[np.full(10, 2e-3), np.zeros(90)], "gauss3") or "")


def test_nothing_is_said_when_every_step_conserved_and_adaptive_runs_get_other_advice() -> None:
    assert advice(np.full(50, 9e-4), "rk4") is None
    text = advice(np.r_[2e-3, np.zeros(9)], "rk4-paper", option="method")
    assert text is not None and "learning rate" in text and "rerun with" not in text
