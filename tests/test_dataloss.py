"""Nothing is lost without the user's say: one writer per run file, no silent overwrite, no
delete or recover of a run being written, a full disk and SIGTERM end a run with every whole
step kept, Stop stops even a trainer that ignores Ctrl-C, and every CLI error is one sentence.

Processes are real (``python -m lca train`` or a tiny writer script) because the guarantees are
about processes: locks that die with their holder, signals, exit codes, what lands on stderr.
Every wait polls the run file (or a pipe) for progress; timeouts only guard against hangs. Every
process a test starts is ended in a fixture's teardown, whatever happens.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from torch import nn

import lca
from lca import jobs, runs
from lca.config import RunConfig
from lca.store import RunBusyError, Writer
from lca.store.lock import holder, lock_path

ROOT = Path(__file__).resolve().parents[1]
TINY = (
    "--dataset",
    "digits",
    "--model",
    "mlp",
    "--model-option",
    "hidden=[16]",
    "--measure-size",
    "300",
    "--quiet",
)
HANG_GUARD_S = 120  # bound on every wait: only there so a broken build fails instead of hanging


# ---------------------------------------------------------------------------------------------
# Helpers and fixtures.


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    e = dict(os.environ)
    e.update(
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        LCA_RUNS_DIR=str(tmp_path / "runs"),
        PYTHONPATH=str(ROOT),
    )
    return e


@pytest.fixture
def procs():
    """Processes a test starts; each one still running is killed (and reaped) at teardown."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.communicate()


def cli(env: dict[str, str], *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lca", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )


def start(procs: list, env: dict[str, str], *args, **popen) -> subprocess.Popen:
    """``python -m lca ARGS`` in the background, SIGINT at its default as in a terminal."""
    popen.setdefault("preexec_fn", lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    p = subprocess.Popen(
        [sys.executable, "-m", "lca", *map(str, args)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )
    procs.append(p)
    return p


def steps_in(path: Path) -> int | None:
    """Whole steps a reader sees in the live file now (None while it cannot be read)."""
    if not path.exists():
        return None
    try:
        with lca.open_run(path) as r:
            return r.num_steps
    except lca.RunFileError:  # caught mid-rename or mid-flush: look again
        return None


def wait_for_steps(proc: subprocess.Popen, path: Path, at_least: int) -> int:
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended early (rc {proc.returncode}): {proc.communicate()}")
        t = steps_in(path)
        if t is not None and t >= at_least:
            return t
        time.sleep(0.05)
    pytest.fail(f"{path.name} did not reach {at_least} steps")


def one_error_line(result_stderr: str) -> str:
    assert "Traceback" not in result_stderr, result_stderr
    lines = [ln for ln in result_stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result_stderr
    line = lines[0]
    assert "Errno" not in line and "errno" not in line and ".tmp" not in line, line
    return line


def whole_steps(path: Path) -> tuple[str, int]:
    """(status, T) read with plain h5py, checking every per-step dataset agrees on T."""
    with h5py.File(path, "r") as f:
        status = f["status"][()].decode().rstrip("\x00")
        t = f["steps/loss"].shape[0] - 1
        lengths = set()

        def visit(name, obj):
            if (
                isinstance(obj, h5py.Dataset)
                and obj.maxshape[:1] == (None,)
                and (
                    name.split("/")[0] in ("steps", "layers", "params", "units", "series")
                    and name != "steps/loss"
                )
            ):
                lengths.add(obj.shape[0])

        f.visititems(visit)
        assert lengths == {t}, (lengths, t)
        assert np.isfinite(f["steps/loss"][()]).all() and np.isfinite(f["layers/lca"][()]).all()
    return status, t


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3))


def _tracker(writer: Writer) -> lca.Tracker:
    g = np.random.default_rng(0)
    import torch

    x = torch.tensor(g.normal(size=(16, 4)), dtype=torch.float32)
    y = torch.tensor(g.integers(0, 3, 16))
    return lca.Tracker(_model(), nn.functional.cross_entropy, (x, y), writer=writer)


# ---------------------------------------------------------------------------------------------
# One writer per file (in one process: fast).


def test_a_second_writer_in_the_same_process_is_refused(tmp_path):
    path = tmp_path / "a.h5"
    first = Writer(path)
    early = Writer(path, overwrite=True)  # made before the first began: refused at begin
    tracker = _tracker(first)
    with tracker.step():
        pass
    assert holder(path) is not None and holder(path).pid == os.getpid()
    with pytest.raises(RunBusyError) as e:
        Writer(path, overwrite=True)
    assert "a.h5" in str(e.value) and str(os.getpid()) in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(RunBusyError):
        _tracker(early).start()
    with pytest.raises(RunBusyError):
        lca.recover(path)
    with pytest.raises(runs.RunBusyError):
        runs.delete("a.h5", tmp_path)
    tracker.close()
    assert holder(path) is None and not lock_path(path).exists()  # nothing left behind
    with lca.open_run(path) as r:  # the first writer's run is whole
        assert r.status == "complete" and r.num_steps == 1
    with pytest.raises(lca.RunFileError, match="already exists"):
        Writer(path)
    second = Writer(path, overwrite=True)  # free again: replacing is allowed when asked
    t2 = _tracker(second)
    for _ in range(2):
        with t2.step():
            pass
    t2.close()
    with lca.open_run(path) as r:
        assert r.num_steps == 2
    runs.delete("a.h5", tmp_path)
    assert not path.exists() and not lock_path(path).exists()


# ---------------------------------------------------------------------------------------------
# The CLI: --out, --overwrite, two writers, recover, SIGTERM.


@pytest.mark.slow
def test_train_out_refuses_an_existing_run_unless_overwrite(env, tmp_path):
    out = tmp_path / "a.h5"
    assert cli(env, "train", *TINY, "--steps", "3", "--out", out).returncode == 0
    before = out.read_bytes()
    refused = cli(env, "train", *TINY, "--steps", "5", "--out", out)
    assert refused.returncode == 2
    line = one_error_line(refused.stderr)
    assert str(out) in line and "--overwrite" in line
    assert out.read_bytes() == before  # untouched
    replaced = cli(env, "train", *TINY, "--steps", "5", "--out", out, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert whole_steps(out) == ("complete", 5)
    assert not list(tmp_path.glob(".*"))  # no lock or temporary file left behind


@pytest.mark.slow
def test_nonsense_inputs_are_refused_or_adjusted_with_one_line(env, tmp_path):
    for bad in ("x.txt", "x"):
        r = cli(env, "train", *TINY, "--steps", "3", "--out", tmp_path / bad)
        assert r.returncode == 2
        assert ".h5" in one_error_line(r.stderr)
        assert not (tmp_path / bad).exists()
    r = cli(env, "allocate", tmp_path / "none.h5", "--out", tmp_path / "y.txt")
    assert r.returncode == 2 and ".h5" in one_error_line(r.stderr)

    out = tmp_path / "big.h5"
    r = cli(
        env,
        "train",
        *TINY,
        "--steps",
        "3",
        "--batch-size",
        "100000",
        "--measure-size",
        "1000000000",
        "--out",
        out,
    )
    assert r.returncode == 0, r.stderr
    notices = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(notices) == 2 and all(ln.startswith("notice: ") for ln in notices), r.stderr
    assert "100000" in notices[0] and "1,000,000,000" in notices[1]
    with lca.open_run(out) as rd:  # the file records what was actually used
        n = rd.config["batch_size"]
        assert rd.config["measure_size"] is None and rd.attrs["measure_size"] == n
    assert f"all {n:,}" in notices[0] and 1000 < n < 100000


@pytest.mark.slow
def test_two_trains_with_one_out_the_second_is_refused_the_first_keeps_its_run(
    env, tmp_path, procs
):
    out = tmp_path / "shared.h5"
    first = start(procs, env, "train", *TINY, "--steps", "100000", "--out", out)
    wait_for_steps(first, out, at_least=1)
    for extra in ((), ("--overwrite",)):
        second = cli(env, "train", *TINY, "--steps", "5", "--out", out, *extra)
        assert second.returncode == 2
        line = one_error_line(second.stderr)
        assert str(out) in line and f"process {first.pid}" in line and "being written" in line
    rec = cli(env, "recover", out)
    assert rec.returncode == 2
    assert f"process {first.pid}" in one_error_line(rec.stderr)
    seen = wait_for_steps(first, out, at_least=1)
    first.send_signal(signal.SIGINT)  # the first run ends as its user wants, all steps kept
    stdout, stderr = first.communicate(timeout=HANG_GUARD_S)
    assert first.returncode == 130, stderr
    m = re.match(r"interrupted: Interrupted after (\d+) steps\.", stdout.splitlines()[-1])
    assert m, stdout
    assert whole_steps(out) == ("interrupted", int(m[1])) and int(m[1]) >= seen


@pytest.mark.slow
def test_sigterm_is_handled_like_ctrl_c(env, tmp_path, procs):
    out = tmp_path / "term.h5"
    proc = start(procs, env, "train", *TINY, "--steps", "100000", "--out", out)
    seen = wait_for_steps(proc, out, at_least=5)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 143, (stdout, stderr)
    assert "Traceback" not in stderr and not stderr.strip(), stderr
    m = re.match(r"interrupted: Stopped by SIGTERM after (\d+) steps\.", stdout.splitlines()[-1])
    assert m, stdout
    status, t = whole_steps(out)  # closed by the writer itself: plain h5py opens it
    assert status == "interrupted" and t >= seen and t == int(m[1])
    assert holder(out) is None


@pytest.mark.slow
def test_recover_names_the_program_that_holds_the_file_open(env, tmp_path, procs, make_run):
    path = tmp_path / "held.h5"
    shutil.copy(make_run(), path)
    code = (
        "import h5py, sys; f = h5py.File(sys.argv[1], 'r'); print('open', flush=True); "
        "sys.stdin.read()"
    )
    other = subprocess.Popen(
        [sys.executable, "-c", code, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    procs.append(other)
    assert other.stdout.readline().strip() == "open"
    r = cli(env, "recover", path)
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert f"process {other.pid}" in line and "held.h5" in line and "close it" in line


# ---------------------------------------------------------------------------------------------
# The app cannot delete or recover a run a terminal is writing.


@pytest.mark.slow
def test_a_run_written_from_a_terminal_cannot_be_deleted_or_recovered_in_the_app(
    env, runs_folder, procs
):
    from streamlit.testing.v1 import AppTest

    env["LCA_RUNS_DIR"] = str(runs_folder)
    out = runs_folder / "cli.h5"
    proc = start(procs, env, "train", *TINY, "--steps", "100000", "--out", out)
    wait_for_steps(proc, out, at_least=1)
    reason = runs.busy_reason("cli.h5")
    assert reason is not None and f"process {proc.pid}" in reason
    with pytest.raises(runs.RunBusyError):
        runs.delete("cli.h5")
    assert out.exists()

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.switch_page("pages/runs.py").run()
    assert not at.exception
    at.selectbox(key="runs_pick").set_value("cli.h5").run()
    delete = at.button(key="runs_delete")
    recover = at.button(key="runs_recover")
    assert delete.disabled and recover.disabled
    assert "being written" in delete.help and "being written" in recover.help
    assert out.exists() and proc.poll() is None

    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=HANG_GUARD_S)
    assert runs.busy_reason("cli.h5") is None
    runs.delete("cli.h5")
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# A full disk (a small tmpfs; needs root to mount it).


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(folder: Path) -> None:
    """Write zeros into folder/filler until the disk is full."""
    block = b"\0" * 65536
    with open(folder / "filler", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(block)
        except OSError:
            pass
        for size in (4096, 512, 1):  # the last partial blocks too
            try:
                while True:
                    fh.write(block[:size])
            except OSError:
                pass


@pytest.mark.slow
def test_a_full_disk_fails_the_run_keeping_every_whole_step(env, small_disk, procs):
    out = small_disk / "x.h5"
    proc = start(procs, env, "train", *TINY, "--steps", "2000", "--record", "full", "--out", out)
    seen = wait_for_steps(proc, out, at_least=40)
    fill(small_disk)
    stdout, stderr = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 1, (stdout, stderr)
    line = one_error_line(stderr)
    assert f"The disk holding {out} is full after step" in line and "free space" in line
    kept = int(re.search(r"after step (\d+)", line)[1])
    status, t = whole_steps(out)  # closed cleanly: plain h5py opens it, all lengths agree
    assert status == "failed" and t == kept >= seen
    assert "already clean" in lca.recover(out)
    with lca.open_run(out) as r:
        assert r.num_steps == t and r.status == "failed"
        name = r.names[0]
        np.testing.assert_allclose(
            r.param_totals(name), r.param_lca(name).astype(np.float64).sum(0), rtol=1e-9, atol=1e-12
        )
    assert not lock_path(out).exists() and not list(small_disk.glob(".*.tmp"))


# ---------------------------------------------------------------------------------------------
# Stop escalates: SIGINT, then SIGTERM, then SIGKILL.


def _started_with_sigint_ignored(config: RunConfig) -> jobs.Job:
    """jobs.start from a parent whose SIGINT is ignored (a server started in the background):
    the trainer inherits it and ignores Ctrl-C."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return jobs.start(config)
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture
def stop_jobs():
    started: list[jobs.Job] = []
    yield started
    for j in started:
        if jobs.poll(j).alive:
            with __import__("contextlib").suppress(ProcessLookupError):
                os.kill(j.pid, signal.SIGKILL)
            jobs.wait(j, HANG_GUARD_S)


@pytest.mark.slow
def test_stop_reaches_a_trainer_that_ignores_sigint(runs_folder, stop_jobs):
    config = RunConfig.from_dict(
        {
            "dataset": "digits",
            "model": "mlp",
            "model_options": {"hidden": [16]},
            "steps": 100000,
            "measure_size": 300,
            "record": "layers",
            "device": "cpu",
        }
    )
    job = _started_with_sigint_ignored(config)
    stop_jobs.append(job)
    path = Path(job.path)
    deadline = time.monotonic() + HANG_GUARD_S
    while (steps_in(path) or 0) < 3:
        assert jobs.poll(job).alive, jobs.last_error(jobs.poll(job))
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.05)
    # SIGINT is ignored; SIGTERM after the grace period is handled like Ctrl-C: the trainer
    # says so and closes its file itself. (Its exit code is 143, unless a loaded machine makes
    # the interpreter's own shutdown outlast the next grace period: then SIGKILL ends it.)
    job = jobs.stop(job, wait_s=HANG_GUARD_S, grace_s=15)
    assert not job.alive and job.state == "interrupted"
    assert job.returncode in (143, -signal.SIGKILL), job.returncode
    said = Path(job.out).read_text().strip().splitlines()[-1]
    assert said.startswith("interrupted: Stopped by SIGTERM after"), said
    status, t = whole_steps(path)
    assert status == "interrupted" and t >= 3


WRITER_IGNORING_SIGNALS = textwrap.dedent("""
    import signal, sys, time
    import numpy as np, torch
    from torch import nn
    import lca
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    x = torch.randn(16, 4); y = torch.randint(0, 3, (16,))
    model = nn.Linear(4, 3)
    w = lca.Writer(sys.argv[1], record="full", chunk_rows=1)
    t = lca.Tracker(model, nn.functional.cross_entropy, (x, y), writer=w)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(4):
        opt.zero_grad(); nn.functional.cross_entropy(model(x), y).backward()
        with t.step():
            opt.step()
    w.flush()
    print("ready", flush=True)
    while True:
        time.sleep(1)
""")


@pytest.mark.slow
def test_stop_kills_what_ignores_sigint_and_sigterm_and_recovers_its_file(tmp_path, procs):
    path = tmp_path / "stubborn.h5"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER_IGNORING_SIGNALS, str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    procs.append(proc)
    assert proc.stdout.readline().strip() == "ready"
    jobs._POPENS[proc.pid] = proc  # noqa: SLF001 - a job of this process, as jobs.start makes
    job = jobs.Job(
        name=path.name,
        path=str(path),
        pid=proc.pid,
        started=time.time(),
        log="",
        out="",
        config_file="",
        steps=4,
        folder=str(tmp_path),
    )
    assert holder(path) is not None
    job = jobs.stop(job, wait_s=HANG_GUARD_S, grace_s=0.2)
    assert not job.alive and job.returncode == -signal.SIGKILL
    assert job.state == "interrupted"  # asked to stop: not "failed"
    assert holder(path) is None  # the lock died with the process
    status, t = whole_steps(path)  # recovered: closed cleanly, one T everywhere
    assert status == "interrupted" and t == 4
