"""The command line as a user meets it: ``python -m lca ...`` in a real subprocess.

Why subprocesses: exit codes, what lands on stdout/stderr (one ``error:`` line, never a
traceback), Ctrl-C and a SIGKILL mid-run can only be checked from outside the process. The run
files are read back with *plain* h5py wherever the contract says any HDF5 reader can rely on
them, and with ``lca.open_run`` for the live-reader rules (T = the shortest per-step dataset).

Everything is tiny (digits, an MLP with one hidden layer of 16, a measurement set of 300) so the
whole file stays well under a minute and a half on a busy two-core machine.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import lca

pytestmark = pytest.mark.slow  # every test here runs ``python -m lca`` in a subprocess

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
RK4_STEP_ERROR = 1e-3  # |ΔL − ΣA| of one rk4 step on this model is ~1e-4 at most
SIGNAL_WAIT_S = 300  # s: bounds only a hung subprocess; waits follow its progress


# ---------------------------------------------------------------------------------------------
# Helpers.


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory) -> dict[str, str]:
    """Environment of every CLI subprocess: private runs/data folders, one thread each."""
    base = tmp_path_factory.mktemp("cli-env")
    (base / "runs").mkdir()
    (base / "no-data").mkdir()
    env = dict(os.environ)
    env.update(
        LCA_RUNS_DIR=str(base / "runs"),
        LCA_DATA_DIR=str(base / "no-data"),
        OMP_NUM_THREADS="1",  # tiny model: threads only fight the other processes for 2 cores
        PYTHONUNBUFFERED="1",
    )
    return env


def cli(
    env: dict[str, str], *args: str, timeout: float = SIGNAL_WAIT_S
) -> subprocess.CompletedProcess:
    """Run ``python -m lca ARGS`` from the repository root; capture text output."""
    return subprocess.run(
        [sys.executable, "-m", "lca", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(processes, env: dict[str, str], *args: str) -> subprocess.Popen:
    """Start ``python -m lca ARGS`` in the background (SIGINT restored to Python's default, as
    in a terminal: a parent started in the background may have left it ignored); the
    ``processes`` fixture ends it at teardown whatever happens."""
    return processes.start(
        [sys.executable, "-m", "lca", *map(str, args)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_steps(proc: subprocess.Popen, path: Path, at_least: int) -> int:
    """Poll the live file with lca.open_run until it shows ``at_least`` steps; return T."""
    deadline = time.monotonic() + SIGNAL_WAIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"training ended before it was signalled (rc {proc.returncode}): {err}")
        if path.exists():
            try:
                with lca.open_run(path) as r:
                    if r.num_steps >= at_least:
                        return r.num_steps
            except lca.RunFileError:  # caught the writer mid-flush: look again
                pass
        time.sleep(0.2)
    proc.kill()
    proc.communicate()
    pytest.fail(f"{path.name} did not reach {at_least} steps within {SIGNAL_WAIT_S} s")


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The failed command's single stderr line (checked: exit 2, 'error:', no traceback)."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def per_step_lengths(f: h5py.File) -> dict[str, int]:
    """Rows of every per-step dataset (unlimited along time) except /steps/loss."""
    out: dict[str, int] = {}
    for group in ("steps", "layers", "units", "params", "series"):
        if group not in f:
            continue

        def visit(name: str, obj, group: str = group) -> None:
            if isinstance(obj, h5py.Dataset) and obj.maxshape[:1] == (None,):
                out[f"{group}/{name}"] = obj.shape[0]

        f[group].visititems(visit)
    out.pop("steps/loss")
    return out


def text(value) -> str:
    """A fixed-length UTF-8 string from plain h5py (bytes) as str."""
    if isinstance(value, np.ndarray):
        value = value[()]
    return value.decode() if isinstance(value, bytes | np.bytes_) else str(value)


def status_of(f: h5py.File) -> str:
    return text(f["status"][()]).rstrip("\x00")


def assert_consistent(f: h5py.File) -> int:
    """Every per-step dataset has T rows and /steps/loss T+1, all finite; returns T."""
    t = f["steps/loss"].shape[0] - 1
    lengths = per_step_lengths(f)
    assert lengths and set(lengths.values()) == {t}, lengths
    assert np.isfinite(f["steps/loss"][()]).all()
    assert np.isfinite(f["steps/lca"][()]).all() and np.isfinite(f["layers/lca"][()]).all()
    return t


# ---------------------------------------------------------------------------------------------
# A finished run.


@pytest.fixture(scope="module")
def finished(cli_env, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """40 steps with ``--device auto`` (CPU here; it must not need a GPU)."""
    out = tmp_path_factory.mktemp("finished") / "a.h5"
    result = cli(cli_env, "train", *TINY, "--steps", "40", "--device", "auto", "--out", out)
    return out, result


def test_train_writes_a_complete_conserving_run(finished):
    out, result = finished
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("complete: ")
    with h5py.File(out, "r") as f:  # plain h5py, not our Reader: the file is closed cleanly
        assert text(f.attrs["format"]) == "lca-run"
        assert int(f.attrs["schema_version"]) == 1
        config = json.loads(text(f.attrs["config"]))
        assert config["steps"] == 40 and config["device"] == "auto"
        assert status_of(f) == "complete"
        t = assert_consistent(f)
        assert t == 40 and int((f["steps/kind"][()] == 0).sum()) == 40
        loss = f["steps/loss"][()]
        lca_steps = f["steps/lca"][()]
        err = f["steps/error"][()]
        names = [text(n) for n in f["layers/names"][()]]
        layers = f["layers/lca"][()]
        assert layers.shape == (40, len(names))
        per_param = sum(
            f[f"params/{n}/lca"][()].reshape(40, -1).sum(axis=1, dtype=np.float64) for n in names
        )
    assert np.abs(err).max() <= RK4_STEP_ERROR
    change = loss[-1] - loss[0]
    assert abs(math.fsum(lca_steps) - change) <= math.fsum(np.abs(err)) + 1e-9
    assert abs(change) > 10 * math.fsum(np.abs(err))  # the test above is not vacuous
    np.testing.assert_allclose(layers.sum(axis=1), lca_steps, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(per_param, lca_steps, rtol=1e-4, atol=1e-7)  # stored float32


def test_inspect_prints_the_summary(finished, cli_env):
    out, _ = finished
    result = cli(cli_env, "inspect", out)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "error" not in result.stderr
    report = result.stdout
    for label in ("status", "loss", "conservation", "helped", "top helping", "top hurting"):
        assert re.search(rf"^{label}\s", report, re.M), (label, report)
    assert re.search(r"^status\s+complete$", report, re.M)
    assert re.search(r"^steps\s+40 optimizer steps", report, re.M)
    assert re.search(r"^top helping\s+\S+\.(weight|bias) \([-+]", report, re.M), report


def test_inspect_json_parses(finished, cli_env):
    out, _ = finished
    result = cli(cli_env, "inspect", "--json", out)
    assert result.returncode == 0, result.stderr
    s = json.loads(result.stdout)
    assert s["status"] == "complete" and s["steps"] == 40 and s["segments"] == 40
    assert s["dataset"] == "digits" and s["model"] == "mlp"
    assert abs(s["conservation_error"]) <= 40 * RK4_STEP_ERROR
    assert isinstance(s["top_helping"], list)


# ---------------------------------------------------------------------------------------------
# Config files and flags.


def test_flags_override_the_config_file(cli_env, tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(
        'dataset = "digits"\nmodel = "mlp"\nsteps = 5\nmeasure_size = 300\nlr = 0.02\n'
        "[model_options]\nhidden = [16]\n"
    )
    out = tmp_path / "override.h5"
    result = cli(cli_env, "train", "--config", toml, "--steps", "7", "--quiet", "--out", out)
    assert result.returncode == 0, result.stderr
    with h5py.File(out, "r") as f:
        config = json.loads(text(f.attrs["config"]))
        assert int((f["steps/kind"][()] == 0).sum()) == 7
        assert f["steps/loss"].shape == (8,)
        assert [text(n) for n in f["layers/names"][()]][0] == "fc1.weight"
        assert f["params/fc1.weight/total"].shape == (16, 64)  # hidden = [16] from the file
    assert config["steps"] == 7  # the flag
    assert config["lr"] == 0.02 and config["model_options"] == {"hidden": [16]}  # the file


# ---------------------------------------------------------------------------------------------
# Runs that end early.


def test_sigkill_leaves_a_readable_file_that_recover_cleans(cli_env, tmp_path, processes):
    out = tmp_path / "killed.h5"
    proc = start(processes, cli_env, "train", *TINY, "--steps", "2000", "--out", out)
    try:
        seen = wait_for_steps(proc, out, at_least=5)
        live = cli(cli_env, "recover", out)  # refused while the writer is alive: loses nothing
        assert "still being written" in one_error_line(live)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=SIGNAL_WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL

    # Before recovery: our Reader sees one T everywhere ...
    with lca.open_run(out) as r:
        t = r.num_steps
        assert r.status == "running" and t >= seen
        assert r.steps("loss").shape == (t + 1,)
        assert r.steps("lca").shape == r.steps("error").shape == (t,)
        assert r.layer_lca().shape == (t, len(r.names))
        for name in r.names:
            assert r.param_lca(name).shape == (t, *r.shapes[name])
        assert r.series("steps/train_loss").shape == (t,)
        assert np.isfinite(r.steps("loss")).all()
    # ... and plain h5py opens it too (as SWMR, the writer never closed it); every dataset
    # holds at least those T whole rows (a flush cut short may have lengthened some).
    with h5py.File(out, "r", swmr=True) as f:
        assert text(f.attrs["format"]) == "lca-run" and status_of(f) == "running"
        lengths = per_step_lengths(f)
        assert min([f["steps/loss"].shape[0] - 1, *lengths.values()]) >= t
        assert np.isfinite(f["layers/lca"][:t]).all()

    result = cli(cli_env, "recover", out)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0], result.stdout

    with h5py.File(out, "r") as f:  # closed normally now: no SWMR needed
        assert status_of(f) == "interrupted"
        assert assert_consistent(f) == t
        assert int(f["totals_rows"][()]) == t
        lca_w = f["params/fc1.weight/lca"][()]
        np.testing.assert_allclose(
            f["params/fc1.weight/total"][()], lca_w.sum(axis=0, dtype=np.float64), atol=1e-9
        )

    result = cli(cli_env, "inspect", out)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^status\s+interrupted$", result.stdout, re.M)
    assert re.search(rf"^steps\s+{t} optimizer steps", result.stdout, re.M)

    again = cli(cli_env, "recover", "--force", out)  # idempotent; --force is accepted
    assert again.returncode == 0 and "already clean" in again.stdout, again


def test_ctrl_c_keeps_every_step_and_exits_130(cli_env, tmp_path, processes):
    out = tmp_path / "ctrl-c.h5"
    proc = start(processes, cli_env, "train", *TINY, "--steps", "2000", "--out", out)
    try:
        seen = wait_for_steps(proc, out, at_least=5)
        os.kill(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=SIGNAL_WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr, stderr
    last = stdout.strip().splitlines()[-1]
    m = re.match(r"interrupted: Interrupted after (\d+) steps\.", last)
    assert m, last
    with h5py.File(out, "r") as f:  # the writer closed the file itself
        assert status_of(f) == "interrupted"
        t = assert_consistent(f)
    assert t >= seen  # nothing already visible was lost ...
    assert t == int(m.group(1))  # ... and every step the run reports is in the file


def test_nan_loss_fails_keeping_the_steps_before(cli_env, tmp_path):
    # Sigmoid units cannot die, so plain SGD with a huge rate grows the logits by a fixed amount
    # per step until the loss overflows float32: after about 5 finite steps on this seed.
    out = tmp_path / "nan.h5"
    result = cli(
        cli_env,
        "train",
        *TINY,
        "--model-option",
        "activation=sigmoid",
        "--optimizer",
        "sgd",
        "--lr",
        "5e35",
        "--steps",
        "40",
        "--out",
        out,
    )
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("failed: "), last
    message = last[len("failed: ") :].split(" Loss ")[0]
    assert message.endswith(".") and message.count(". ") == 0, message  # one sentence
    assert "learning rate" in message  # ... naming the fix
    with h5py.File(out, "r") as f:
        assert status_of(f) == "failed"
        t = assert_consistent(f)
        assert t >= 2  # the finite steps before the blow-up are kept
        assert int(f["eval"].shape[0]) >= 1


# ---------------------------------------------------------------------------------------------
# Bad input: exit 2, one "error:" line, no traceback.


def _write(folder: Path, name: str, content: str | None) -> Path:
    p = folder / name
    if content is not None:
        p.write_text(content)
    return p


BAD_TRAIN = {
    "unknown dataset": (["--dataset", "nope"], "dataset"),
    "unknown model": (["--model", "nope"], "model"),
    "unknown technique": (["--technique", "nope"], "technique"),
    "bad technique option": (["--technique", "prune-magnitude:sparsity=2"], "sparsity"),
    "negative steps": (["--steps", "-3"], "steps"),
    "malformed option": (["--model-option", "hidden"], "key=value"),
    "not a number": (["--steps", "x"], "--steps"),
}


@pytest.mark.parametrize("case", list(BAD_TRAIN))
def test_bad_train_flags(case, cli_env, tmp_path):
    args, word = BAD_TRAIN[case]
    out = tmp_path / "never.h5"
    line = one_error_line(cli(cli_env, "train", "--quiet", "--out", out, *args))
    assert word in line
    assert not out.exists()


@pytest.mark.parametrize(
    "case, content, word",
    [
        ("bad TOML", "steps = 5\n[model_options\n", "TOML"),
        ("unknown field", "steps = 5\nstepz = 7\n", "stepz"),
        ("missing file", None, "does not exist"),
    ],
)
def test_bad_config_file(case, content, word, cli_env, tmp_path):
    toml = _write(tmp_path, "run.toml", content)
    out = tmp_path / "never.h5"
    line = one_error_line(cli(cli_env, "train", "--config", toml, "--quiet", "--out", out))
    assert word in line
    assert not out.exists()


def test_missing_dataset_files(cli_env, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "never.h5"
    line = one_error_line(
        cli(cli_env, "train", "--dataset", "mnist", "--data-dir", empty, "--quiet", "--out", out)
    )
    assert "MNIST" in line and "--data-dir" in line
    assert not out.exists()


def _not_hdf5(folder: Path) -> Path:
    return _write(folder, "notes.h5", "this is not HDF5\n")


def _foreign(folder: Path) -> Path:
    p = folder / "foreign.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("x", data=np.arange(3))
    return p


def _missing(folder: Path) -> Path:
    return folder / "missing.h5"


@pytest.mark.parametrize(
    "make, word",
    [(_not_hdf5, "not an HDF5 file"), (_foreign, "not an LCA run"), (_missing, "no run file")],
)
def test_inspect_refuses_what_is_not_a_run(make, word, cli_env, tmp_path):
    line = one_error_line(cli(cli_env, "inspect", make(tmp_path)))
    assert word in line


def test_inspect_refuses_a_newer_schema(finished, cli_env, tmp_path):
    src, _ = finished
    newer = tmp_path / "newer.h5"
    newer.write_bytes(src.read_bytes())
    with h5py.File(newer, "r+") as f:
        f.attrs["schema_version"] = np.int64(2)
    line = one_error_line(cli(cli_env, "inspect", newer))
    assert "newer" in line and "schema 2" in line


def test_inspect_refuses_a_cut_short_copy_at_once(finished, cli_env, tmp_path):
    """A half-copied file once made every read block forever (SWMR skips HDF5's size check)."""
    src, _ = finished
    cut = tmp_path / "cut.h5"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    line = one_error_line(cli(cli_env, "inspect", cut, timeout=60))
    assert "cut short" in line and "cut.h5" in line


# ---------------------------------------------------------------------------------------------
# Help.


def test_help_documents_every_command_and_flag(cli_env):
    top = cli(cli_env, "--help")
    assert top.returncode == 0, top.stderr
    for command in ("train", "inspect", "recover", "allocate"):
        assert command in top.stdout
    train = cli(cli_env, "train", "--help")
    assert train.returncode == 0, train.stderr
    help_text = train.stdout
    flags = re.findall(r"^\s+(--[a-z-]+)", help_text, re.M)
    assert {"--steps", "--technique", "--record", "--config", "--device", "--out"} <= set(flags)
    # Every option has a help text (no bare "--flag VALUE" line followed by the next flag) and no
    # misleading "(default: None)": defaults come from RunConfig.
    assert "(default: None)" not in help_text
    options = help_text.split("\noptions:\n", 1)[1].split("\n\n", 1)[0]  # before the epilog
    blocks = re.split(r"\n(?=  -)", options)
    assert len(blocks) >= 25
    for block in blocks:
        head, _, rest = block.strip().partition("\n")
        described = re.split(r"\s{2,}", head.strip(), maxsplit=1)
        assert len(described) == 2 or rest.strip(), f"undocumented: {head!r}"
    for name in ("prune-magnitude", "wus", "quantize", "digits", "mlp"):
        assert name in help_text
    assert "sparsity" in help_text  # technique options are listed too
    rec = cli(cli_env, "recover", "--help")
    assert rec.returncode == 0 and "--force" in rec.stdout
