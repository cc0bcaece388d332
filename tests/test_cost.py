"""The cost of a long run is said after a few timed steps (issue 15 item 6)."""

from __future__ import annotations

import pytest

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


def _measured_per_step(monkeypatch, measure_val: bool) -> tuple[float, list]:
    """The probe's "seconds" per tracked step of a real run, on a clock that counts the examples
    every measurement set has evaluated so far (deterministic, unlike wall time)."""
    from lca.config import RunConfig
    from lca.measure import Measurer
    from lca.train import run

    made: list[Measurer] = []
    init = Measurer.__init__

    def recording_init(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Measurer, "__init__", recording_init)
    said: list[str] = []
    probe = CostProbe(
        said.append,
        probe_seconds=0.0,
        announce_seconds=0.0,
        clock=lambda: float(sum((m.evaluations + m.loss_evaluations) * m.size for m in made)),
    )
    config = RunConfig.from_dict(
        {
            "dataset": "digits",
            "model": "mlp",
            "model_options": {"hidden": [8]},
            "steps": 6,
            "measure_size": 120,
            "eval_every": 100,
            "method": "rk4",
            "device": "cpu",
            "measure_val": measure_val,
        }
    )
    run(config, out=None, progress=lambda step, total, loss: probe.update(step, total))
    assert len(said) == 1 and probe.seconds_per_step is not None
    return probe.seconds_per_step, made


@pytest.mark.slow  # two small real runs
def test_the_cost_probe_times_the_held_out_measurement_too(monkeypatch) -> None:
    """With measure_val every tracked step also measures the held-out set along the path; the
    probe times whole steps, so its seconds per step (and the cost line) include that work."""
    plain, (train,) = _measured_per_step(monkeypatch, measure_val=False)
    with_val, (train_v, held) = _measured_per_step(monkeypatch, measure_val=True)
    assert plain == 2 * train.size  # Simpson with the end gradient reused: 2 evaluations
    assert with_val == 2 * (train_v.size + held.size) > plain
