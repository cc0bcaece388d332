"""The cost of a long run is said after a few timed steps (issue 15 item 6)."""

from __future__ import annotations

from lca.cost import CostProbe, duration


def _probe(seconds_per_step: float, total: int) -> list[str]:
    said: list[str] = []
    now = [100.0]  # step 1 (set-up and warm-up) took 100 s and is left out
    probe = CostProbe(said.append, clock=lambda: now[0])
    for step in range(1, min(total, 10) + 1):
        probe.update(step, total)
        now[0] += seconds_per_step
    return said


def test_a_long_run_says_steps_times_seconds_once() -> None:
    said = _probe(2.0, 1000)
    assert len(said) == 1
    assert "1,000 steps × 2.00 s per tracked step ≈ 33 min" in said[0]


def test_a_short_run_says_nothing() -> None:
    assert _probe(0.01, 1000) == []  # 10 s in all


def test_durations_read_as_projections() -> None:
    assert (duration(42), duration(20 * 60), duration(3 * 3600)) == ("42 s", "20 min", "3.0 h")


def test_fast_steps_are_timed_for_at_least_the_probe_seconds() -> None:
    said: list[str] = []
    now = [0.0]
    probe = CostProbe(said.append, clock=lambda: now[0])
    for step in range(1, 200):
        probe.update(step, 100_000)
        now[0] += 0.05
    assert probe.seconds_per_step is not None and abs(probe.seconds_per_step - 0.05) < 1e-9
    assert len(said) == 1 and "timed over steps 2–41" in said[0]  # 40 steps = 2 s
