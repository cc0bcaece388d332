"""Server-side render time of the analysis pages on a big run (target: under 1 s per page).

Writes a synthetic run WITHOUT training: an MLP 784-256-10 layout (203,530 parameters), 2,000
steps recorded "full" (every weight on every step, float32: about 1.6 GB), random LCA values whose
sums match a decreasing loss, through the real ``lca.Writer``. Then renders each page with
Streamlit's AppTest (what the server does for one browser: read the file, build the figures,
serialise them) and prints the time per page, first render and again, plus the size of the
figure JSON sent to the browser. The pure parts (Reader reads + figure functions) are also timed.

    python benchmarks/app.py [--steps 2000] [--hidden 256] [--out /tmp/lca-bench] [--keep]

``--server-cpu N``: the server's CPU per page run instead. Trains the classroom demo's run (the
network benchmarks/classroom.py trains, finished, so every page draws the same file version),
starts a real server (``lca.serve.app_command``, no warm job worker), opens each page once to
warm the caches, then asks for each page N times over the app's websocket protocol (one
lightweight client, as in benchmarks/classroom.py, one view after another) and prints the
server process's CPU seconds per page run, read from /proc before and after each page's views.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import lca  # noqa: E402
from lca.allocate import KIND_STEP, StepRecord, UnitGroup  # noqa: E402

PAGES = ("loss", "layers", "neurons", "compare")


def synthetic_run(
    path: Path, steps: int, hidden: int, inputs: int = 784, classes: int = 10, seed: int = 0
) -> float:
    """Write a run of random LCA through lca.Writer; return the seconds it took."""
    rng = np.random.default_rng(seed)
    shapes = {
        "fc1.weight": (hidden, inputs),
        "fc1.bias": (hidden,),
        "out.weight": (classes, hidden),
        "out.bias": (classes,),
    }
    names = tuple(shapes)
    units = (
        UnitGroup("fc1", ("fc1.weight", "fc1.bias"), (0, 0), hidden),
        UnitGroup("out", ("out.weight", "out.bias"), (0, 0), classes),
    )
    layout = lca.Layout(
        names=names,
        shapes=tuple(shapes[n] for n in names),
        units=units,
        method="rk4",
        dtype="float32",
        measure_size=10_000,
        series={
            "steps/train_loss": ("f8", ()),
            "steps/seconds_train": ("f8", ()),
            "steps/lr": ("f8", ()),
        },
        events={"eval": ("train_step", "train_acc", "test_acc", "test_loss", "train_loss")},
    )
    config = {
        "dataset": "mnist",
        "model": "mlp",
        "model_options": {"hidden": [hidden]},
        "steps": steps,
        "record": "full",
        "method": "rk4",
        "techniques": [],
        "note": "synthetic benchmark run (random LCA, no training)",
    }
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    total_p = sum(sizes.values())
    t0 = time.perf_counter()
    writer = lca.Writer(path, record="full", config=config, overwrite=True, expected_steps=steps)
    loss0 = 2.3
    writer.begin(layout, loss0)
    loss = loss0
    # A pool of random draws, rescaled per step: drawing 200k normals every step would cost
    # more than writing them. Sums are taken in float64 from the float32 values written.
    pool = [
        {n: rng.standard_normal(sizes[n], dtype=np.float32).reshape(shapes[n]) for n in names}
        for _ in range(16)
    ]
    # The loss falls by 2.0 over the run, fastest early; each weight's LCA is noise around a
    # small negative drift, so a bit more than half of the weights help on a step (the paper).
    w = 0.05 + np.exp(-np.arange(steps) / (steps / 8))
    drifts = -2.0 * w / w.sum() / total_p
    for t in range(steps):
        drift = np.float32(drifts[t])
        scale = np.float32(-10.0) * drift
        draw = pool[int(rng.integers(len(pool)))]
        arrays = {n: draw[n] * scale + drift for n in names}
        per_param = {n: torch.from_numpy(a) for n, a in arrays.items()}
        per_tensor = np.array([np.sum(arrays[n], dtype=np.float64) for n in names])
        per_unit = {
            "fc1": arrays["fc1.weight"].sum(axis=1, dtype=np.float64)
            + arrays["fc1.bias"].astype(np.float64),
            "out": arrays["out.weight"].sum(axis=1, dtype=np.float64)
            + arrays["out.bias"].astype(np.float64),
        }
        helped = sum(int(np.count_nonzero(arrays[n] < 0)) for n in names) / total_p
        start, loss = loss, loss + math.fsum(per_tensor) + float(rng.normal(0, 1e-6))
        writer.append(
            StepRecord(
                index=t,
                kind=KIND_STEP,
                train_step=t + 1,
                label="",
                loss_start=start,
                loss_end=loss,
                per_param=per_param,
                per_tensor=per_tensor,
                per_unit=per_unit,
                helped=helped,
                hurt=1 - helped,
                splits=1,
                evaluations=2,
                seconds_lca=0.01,
                wall=0.02 * (t + 1),
                series={
                    "steps/train_loss": loss + float(rng.normal(0, 0.05)),
                    "steps/seconds_train": 0.005,
                    "steps/lr": 0.05,
                },
            )
        )
        if (t + 1) % 100 == 0 or t + 1 == steps:
            acc = 1 - 0.9 * math.exp(-(t + 1) / (steps / 6))
            writer.add_event("eval", [t + 1, acc, acc - 0.02, loss + 0.05, loss])
    writer.close("complete")
    return time.perf_counter() - t0


_COMPONENTS = None  # Streamlit's component registry, scanned once as a server does at start


def time_apptest(
    page: str, run: str, repeats: int = 2
) -> tuple[list[float], int, int, list[float]]:
    """Seconds per AppTest render (first, then again as another session would), the number of
    charts, their JSON size in bytes, and the CPU seconds of each render (this process, all
    threads: what the render costs whatever the machine's load; its wall time grows with the
    load).

    Each render is a new session (a new AppTest). The registry of installed Streamlit
    components is scanned once and shared, as the server scans it once at start-up; AppTest
    would otherwise scan every installed package's metadata again for each session (~0.5 s
    that no server pays per page).
    """
    from streamlit.testing.v1 import AppTest

    global _COMPONENTS
    times, cpu = [], []
    at = None
    for _ in range(repeats):
        at = AppTest.from_file(str(ROOT / "pages" / f"{page}.py"), default_timeout=300)
        if _COMPONENTS is not None and hasattr(at, "_bidi_component_manager"):
            at._bidi_component_manager = _COMPONENTS
        at.session_state["run"] = run
        if page == "compare":
            at.session_state["compare_runs"] = [run, "small.h5"]
        c0, t0 = time.process_time(), time.perf_counter()
        at.run()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        _COMPONENTS = getattr(at, "_bidi_component_manager", None)
        if at.exception:
            raise RuntimeError(f"{page}: {at.exception[0].message}")
    charts = at.get("plotly_chart")
    return times, len(charts), sum(len(c.proto.spec) for c in charts), cpu


def time_functions(path: Path) -> dict[str, float]:
    """The pages' reads (``lca.views``, uncached) + figure functions, without Streamlit
    (median of 3)."""
    from lca import figures as F
    from lca import views
    from lca.synchrony import synchrony

    def loss_page():
        with lca.open_run(path) as r:
            v = views.loss_view(r)
        F.loss_conservation(v.loss, v.lca, kind=v.kind).to_json()
        F.step_error(v.error, v.splits, kind=v.kind).to_json()
        F.training_curves(v.train_loss, v.evals, kind=v.kind).to_json()
        F.helped_fractions(v.helped, v.hurt, kind=v.kind).to_json()

    def layers_page():
        with lca.open_run(path) as r:
            v = views.layers_view(r)
        F.layer_totals(v.names, v.totals, v.counts).to_json()
        F.layer_step_heatmap(v.layer_lca, v.names, kind=v.kind).to_json()
        F.cumulative_layers(v.cumulative, v.names, kind=v.kind).to_json()
        res = synchrony(v.layer_lca[v.kind == 0])
        F.peak_raster(res.peaks, v.names).to_json()
        F.synchrony_figure(res).to_json()

    def neurons_page():
        with lca.open_run(path) as r:
            v = views.neurons_view(r)
            units = views.unit_rows(r, "fc1")
            stats = views.weight_stats(r)
            values, used = views.value_sample(r)
            table = F.top_parameters(stats.totals, stats.helped, stats.rows)
            row = table[0]
            trace = views.param_rows(r, row["tensor"], index=row["index"])
        F.unit_heatmap(units, positions=v.positions).to_json()
        F.first_layer_images(stats.totals["fc1.weight"], (1, 28, 28), max_units=64).to_json()
        F.lca_histogram(values, steps_used=used, steps_total=v.num_steps).to_json()
        F.helped_fraction_histogram(
            np.concatenate([h.ravel() for h in stats.helped.values()]), stats.rows
        ).to_json()
        F.param_trace(trace, positions=v.positions).to_json()

    out = {}
    for name, fn in (("loss", loss_page), ("layers", layers_page), ("neurons", neurons_page)):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    return out


SERVER_PAGES = ("home", "loss", "layers", "neurons", "playground")


def server_cpu(views: int, steps: int, reuse: Path | None = None) -> None:
    """Print the server's CPU seconds per page run (see the module docstring)."""
    import asyncio
    from dataclasses import replace

    sys.path.append(str(ROOT / "benchmarks"))
    import classroom
    from demo import start_server, stop

    from lca import jobs
    from lca.train import run

    with tempfile.TemporaryDirectory(prefix="lca-server-cpu-") as tmp:
        runs_dir = Path(tmp) / "runs"
        runs_dir.mkdir()
        os.environ["LCA_RUNS_DIR"] = str(runs_dir)
        t0 = time.perf_counter()
        if reuse is not None and reuse.exists():
            shutil.copy(reuse, runs_dir / classroom.RUN)
            print(f"demo run: {reuse} (reused)", flush=True)
        else:
            run(replace(jobs.demo_config(), steps=steps), out=runs_dir / classroom.RUN)
            print(f"demo run: {steps} steps trained in {time.perf_counter() - t0:.1f} s")
            if reuse is not None:
                shutil.copy(runs_dir / classroom.RUN, reuse)
        proc, url = start_server(runs_dir, Path(tmp) / "server.log", warm=False)
        try:
            rows = []
            for page in SERVER_PAGES:
                s = classroom.Session()
                until = time.monotonic() + 3600  # ends after its views
                asyncio.run(classroom.ws_session(url, [page], until, 0.0, s, views=1))  # warm
                cpu0, _ = classroom.proc_cpu_rss(proc.pid)
                w0 = time.monotonic()
                s = classroom.Session()
                asyncio.run(classroom.ws_session(url, [page], until, 0.0, s, views=views))
                cpu1, _ = classroom.proc_cpu_rss(proc.pid)
                wall = time.monotonic() - w0
                rows.append((page, (cpu1 - cpu0) / views, wall / views, len(s.failures)))
            _, rss = classroom.proc_cpu_rss(proc.pid)
        finally:
            stop(proc)
    print(
        f"server CPU per page run ({views} views of each page, one after another, caches warm; "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs); server peak RSS "
        f"{rss / 2**20:.0f} MiB"
    )
    print(f"{'page':<12}{'CPU-s/run':>10}{'wall s/run':>12}{'failed':>8}")
    for page, cpu, wall, failed in rows:
        print(f"{page:<12}{cpu:>10.3f}{wall:>12.3f}{failed:>8}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the run (default: a temp folder, removed afterwards unless --keep)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the generated run files")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="use the runs an earlier --keep left in --out (same --steps/--hidden) instead of "
        "writing them again (1.6 GB); kept afterwards",
    )
    ap.add_argument(
        "--server-cpu",
        type=int,
        default=0,
        metavar="N",
        help="measure a real server's CPU per page run over N views of each page instead",
    )
    ap.add_argument("--demo-steps", type=int, default=300, help="steps of --server-cpu's run")
    ap.add_argument(
        "--demo-run",
        type=Path,
        default=None,
        help="--server-cpu: use this run file if it exists, else train it and keep it there",
    )
    args = ap.parse_args()
    if args.server_cpu:
        server_cpu(args.server_cpu, args.demo_steps, args.demo_run)
        return

    folder = args.out or Path(tempfile.mkdtemp(prefix="lca-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["LCA_RUNS_DIR"] = str(folder)
    big = folder / "big.h5"
    reuse = args.reuse and big.exists() and (folder / "small.h5").exists()
    try:
        if not reuse:
            seconds = synthetic_run(big, args.steps, args.hidden)
            synthetic_run(folder / "small.h5", 50, 32)
        with lca.open_run(big) as r:
            params, steps = r.num_params, r.num_steps
        size = big.stat().st_size
        print(
            f"synthetic run: {params:,} parameters x {steps:,} steps, record full, "
            f"{size / 1e9:.2f} GB, "
            + ("reused from an earlier run" if reuse else f"written in {seconds:.1f} s")
        )

        # Warm up imports (streamlit, plotly and the parts of it each page's figures use, h5py,
        # torch) on the small run first: a server imports them once, when it draws its first
        # page, not for every run file it is asked to show.
        for page in PAGES:
            time_apptest(page, "small.h5", repeats=1)
        print(
            f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs before the pages "
            "(a page is a first render: this file version read and drawn; again: another "
            "session, same version)"
        )
        print(
            f"{'page':<10}{'first render':>14}{'again':>10}{'CPU first':>11}{'CPU again':>11}"
            f"{'charts':>8}{'figure JSON':>14}"
        )
        worst = 0.0
        for page in PAGES:
            (first, again), n, nbytes, (cpu_first, cpu_again) = time_apptest(page, "big.h5")
            worst = max(worst, first, again)
            print(
                f"{page:<10}{first:>12.2f} s{again:>8.2f} s{cpu_first:>9.2f} s{cpu_again:>9.2f} s"
                f"{n:>8}{nbytes / 1e6:>11.2f} MB"
            )
        print(
            f"slowest page: {worst:.2f} s (target: every page <= 1 s); load average "
            f"{os.getloadavg()[0]:.2f} after"
        )
        print("reads + figure functions only (no Streamlit), median of 3:")
        for page, sec in time_functions(big).items():
            print(f"  {page:<10}{sec:>8.2f} s")
    finally:
        if not (args.keep or args.reuse):
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
