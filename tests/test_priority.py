"""The app server's page runs give way to training: they run at a lower CPU priority, while the
jobs and warm workers it starts train at the server's original priority (lca.priority).

Lowering is for good (a process cannot raise it back), so everything that lowers runs in a
subprocess, ended at teardown; AppTest (the test process itself) must never be lowered.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from lca import priority

ROOT = Path(__file__).resolve().parent.parent
HANG_S = 300  # bounds only a hung process on a loaded machine; waits follow progress


def nice_of(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


def test_the_setting(monkeypatch):
    assert priority.server_nice({}) == priority.DEFAULT_NICE == 10
    assert priority.server_nice({priority.ENV_NICE: "0"}) == 0
    assert priority.server_nice({priority.ENV_NICE: " 4 "}) == 4
    assert priority.server_nice({priority.ENV_NICE: "40"}) == 19
    assert priority.server_nice({priority.ENV_NICE: "-5"}) == 0  # never raised
    assert priority.server_nice({priority.ENV_NICE: "high"}) == priority.DEFAULT_NICE


def test_without_lowering_spawn_calls_here():
    assert priority.lowered() == 0  # nothing in the test process lowers itself
    assert priority.spawn(threading.get_ident) == threading.get_ident()
    with pytest.raises(ValueError, match="boom"):
        priority.spawn(lambda: (_ for _ in ()).throw(ValueError("boom")))


def test_apptest_runs_of_the_app_never_lower_the_test_process(runs_folder):
    before = nice_of(threading.main_thread().native_id)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert priority.lowered() == 0
    assert nice_of(threading.main_thread().native_id) == before


SCRIPT = textwrap.dedent(
    """
    import json, os, subprocess, sys, threading
    from dataclasses import replace
    from pathlib import Path

    from lca import jobs, priority, warm

    folder = Path(sys.argv[1])
    base = os.getpriority(os.PRIO_PROCESS, 0)
    nice = lambda pid: os.getpriority(os.PRIO_PROCESS, pid)
    out = {"base": base}
    # As in the server: the first page run (a thread the main thread made) lowers itself by 5.
    def first_run():
        priority.lower_page_run(5)
        out["first_run"] = nice(threading.get_native_id())

    first = threading.Thread(target=first_run)
    first.start()
    first.join()
    out["lowered"] = priority.lowered()
    out["main"] = nice(threading.main_thread().native_id)
    made = []

    def page_run():  # a later page run: a new thread of the main thread, as Streamlit makes
        out["page_run_starts"] = nice(threading.get_native_id())
        priority.lower_page_run()  # each run lowers itself as it starts (app.py, fragments)
        out["page_run"] = nice(threading.get_native_id())
        plain = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        made.append(plain)
        out["plain_child"] = nice(plain.pid)
        job = jobs.start(replace(jobs.demo_config(), steps=5), "nice.h5", folder)
        out["job"] = nice(job.pid)
        jobs.stop(job, wait_s=60, grace_s=1)
        worker = warm.ensure(jobs._job_env(), folder)
        out["warm_worker"] = nice(worker.pid)
        warm.shutdown()

    t = threading.Thread(target=page_run)
    t.start()
    t.join()
    for p in made:
        p.kill()
        p.wait()
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_jobs_and_warm_workers_keep_the_priority_page_runs_lose(tmp_path, processes):
    if not priority.supported():
        pytest.skip("per-thread nice values are Linux's")
    folder = tmp_path / "runs"
    folder.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LCA_RUNS_DIR": str(folder)}
    env[priority.ENV_NICE] = "0"  # the script lowers by hand, by 5
    env["LCA_WARM_WORKER"] = "1"
    proc = processes.start(
        [sys.executable, "-c", SCRIPT, str(folder)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=HANG_S)
    assert proc.returncode == 0, err[-2000:]
    seen = json.loads(out.strip().splitlines()[-1])
    base = seen["base"]
    if base + 5 > 19:
        pytest.skip("the test process already runs at the lowest priority")
    assert seen["lowered"] == 5
    assert seen["first_run"] == base + 5
    assert seen["main"] == base  # the event loop (static files, sending) keeps its priority
    assert seen["page_run_starts"] == base  # a new run starts at the main thread's priority...
    assert seen["page_run"] == base + 5  # ... and lowers itself, by the amount set first
    assert seen["plain_child"] == base + 5  # what a lowered thread starts by itself is lowered
    assert seen["job"] == base  # ... but a job trains at the server's own priority
    assert seen["warm_worker"] == base  # and so does the warm worker that runs the next job


def _children(pid: int) -> list[int]:
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    out: list[int] = []
    for task in tasks:
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


@pytest.mark.slow
def test_a_real_server_lowers_its_page_runs_not_its_warm_worker(tmp_path, processes):
    """``streamlit run app.py`` (a real Runtime, not AppTest): its page runs run 10 lower, its
    main thread (the event loop) does not, nor the warm worker it starts for the next job."""
    import urllib.request

    if not priority.supported():
        pytest.skip("per-thread nice values are Linux's")
    from lca.serve import app_command, free_port

    folder = tmp_path / "runs"
    folder.mkdir()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LCA_RUNS_DIR": str(folder)}
    env.pop(priority.ENV_NICE, None)  # the default
    env["LCA_WARM_WORKER"] = "1"
    server = processes.start(
        app_command(port), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    base = nice_of(server.pid)
    if base + priority.DEFAULT_NICE > 19:
        pytest.skip("the test process already runs at a low priority")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + HANG_S
    while True:
        assert server.poll() is None, "the server exited"
        assert time.monotonic() < deadline, "the server never answered"
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.2)
    assert nice_of(server.pid) == base  # nothing lowered before a page runs

    import asyncio

    import websockets
    from streamlit.proto.BackMsg_pb2 import BackMsg

    def thread_nices() -> list[int]:
        """The nice values of the server's threads alive now (a page run's thread among them
        while one runs; Python does not name the system's threads, so all are read)."""
        out = []
        for task in Path(f"/proc/{server.pid}/task").iterdir():
            try:
                out.append(int((task / "stat").read_text().rsplit(")", 1)[1].split()[16]))
            except (OSError, ValueError, IndexError):
                continue  # the thread ended while read
        return out

    seen: list[int] = []

    async def open_home() -> None:
        """Ask for the Home page again and again, looking at the script threads while each run
        is under way, until a lowered page run was seen and the warm worker started."""
        ws = await websockets.connect(
            url.replace("http", "ws") + "/_stcore/stream", subprotocols=["streamlit"]
        )
        msg = BackMsg()
        msg.rerun_script.query_string = ""
        msg.rerun_script.page_name = ""
        while not _children(server.pid) or base + priority.DEFAULT_NICE not in seen:
            assert time.monotonic() < deadline, "no lowered page run seen / no warm worker"
            await ws.send(msg.SerializeToString())
            for _ in range(40):
                seen.extend(thread_nices())
                try:
                    await asyncio.wait_for(ws.recv(), timeout=0.05)
                except TimeoutError:
                    pass
        await ws.close()

    asyncio.run(open_home())
    assert base + priority.DEFAULT_NICE in seen  # a page run, lowered
    assert nice_of(server.pid) == base  # the main thread (event loop) is not
    workers = _children(server.pid)
    assert workers and all(nice_of(pid) == base for pid in workers)
