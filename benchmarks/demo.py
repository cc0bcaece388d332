"""Demo: seconds from the click on "Start the demo" to its first step and first chart, cold and
warm, in a real browser.

For each mode it starts the app (``streamlit run app.py``, headless, its own port, an empty
runs folder in a temporary directory; the server and the demo job are ended whatever happens),
opens Home in headless chromium (Playwright, /usr/bin/chromium), clicks the demo button and
prints, measured in this one run:

* click → the page answered ("Starting…" or the live panel),
* click → first step: the run file holds its first step (read by this script, as the app does),
* click → first chart: a chart is drawn in the live panel,
* click → finished: "finished 800 steps" is shown,

**cold**: ``LCA_WARM_WORKER=0``, the job is a new ``python -m lca train`` process (what every
start cost before the warm worker). **warm**: the server's warm worker (lca/warm.py) is ready
before the click, as on a server that has been up for a few seconds; the script checks that the
job really ran on it. The machine's load average is printed too: the figures mean little
without it.

    python benchmarks/demo.py [--repeat 1] [--modes cold,warm]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lca.serve import app_command, free_port  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
CHART = '[data-testid="stMain"] [data-testid="stPlotlyChart"]'
LIMIT_S = 600  # a demo that has not finished by then is reported as such


def start_server(runs_dir: Path, log: Path, warm: bool) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "LCA_RUNS_DIR": str(runs_dir),
        "PYTHONPATH": str(ROOT),
        "LCA_WARM_WORKER": "1" if warm else "0",
    }
    proc = subprocess.Popen(
        app_command(port),
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.2)
    raise SystemExit("streamlit did not start: " + log.read_text()[-2000:])


def stop(proc: subprocess.Popen) -> None:
    """End the server and everything in its process group (the demo job and warm worker)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class FirstStep(threading.Thread):
    """Polls the runs folder for the demo's run file and notes when it holds a step."""

    def __init__(self, runs_dir: Path, t0: float) -> None:
        super().__init__(daemon=True)
        self.runs_dir, self.t0, self.at = runs_dir, t0, None
        self.done = threading.Event()

    def run(self) -> None:
        from lca.store import Reader

        while not self.done.is_set() and time.monotonic() - self.t0 < LIMIT_S:
            for f in self.runs_dir.glob("demo*.h5"):
                try:
                    with Reader(f) as r:
                        if r.num_steps:
                            self.at = time.monotonic() - self.t0
                            return
                except Exception:  # noqa: BLE001 - being created
                    pass
            time.sleep(0.1)  # (more often would take CPU from what is measured)


def wait_for_warm_worker(runs_dir: Path) -> float:
    """Seconds until the server's warm worker says it is ready (it starts at the first view)."""
    from lca.warm import ready_pids

    t0 = time.monotonic()
    while not ready_pids(runs_dir):
        if time.monotonic() - t0 > LIMIT_S:
            raise SystemExit("the warm worker never became ready")
        time.sleep(0.1)
    return time.monotonic() - t0


def one_demo(browser, url: str, runs_dir: Path, warm: bool) -> dict[str, float | str]:
    from lca import jobs

    total = jobs.demo_config().steps
    page = browser.new_page(viewport={"width": 1024, "height": 768})
    out: dict[str, float | str] = {}
    try:
        page.goto(url)
        button = page.get_by_role("button", name=re.compile("Start the demo|Run the demo"))
        button.wait_for(timeout=120_000)
        if warm:
            out["worker ready after"] = wait_for_warm_worker(runs_dir)
        time.sleep(1.0)  # let the first page load settle: the click is what is measured
        t0 = time.monotonic()
        watcher = FirstStep(runs_dir, t0)
        button.click()
        watcher.start()
        while time.monotonic() - t0 < LIMIT_S:
            now = time.monotonic() - t0
            body = page.inner_text("body")
            if "answered" not in out and ("Starting" in body or "Training demo" in body):
                out["answered"] = now
            if "first chart" not in out and page.locator(CHART).count():
                out["first chart"] = now
            if re.search(rf"finished {total} steps", body):
                out["finished"] = now
                break
            time.sleep(0.05)
        watcher.done.set()
        watcher.join()
        if watcher.at is not None:
            out["first step"] = watcher.at
        demo = [j for j in jobs.jobs(runs_dir) if j.name.startswith("demo")]
        out["started"] = "warm" if demo and demo[0].worker else "cold"
        return out
    finally:
        page.close()


def run_mode(browser, mode: str, repeat: int) -> None:
    warm = mode == "warm"
    with tempfile.TemporaryDirectory(prefix=f"lca-demo-bench-{mode}-") as tmp:
        runs_dir = Path(tmp) / "runs"
        runs_dir.mkdir()
        proc, url = start_server(runs_dir, Path(tmp) / "server.log", warm)
        try:
            for i in range(repeat):
                for f in runs_dir.glob("*.h5"):
                    f.unlink()
                t = one_demo(browser, url, runs_dir, warm)
                order = ("answered", "first step", "first chart", "finished")
                shown = ", ".join(f"{k} {t[k]:.1f} s" for k in order if k in t)
                missing = [k for k in order if k not in t]
                extra = f" (not seen: {', '.join(missing)})" if missing else ""
                ready = (
                    f"; the worker was ready {t['worker ready after']:.1f} s after the first view"
                    if "worker ready after" in t
                    else ""
                )
                print(
                    f"{mode} demo {i + 1} (job started {t['started']}): click → {shown}{extra}"
                    f"{ready}",
                    flush=True,
                )
        finally:
            stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1, help="demos per mode, one after another")
    ap.add_argument("--modes", default="cold,warm", help="cold, warm or both (default)")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)", flush=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
                run_mode(browser, mode, args.repeat)
        finally:
            browser.close()
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
