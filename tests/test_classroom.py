"""Classroom mode: students view, compare and play; only a session the teacher unlocked trains,
stops, deletes, uploads or recovers. Without the mode nothing is locked."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from lca import classroom, jobs
from pages.shared import TEACHER_KEY

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
TOKEN = "teach-me-lca-2026"


@pytest.fixture
def class_mode(monkeypatch, runs_folder):
    monkeypatch.setenv(classroom.ENV_MODE, "1")
    monkeypatch.setenv(classroom.ENV_TOKEN, TOKEN)
    return runs_folder


def app() -> AppTest:
    return AppTest.from_file(APP, default_timeout=60)


def button(at: AppTest, key: str):
    return at.button(key=key)


def sidebar_badges(at: AppTest) -> str:
    """st.badge is drawn as markdown (":gray-badge[...]")."""
    return " ".join(str(m.value) for m in at.sidebar.markdown if "-badge[" in str(m.value))


def test_mode_and_token_rules(monkeypatch):
    monkeypatch.delenv(classroom.ENV_MODE, raising=False)
    assert not classroom.enabled()
    for on in ("1", "true", "YES", "on"):
        monkeypatch.setenv(classroom.ENV_MODE, on)
        assert classroom.enabled()
    monkeypatch.setenv(classroom.ENV_MODE, "0")
    assert not classroom.enabled()
    monkeypatch.setenv(classroom.ENV_TOKEN, TOKEN)
    assert classroom.is_token(TOKEN) and not classroom.is_token(TOKEN[:-1])
    assert not classroom.is_token("") and not classroom.is_token(None)
    monkeypatch.setenv(classroom.ENV_TOKEN, "abc")
    with pytest.raises(ValueError, match="at least 8"):
        classroom.token()
    monkeypatch.delenv(classroom.ENV_TOKEN)
    made = classroom.token()
    assert len(made) >= classroom.MIN_TOKEN_CHARS and classroom.token() == made
    with pytest.raises(ValueError, match="Unknown"):
        classroom.locked_sentence("format the disk")


def test_students_view_but_cannot_change_anything(class_mode, make_run):
    shutil.copy(make_run(), class_mode / "lesson.h5")
    at = app().run()
    assert not at.exception
    assert button(at, "home_demo").disabled
    assert "Classroom: view, compare and play" in sidebar_badges(at)
    at.switch_page("pages/runs.py").run()
    assert not at.exception
    assert button(at, "runs_delete").disabled and not button(at, "runs_open").disabled
    assert not at.get("file_uploader")
    assert any("only the teacher can upload" in str(c.value) for c in at.caption)
    at.switch_page("pages/train.py").run()
    assert not at.exception
    assert button(at, "train_start").disabled
    # A disabled button is not a lock: a click a hostile client sends anyway changes nothing.
    start = at.button(key="train_start")
    start.proto.disabled = False
    start.click().run()
    assert not jobs.active(class_mode)
    # Analysis pages are open to everyone.
    at.switch_page("pages/loss.py").run()
    assert not at.exception and at.get("plotly_chart")


def test_teacher_token_unlocks_the_session(class_mode, make_run):
    shutil.copy(make_run(), class_mode / "lesson.h5")
    at = app()
    at.query_params["teacher"] = "wrong-token-123"
    at.run()
    assert any("not right" in str(w.value) for w in at.sidebar.warning)
    assert button(at, "home_demo").disabled
    assert "teacher" not in at.query_params  # dropped from the address either way
    at = app()  # the teacher opens the link with the token: a new browser session
    at.query_params["teacher"] = TOKEN
    at.run()
    assert "teacher" not in at.query_params
    assert "Teacher: you can train" in sidebar_badges(at)
    assert not button(at, "home_demo").disabled
    at.switch_page("pages/runs.py").run()
    assert not button(at, "runs_delete").disabled and at.get("file_uploader")
    # Locking again makes this session a student's.
    assert at.session_state[TEACHER_KEY]
    at.session_state[TEACHER_KEY] = False
    at.switch_page("pages/runs.py").run()
    assert button(at, "runs_delete").disabled


def test_without_the_mode_nothing_is_locked(runs_folder, make_run, monkeypatch):
    monkeypatch.delenv(classroom.ENV_MODE, raising=False)
    shutil.copy(make_run(), runs_folder / "mine.h5")
    at = app().run()
    assert not button(at, "home_demo").disabled
    assert "Classroom" not in sidebar_badges(at)
    at.switch_page("pages/runs.py").run()
    assert not button(at, "runs_delete").disabled and at.get("file_uploader")


def test_serve_launcher_prints_both_links_and_passes_the_mode(monkeypatch, tmp_path):
    from lca.cli import _Parser
    from lca.serve import add_parser, plan

    parser = _Parser(prog="python -m lca")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["serve", "--classroom", "--port", "8642", "--runs-dir", str(tmp_path)]
    )
    cmd, env, lines = plan(args, {})
    token = env[classroom.ENV_TOKEN]
    assert env[classroom.ENV_MODE] == "1" and len(token) >= classroom.MIN_TOKEN_CHARS
    assert env["LCA_RUNS_DIR"] == str(tmp_path.resolve())
    assert lines[-1].endswith(f":8642/?teacher={token}  (keep this link to yourself)")
    assert cmd[cmd.index("--server.port") + 1] == "8642"
    assert any(part.endswith("app.py") for part in cmd)
    # A token from the environment is kept; a short one is refused in one sentence.
    assert plan(args, {classroom.ENV_TOKEN: TOKEN})[1][classroom.ENV_TOKEN] == TOKEN
    with pytest.raises(ValueError, match="at least 8"):
        plan(args, {classroom.ENV_TOKEN: "short"})
    plain = parser.parse_args(["serve"])
    assert classroom.ENV_MODE not in plan(plain, {})[1]
