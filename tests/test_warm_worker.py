"""The warm worker (lca/warm.py): a pre-started job process that runs the next job the app
starts, so its first step comes at once. A job started on it must be a job like any other:
the same run file as a cold start, Stop, the cap, and no process left behind.

Every test here starts real processes (a worker warms up on the demo's digits, then trains a
tiny network): all are marked slow, and each is ended at teardown whatever happened.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from lca import jobs, warm
from lca.config import RunConfig
from lca.store import Reader

pytestmark = pytest.mark.slow

HANG_S = 300  # bounds only a hung process on a loaded machine; every wait follows progress
TIMING = ("steps/wall", "steps/seconds_lca", "series/steps/seconds_train")  # wall-clock columns


def tiny_config(steps: int = 12) -> RunConfig:
    return RunConfig(
        dataset="digits",
        model="mlp",
        model_options={"hidden": [8]},
        steps=steps,
        measure_size=120,
        eval_every=5,
        record="full",
        device="cpu",
    )


def _replacers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "lca-warm"]


@pytest.fixture
def warm_folder(runs_folder, monkeypatch):
    """A runs folder with warm workers on; at teardown every job is stopped, the threads that
    start replacement workers have finished and the idle worker is ended."""
    monkeypatch.setenv(warm.ENV_SWITCH, "1")
    warm.shutdown()
    try:
        yield runs_folder
    finally:
        for job in jobs.active(runs_folder):
            jobs.stop(job, wait_s=HANG_S, grace_s=5)
        for t in _replacers():
            t.join(HANG_S)
        warm.shutdown()


def _wait_until(predicate, what: str) -> None:
    """Poll ``predicate`` until true; the bound only catches a hang."""
    deadline = time.monotonic() + HANG_S
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def _steps(path: Path) -> int:
    try:
        with Reader(path) as r:
            return r.num_steps
    except Exception:  # noqa: BLE001 - being created
        return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for every purpose here
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _datasets(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: (
                out.__setitem__(name, obj[()])
                if isinstance(obj, h5py.Dataset) and name not in TIMING
                else None
            )
        )
    return out


def test_warm_start_writes_the_same_run_as_a_cold_start(warm_folder, monkeypatch):
    worker = jobs.prewarm()
    assert worker is not None
    job = jobs.start(tiny_config(), "warm.h5")
    assert job.pid == worker and job.worker, "the job did not run on the warm worker"
    job = jobs.wait(job, HANG_S)
    assert job.state == "complete", jobs.last_error(job)

    monkeypatch.setenv(warm.ENV_SWITCH, "0")  # the next start is cold
    cold = jobs.wait(jobs.start(tiny_config(), "cold.h5"), HANG_S)
    assert not cold.worker and cold.state == "complete", jobs.last_error(cold)

    warm_data, cold_data = _datasets(warm_folder / "warm.h5"), _datasets(warm_folder / "cold.h5")
    assert sorted(warm_data) == sorted(cold_data)
    assert len(warm_data["steps/loss"]) == 13
    for name, value in cold_data.items():
        np.testing.assert_array_equal(warm_data[name], value, err_msg=name)


def test_a_taken_worker_is_replaced_once_the_job_is_under_way(warm_folder):
    first = jobs.prewarm()
    job = jobs.start(tiny_config(), "a.h5")
    assert job.pid == first
    # A page view while the new run starts starts no worker: its warm-up would slow the run.
    assert jobs.prewarm() is None and warm.current() is None
    assert jobs.wait(job, HANG_S).state == "complete", jobs.last_error(job)
    _wait_until(lambda: warm.current() is not None, "the replacement worker")
    second = warm.current()
    assert second.pid != first and second.alive
    _wait_until(lambda: second.ready, "the replacement to warm up")
    assert warm.ready_pids(warm_folder) == [second.pid]
    nxt = jobs.start(tiny_config(), "b.h5")  # the replacement takes the next job
    assert nxt.pid == second.pid and nxt.worker == second.ticket
    assert jobs.wait(nxt, HANG_S).state == "complete", jobs.last_error(nxt)


def test_a_dead_worker_means_a_cold_start(warm_folder):
    pid = jobs.prewarm()
    os.kill(pid, signal.SIGKILL)
    _wait_until(lambda: not warm.current().alive, "the worker to die")
    job = jobs.start(tiny_config(), "cold.h5")
    assert job.pid != pid and not job.worker  # a new `python -m lca train` process
    assert jobs.wait(job, HANG_S).state == "complete", jobs.last_error(job)
    assert not _replacers()  # a cold start starts no worker by itself
    assert jobs.prewarm() not in (None, pid)  # the next page view brings a new one


def test_stop_stops_a_warm_started_job(warm_folder):
    pid = jobs.prewarm()
    job = jobs.start(tiny_config(steps=100_000), "long.h5")
    assert job.pid == pid
    _wait_until(lambda: _steps(warm_folder / "long.h5") >= 2, "two steps")
    assert jobs.is_live("long.h5")
    job = jobs.stop(job, wait_s=HANG_S)
    assert job.state == "interrupted" and not _alive(pid)
    with Reader(warm_folder / "long.h5") as r:
        assert r.status == "interrupted" and r.num_steps >= 2
    assert Path(job.out).read_text().startswith("interrupted:")  # its stdout, as a cold job's
    # Stop asks with SIGINT and escalates to SIGTERM after its grace; on a loaded machine the
    # job may still be closing its run when SIGTERM comes. Either way it says it was stopped.
    said = jobs.last_error(job) or ""
    assert said.startswith(("Interrupted after", "Stopped by SIGTERM after")), said


def test_the_job_cap_holds_with_a_warm_worker(warm_folder, monkeypatch):
    monkeypatch.setenv(jobs.MAX_JOBS_ENV, "1")
    monkeypatch.setattr(jobs, "REPLACE_AFTER_S", 0.0)  # the spare at once, not after a minute
    jobs.prewarm()
    a = jobs.start(tiny_config(steps=100_000), "a.h5")
    assert a.worker
    _wait_until(lambda: warm.current() is not None and warm.current().alive, "a replacement")
    spare = warm.current()
    with pytest.raises(jobs.JobLimitError, match="limit is 1"):
        jobs.start(tiny_config(), "b.h5")
    assert warm.current() is spare and spare.alive  # a refused start takes no worker
    assert [j.name for j in jobs.active()] == ["a.h5"]
    jobs.stop(a, wait_s=HANG_S)
    b = jobs.start(tiny_config(), "b.h5")
    assert b.pid == spare.pid
    assert jobs.wait(b, HANG_S).state == "complete"


def test_an_idle_worker_ends_with_the_process_that_started_it(tmp_path):
    """No leftover process: a server killed outright (SIGKILL, no clean-up at all) takes its
    idle worker with it, and ``shutdown`` ends one at once."""
    script = (
        "import sys, time\n"
        "from lca import jobs\n"
        "print(jobs.prewarm(sys.argv[1]), flush=True)\n"
        "time.sleep(3600)\n"
    )
    env = {**os.environ, warm.ENV_SWITCH: "1", "PYTHONPATH": str(warm.PROJECT_ROOT)}
    server = subprocess.Popen(  # noqa: S603
        [sys.executable, "-c", script, str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    worker = None
    try:
        worker = int(server.stdout.readline())
        assert _alive(worker)
        server.kill()
        server.wait()
        deadline = time.monotonic() + HANG_S
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(worker)
    finally:
        server.stdout.close()
        if server.poll() is None:
            server.kill()
            server.wait()
        if worker is not None and _alive(worker):
            os.kill(worker, signal.SIGKILL)


def test_shutdown_ends_the_idle_worker(warm_folder):
    pid = jobs.prewarm()
    assert jobs.prewarm() == pid  # one per server: a page view does not start another
    warm.shutdown()
    assert warm.current() is None and not _alive(pid)


def test_no_warm_worker_when_switched_off(runs_folder, monkeypatch):
    monkeypatch.setenv(warm.ENV_SWITCH, "0")
    assert jobs.prewarm() is None and warm.current() is None
