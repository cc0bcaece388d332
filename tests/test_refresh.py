"""Live charts refresh every 2 s for a few viewers and less often for a whole class
(lca.refresh), so the server draws a live run's figures at most once per interval; the
teacher's projector keeps the 2 s pace in classroom mode."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from lca import classroom, refresh
from pages import shared


def test_the_interval_follows_the_class_size():
    base, per = refresh.BASE_SECONDS, refresh.SESSIONS_PER_BASE
    assert [refresh.interval(n) for n in (0, 1, per)] == [base] * 3
    assert refresh.interval(per + 1) > base
    assert refresh.interval(3 * per) == 3 * base  # 30 students: every 6 s
    sizes = range(0, 500, 7)
    paces = [refresh.interval(n) for n in sizes]
    assert paces == sorted(paces)  # more viewers never refresh faster
    assert max(paces) == refresh.MOST_SECONDS
    # The refreshes the whole class asks for per second stay bounded (until the slowest pace).
    most_bounded = int(per * refresh.MOST_SECONDS / base)  # 50 sessions
    assert all(n / refresh.interval(n) <= per / base for n in range(1, most_bounded + 1))
    assert refresh.interval(45, base=1.0, per_base=10, most=60.0) == 5.0


def test_watchers_count_sessions_once_and_forget_those_that_left():
    w = refresh.Watchers(forget_after_s=20.0)
    assert w.count(now=0.0) == 0
    assert w.note("a", now=0.0) == 1
    assert w.note("a", now=1.0) == 1  # the same session again
    assert w.note("b", now=2.0) == 2
    assert w.count(now=21.5) == 1  # "a" last seen at 1.0: gone; "b" (2.0) still there
    assert w.count(now=30.0) == 0


def _pace_page() -> None:
    import streamlit as st

    from pages.shared import live_seconds, live_window

    st.write(f"pace {live_seconds()} window {live_window()}")


@pytest.fixture
def many_watchers(monkeypatch):
    """The server's watchers, as if 29 other sessions watched a live run now."""
    watchers = refresh.Watchers()
    for i in range(29):
        watchers.note(f"student-{i}")
    monkeypatch.setattr(shared, "WATCHERS", watchers)
    return watchers


def test_a_class_of_30_refreshes_every_6_s_and_shares_versions_as_long(many_watchers):
    at = AppTest.from_function(_pace_page).run()
    assert not at.exception
    assert at.markdown[0].value == "pace 6.0 window 6.0"  # 29 others and this session
    assert many_watchers.count() == 30


def test_alone_a_live_chart_refreshes_every_2_s(monkeypatch):
    monkeypatch.setattr(shared, "WATCHERS", refresh.Watchers())
    at = AppTest.from_function(_pace_page).run()
    assert at.markdown[0].value == f"pace {shared.LIVE_SECONDS} window {shared.LIVE_SECONDS}"


def test_the_teachers_projector_keeps_the_2_s_pace(many_watchers, monkeypatch):
    monkeypatch.setenv(classroom.ENV_MODE, "1")
    monkeypatch.setenv(classroom.ENV_TOKEN, "teach-me-lca-2026")
    at = AppTest.from_function(_pace_page)
    at.session_state[shared.TEACHER_KEY] = True
    at.run()
    assert at.markdown[0].value == f"pace {shared.LIVE_SECONDS} window {shared.LIVE_SECONDS}"
    student = AppTest.from_function(_pace_page).run()  # a student, same class
    assert student.markdown[0].value == "pace 6.0 window 6.0"


def test_a_version_is_shared_for_the_window_while_the_writer_writes():
    writer = (1, 2, 3)
    key = ("test-window", id(object()))
    first = shared.shared_version(key, (10, 100), writer, window=3600.0)
    assert first == (10, 100)
    # The file grew; within the window every session gets the first version.
    assert shared.shared_version(key, (11, 150), writer, window=3600.0) == (10, 100)
    # Past a (zero-length) window, the new version.
    assert shared.shared_version(key, (12, 200), writer, window=0.0) == (12, 200)
    # The writer is done: the exact version at once.
    assert shared.shared_version(key, (13, 250), None, window=3600.0) == (13, 250)
