"""Demo: seconds from the click on "Start the demo" to the first chart, in a real browser.

Starts the app (``streamlit run app.py``, headless, its own port, an empty runs folder in a
temporary directory; the server and the demo job are ended whatever happens), opens Home in
headless chromium (Playwright, /usr/bin/chromium), clicks the demo button and prints, measured
in this one run:

* click → "Starting…" (the page has answered the click),
* click → the first chart in the live panel (the loss curve of the first recorded steps),
* click → the first "Step N of M" progress line,
* click → the demo finished,

and the first-step timestamps the job wrote in its run file (``steps/wall``) for comparison.
The machine's load average is printed too: the figure means little without it.

    python benchmarks/demo.py [--repeat 1]
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
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lca.serve import app_command, free_port  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
CHART = '[data-testid="stMain"] [data-testid="stPlotlyChart"]'


def start_server(runs_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "LCA_RUNS_DIR": str(runs_dir), "PYTHONPATH": str(ROOT)}
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
    """End the server and everything in its process group (the demo job included)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def one_demo(browser, url: str, runs_dir: Path) -> dict[str, float]:
    from lca.jobs import demo_config

    total = demo_config().steps
    page = browser.new_page(viewport={"width": 1024, "height": 768})
    try:
        page.goto(url)
        button = page.get_by_role("button", name=re.compile("Start the demo"))
        button.wait_for(timeout=120_000)
        time.sleep(1.0)  # let the first page load settle: the click is what is measured
        out: dict[str, float] = {}
        t0 = time.monotonic()
        button.click()
        while time.monotonic() - t0 < 600:
            now = time.monotonic() - t0
            body = page.inner_text("body")
            if "answered" not in out and ("Starting" in body or "Training demo" in body):
                out["answered"] = now
            if "first chart" not in out and page.locator(CHART).count():
                out["first chart"] = now
            if "first step line" not in out and re.search(rf"Step \d+ of {total}", body):
                out["first step line"] = now
            if re.search(rf"finished {total} steps", body):
                out["finished"] = now
                break
            time.sleep(0.05)
        return out
    finally:
        page.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1, help="demos to run one after another")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    with tempfile.TemporaryDirectory(prefix="lca-demo-bench-") as tmp:
        runs_dir = Path(tmp) / "runs"
        runs_dir.mkdir()
        proc, url = start_server(runs_dir, Path(tmp) / "server.log")
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                try:
                    for i in range(args.repeat):
                        for f in runs_dir.glob("*.h5"):
                            f.unlink()
                        times = one_demo(browser, url, runs_dir)
                        shown = ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
                        print(f"demo {i + 1}: click → {shown}")
                finally:
                    browser.close()
        finally:
            stop(proc)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
