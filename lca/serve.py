"""``python -m lca serve``: start the app, optionally in classroom mode, and say how to reach it.

A teacher needs two addresses before the class starts: the one for students and the one that
unlocks the teacher's session. The launcher makes the token (or takes ``LCA_TEACHER_TOKEN``),
prints both, and runs ``streamlit run app.py`` with the settings the app reads from its
environment. It is a convenience: ``LCA_CLASSROOM=1 streamlit run app.py`` works the same.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

from . import classroom

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now (for tests and benchmarks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_command(port: int, address: str = "127.0.0.1") -> list[str]:
    """``streamlit run app.py`` as the tests and benchmarks start it: headless, on ``port``,
    no usage statistics, no file watcher (run from the repository root)."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app.py",
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--server.address",
        address,
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
    ]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="start the app (streamlit run app.py), optionally in classroom mode",
        description="Start the LCA Lab app. With --classroom everyone can view, compare and "
        "play, and only the teacher (who opens the printed link with ?teacher=TOKEN) can "
        "train, stop, delete, upload or recover. The token is LCA_TEACHER_TOKEN if set, else "
        "made now.",
    )
    p.add_argument("--classroom", action="store_true", help="read-only except for the teacher")
    p.add_argument("--port", type=int, default=8501, help="port to listen on (default 8501)")
    p.add_argument(
        "--address",
        default=None,
        help="address to listen on (default: every interface, as Streamlit does)",
    )
    p.add_argument("--runs-dir", default=None, help="the runs folder (default ./runs)")


def plan(
    args: argparse.Namespace, environ: dict[str, str]
) -> tuple[list[str], dict[str, str], list[str]]:
    """(command, environment, lines to print) for ``args``; raises ValueError on a bad token."""
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, not {args.port}.")
    env = dict(environ)
    if args.runs_dir:
        env["LCA_RUNS_DIR"] = str(Path(args.runs_dir).resolve())
    host = args.address or "localhost"
    base = f"http://{host}:{args.port}/"
    lines = [f"LCA Lab: open {base}"]
    if args.classroom:
        token = env.get(classroom.ENV_TOKEN, "").strip() or secrets.token_urlsafe(9)
        if len(token) < classroom.MIN_TOKEN_CHARS:
            raise ValueError(
                f"{classroom.ENV_TOKEN} is {len(token)} characters long; use at least "
                f"{classroom.MIN_TOKEN_CHARS} so students cannot guess it."
            )
        env[classroom.ENV_MODE] = "1"
        env[classroom.ENV_TOKEN] = token
        lines = [
            f"LCA Lab classroom mode. Students open {base}",
            f"The teacher opens {base}?teacher={token}  (keep this link to yourself)",
        ]
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(ROOT / "app.py"),
        "--server.port",
        str(args.port),
        "--server.headless",
        "true",
    ]
    if args.address:
        cmd += ["--server.address", args.address]
    return cmd, env, lines


def cmd_serve(args: argparse.Namespace) -> int:
    cmd, env, lines = plan(args, dict(os.environ))
    for line in lines:
        print(line, flush=True)
    try:
        return subprocess.call(cmd, env=env, cwd=str(ROOT))  # noqa: S603
    except KeyboardInterrupt:
        return 130
