"""What a long run will cost, said before it is committed to.

A paper-scale run (55,000 measurement images, thousands of steps) takes hours on a small CPU, and
nothing short of running a step tells how long one takes on this machine under its present load.
So the run itself is the probe: the first step (which also pays for set-up and warm-up) is left
out, the next ``PROBE_STEPS`` (and at least ``PROBE_SECONDS``) are timed, and if steps ×
seconds per step comes to more than ``ANNOUNCE_SECONDS`` one line says so (steps, seconds per
tracked step, the projected total) while the run goes on; Ctrl-C stops it with every step so
far kept. The progress bar (tqdm) shows the remaining time for the rest of the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

PROBE_STEPS = 3  # tracked steps timed after the first, at least
PROBE_SECONDS = 2.0  # ... and at least this long: 3 fast steps mostly time warm-up and noise
ANNOUNCE_SECONDS = 60.0  # projected runs shorter than this are not announced


def duration(seconds: float) -> str:
    """``42 s``, ``12 min``, ``3.4 h``: a projected time, rounded as a projection should be."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def cost_line(total_steps: int, seconds_per_step: float, probe_steps: int) -> str:
    """The one line printed before a long run goes on."""
    return (
        f"cost: {total_steps:,} steps × {seconds_per_step:.2f} s per tracked step ≈ "
        f"{duration(total_steps * seconds_per_step)} (timed over steps 2–{probe_steps + 1} on "
        "this machine now; Ctrl-C stops the run and keeps every step so far)"
    )


class CostProbe:
    """Call ``update(step, total)`` after every step; ``say`` gets the cost line once, after
    the probe steps, when the projected run is long. ``clock`` is injectable for tests."""

    def __init__(
        self,
        say: Callable[[str], None],
        *,
        probe_steps: int = PROBE_STEPS,
        probe_seconds: float = PROBE_SECONDS,
        announce_seconds: float = ANNOUNCE_SECONDS,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.say = say
        self.probe_steps = probe_steps
        self.probe_seconds = probe_seconds
        self.announce_seconds = announce_seconds
        self.clock = clock
        self._t1: float | None = None  # clock at the end of step 1
        self.seconds_per_step: float | None = None
        self.announced = False

    def update(self, step: int, total: int) -> None:
        if self.seconds_per_step is not None:
            return
        if step == 1:
            self._t1 = self.clock()
            return
        if self._t1 is None or step < 1 + self.probe_steps:
            return
        elapsed = self.clock() - self._t1
        if elapsed < self.probe_seconds and step < total:
            return
        self.seconds_per_step = elapsed / (step - 1)
        if total * self.seconds_per_step >= self.announce_seconds:
            self.announced = True
            self.say(cost_line(total, self.seconds_per_step, step - 1))
