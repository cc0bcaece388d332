"""A class on one server, measured: N sessions cycle through the pages while one run trains.

Starts the app (``streamlit run app.py``, headless, its own port, a temporary runs folder; the
server and the training job are ended whatever happens), starts one training run (the demo's
network, made long), measures its steps/s alone, then runs ``--sessions`` sessions for
``--seconds``: ``--browsers`` of them are real headless chromium pages (Playwright,
/usr/bin/chromium), the rest are lightweight clients that speak the app's own websocket
protocol (``/_stcore/stream``: a ``BackMsg`` asking to run a page, ``ForwardMsg`` deltas back,
as a browser tab does) and cost the server the same work. Each session cycles through the
pages that draw the training run; a view counts when its first chart arrives.

Prints, measured in this one run: sessions served (at least one view, no failure), failed
views, median and p95 seconds from asking for a page to its first chart (per page and in all),
the server's CPU seconds and peak RSS (from /proc), and the training run's steps/s under load
divided by its steps/s alone.

    python benchmarks/classroom.py [--sessions 30] [--browsers 4] [--seconds 180]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from demo import ARGS, CHROMIUM, start_server, stop  # noqa: E402

PAGES = ["loss", "layers", "neurons", "home"]  # Compare needs two finished runs: left out
VIEW_TIMEOUT_S = 120.0
RUN = "lesson.h5"


def proc_cpu_rss(pid: int) -> tuple[float, int]:
    """(user + system CPU seconds, resident bytes) of one process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return cpu, rss


def steps_done(path: Path) -> int:
    from lca.store import Reader, RunFileError

    try:
        with Reader(path) as r:
            return r.num_steps
    except (RunFileError, OSError, KeyError, ValueError):
        return 0


def steps_per_second(path: Path, seconds: float) -> float:
    s0, t0 = steps_done(path), time.monotonic()
    time.sleep(seconds)
    return (steps_done(path) - s0) / (time.monotonic() - t0)


async def ws_session(url: str, pages: list[str], until: float, out: list, failures: list):
    """One lightweight client: one websocket session asking for page after page."""
    import websockets  # installed with Streamlit's server (uvicorn)
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    ws = await websockets.connect(
        url.replace("http", "ws", 1) + "/_stcore/stream", subprotocols=["streamlit"], max_size=None
    )
    try:
        i = 0
        while time.monotonic() < until:
            slug = pages[i % len(pages)]
            i += 1
            msg = BackMsg()
            msg.rerun_script.query_string = f"run={RUN}"
            msg.rerun_script.page_name = slug
            t0 = time.monotonic()
            await ws.send(msg.SerializeToString())
            chart = None
            while True:
                left = VIEW_TIMEOUT_S - (time.monotonic() - t0)
                raw = await asyncio.wait_for(ws.recv(), timeout=max(left, 0.1))
                if isinstance(raw, str):
                    continue
                fm = ForwardMsg()
                fm.ParseFromString(raw)
                kind = fm.WhichOneof("type")
                if (
                    chart is None
                    and kind == "delta"
                    and fm.delta.WhichOneof("type") == "new_element"
                    and fm.delta.new_element.WhichOneof("type") == "plotly_chart"
                ):
                    chart = time.monotonic() - t0
                # A run that ends early for a rerun (the app selecting the run, a page
                # switching) is followed by the run that draws the page: wait for that one.
                if (
                    kind == "script_finished"
                    and fm.script_finished != ForwardMsg.FINISHED_EARLY_FOR_RERUN
                ):
                    break
            if chart is None and slug != "home":
                failures.append((slug, "no chart"))
            elif chart is not None:
                out.append((slug, chart))
    finally:
        await ws.close()


async def browser_session(
    browser, url: str, pages: list[str], until: float, out: list, failures: list
):
    page = await browser.new_page(viewport={"width": 1024, "height": 768})
    try:
        i = 0
        while time.monotonic() < until:
            slug = pages[i % len(pages)]
            i += 1
            t0 = time.monotonic()
            await page.goto(f"{url}/{'' if slug == 'home' else slug}?run={RUN}")
            try:
                await page.locator(
                    '[data-testid="stMain"] [data-testid="stPlotlyChart"]'
                ).first.wait_for(timeout=VIEW_TIMEOUT_S * 1000)
                out.append((slug, time.monotonic() - t0))
            except Exception:  # noqa: BLE001 - a timeout is a failed view, counted
                if slug != "home":
                    failures.append((slug, "no chart in the browser"))
    finally:
        await page.close()


async def run_class(url: str, n: int, browsers: int, seconds: float) -> tuple[dict, list, int]:
    from playwright.async_api import async_playwright

    results: dict[int, list] = {i: [] for i in range(n)}
    failures: dict[int, list] = {i: [] for i in range(n)}
    until = time.monotonic() + seconds
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS) if browsers else None
        tasks = []
        for i in range(n):
            order = PAGES[i % len(PAGES) :] + PAGES[: i % len(PAGES)]  # spread the pages
            if i < browsers:
                tasks.append(browser_session(b, url, order, until, results[i], failures[i]))
            else:
                tasks.append(ws_session(url, order, until, results[i], failures[i]))
        done = await asyncio.gather(*tasks, return_exceptions=True)
        if b is not None:
            await b.close()
    crashed = sum(isinstance(d, BaseException) for d in done)
    for i, d in enumerate(done):
        if isinstance(d, BaseException):
            failures[i].append(("session", f"{type(d).__name__}: {d}"))
    return results, [f for fs in failures.values() for f in fs], crashed


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))] if v else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=30)
    ap.add_argument("--browsers", type=int, default=4, help="how many sessions are chromium")
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--alone", type=float, default=15.0, help="seconds to time training alone")
    args = ap.parse_args()
    print(
        f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs); "
        f"{args.sessions} sessions ({args.browsers} chromium) for {args.seconds:.0f} s"
    )
    with tempfile.TemporaryDirectory(prefix="lca-class-bench-") as tmp:
        runs_dir = Path(tmp) / "runs"
        runs_dir.mkdir()
        os.environ["LCA_RUNS_DIR"] = str(runs_dir)
        from dataclasses import replace

        from lca import jobs

        proc, url = start_server(runs_dir, Path(tmp) / "server.log")
        job = None
        try:
            job = jobs.start(replace(jobs.demo_config(), steps=1_000_000), RUN)
            path = runs_dir / RUN
            while steps_done(path) < 5:
                if not jobs.poll(job).alive:
                    raise SystemExit("the training run ended before it began")
                time.sleep(0.5)
            alone = steps_per_second(path, args.alone)
            cpu0, _ = proc_cpu_rss(proc.pid)
            s0, t0 = steps_done(path), time.monotonic()
            results, failures, crashed = asyncio.run(
                run_class(url, args.sessions, args.browsers, args.seconds)
            )
            loaded = (steps_done(path) - s0) / (time.monotonic() - t0)
            cpu1, rss = proc_cpu_rss(proc.pid)
            wall = time.monotonic() - t0
        finally:
            if job is not None:
                jobs.stop(job, wait_s=30)
            stop(proc)
    views = [v for vs in results.values() for v in vs]
    served = sum(1 for vs in results.values() if vs)
    print(
        f"sessions served: {served}/{args.sessions}; views with a chart: {len(views)}; "
        f"failed views: {len(failures)}; sessions that broke off: {crashed}"
    )
    for slug in PAGES:
        t = [s for p, s in views if p == slug]
        if t:
            print(
                f"  {slug:8s} first chart: median {statistics.median(t):.2f} s, "
                f"p95 {pct(t, 95):.2f} s ({len(t)} views)"
            )
    allt = [s for _, s in views]
    if allt:
        print(f"all pages: median {statistics.median(allt):.2f} s, p95 {pct(allt, 95):.2f} s")
    print(
        f"server: {cpu1 - cpu0:.1f} CPU-s in {wall:.0f} s ({(cpu1 - cpu0) / wall:.2f} cores), "
        f"RSS {rss / 2**20:.0f} MiB at the end"
    )
    print(
        f"training: {alone:.1f} steps/s alone, {loaded:.1f} under load, ratio "
        f"{loaded / alone if alone else float('nan'):.2f} (on a shared machine other work "
        "moves both figures)"
    )
    for f in failures[:5]:
        print("  failure:", f)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
