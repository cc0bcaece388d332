"""A class opening a shared link on a server nobody has visited yet: every session gets the run.

On a fresh server Streamlit treats ``pages/`` as an old-style multipage folder until
``st.navigation`` has run once, so the first page runs are the bare page script, without app.py
(no sidebar, no run picker). Sessions that opened ``/loss?run=…`` at the same moment as the very
first one lost their run and were told to pick one. The clients here speak the app's websocket
protocol (benchmarks/classroom.py) and open the page together, right after the server starts.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from lca.serve import app_command, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SESSIONS = 3


@pytest.fixture
def classroom_client(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import classroom

    # A failure bound, not a speed target: the server's first run imports torch and plotly.
    monkeypatch.setattr(classroom, "VIEW_TIMEOUT_S", 600.0)
    return classroom


def wait_healthy(proc: subprocess.Popen, url: str, log: Path) -> None:
    """Until the server answers its health check (or has exited)."""
    while proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    pytest.fail("streamlit exited: " + log.read_text()[-2000:])


def test_sessions_opening_a_link_together_on_a_fresh_server_get_its_run(
    tmp_path, make_run, processes, classroom_client
):
    runs_dir = tmp_path / "runs"
    make_run(classroom_client.RUN, folder=runs_dir)
    port = free_port()
    env = {
        **os.environ,
        "LCA_RUNS_DIR": str(runs_dir),
        "PYTHONPATH": str(ROOT),
        "LCA_WARM_WORKER": "0",
    }
    log = tmp_path / "streamlit.log"
    with log.open("w") as out:
        proc = processes.start(
            app_command(port), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(proc, url, log)

    sessions = [classroom_client.Session() for _ in range(SESSIONS)]
    pages = ["loss"]

    async def together() -> None:
        until = time.monotonic() + 3600  # ``views=1`` ends each session after its page
        await asyncio.gather(
            *(classroom_client.ws_session(url, pages, until, 0.0, s, views=1) for s in sessions)
        )

    asyncio.run(together())
    for s in sessions:
        assert s.failures == [], s.failures  # e.g. "no chart; the page said: Pick a run…"
        assert [p for p, _ in s.views] == ["loss"]
