"""How often live charts refresh: every 2 s for a few viewers, less often for a whole class.

Why: a page watching a training run redraws on a timer, and while the file grows every redraw
draws a new version of the run (0.1-0.5 CPU-s per page on 2 cores) and sends it to every viewer
(up to 1-2 MB each). Thirty students refreshing every 2 s would be 15 redraws a second, more
than a 2-core server has next to the training run they watch. The pace therefore follows the
number of sessions watching a live run: ``interval(n)`` is the base interval up to
``SESSIONS_PER_BASE`` viewers and grows in proportion beyond, up to ``MOST_SECONDS``; the same
interval is how long sessions share one version of the file (pages.shared), so the server draws
each live figure at most once per interval, and the class asks for at most
``SESSIONS_PER_BASE / BASE_SECONDS`` refreshes a second up to 50 sessions (beyond, the
``MOST_SECONDS`` pace).

``Watchers`` counts the sessions that looked at a live run recently. No Streamlit here.
"""

from __future__ import annotations

import math
import threading
import time

BASE_SECONDS = 2.0  # the refresh interval of a live chart with few viewers
SESSIONS_PER_BASE = 10  # up to this many watching sessions refresh every BASE_SECONDS
MOST_SECONDS = 10.0  # never slower than this
FORGET_AFTER_S = 2 * MOST_SECONDS  # a session not seen for this long has left the live pages


def interval(
    watchers: int,
    base: float = BASE_SECONDS,
    per_base: int = SESSIONS_PER_BASE,
    most: float = MOST_SECONDS,
) -> float:
    """Seconds between refreshes of a live chart when ``watchers`` sessions watch live runs:
    ``base`` up to ``per_base`` sessions, then ``base * watchers / per_base`` rounded up to a
    whole second, at most ``most`` (never below ``base``)."""
    if watchers <= per_base:
        return base
    return max(base, min(most, float(math.ceil(base * watchers / per_base))))


class Watchers:
    """Sessions that looked at a live run in the last ``forget_after_s`` seconds (thread-safe:
    every session's script thread notes itself)."""

    def __init__(self, forget_after_s: float = FORGET_AFTER_S) -> None:
        self.forget_after_s = forget_after_s
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def note(self, session: str, now: float | None = None) -> int:
        """Session ``session`` watches a live run now; returns how many do."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._seen[session] = now
            return self._count(now)

    def count(self, now: float | None = None) -> int:
        """How many sessions watched a live run in the last ``forget_after_s`` seconds."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return self._count(now)

    def _count(self, now: float) -> int:
        old = [s for s, t in self._seen.items() if now - t > self.forget_after_s]
        for s in old:
            del self._seen[s]
        return len(self._seen)
