"""What each analysis page costs a student's browser: one fresh headless chromium tab per page.

The server's side is measured by ``benchmarks/classroom.py`` and ``benchmarks/app.py``; this
is the other end. Against one run (the demo's network trained ``--steps`` steps, record full,
or the run ``--run`` in an existing folder), each page is opened ``--rounds`` times in a fresh
tab at 1440×900, and it prints: seconds to the first chart drawn (the page load included: ~1 s
for the app and ~1.2 s for chromium to evaluate plotly.js, which a tab that moves by the sidebar
pays once), seconds until the script finished, the page's DOM nodes and SVG markers (each one a
node the browser lays out on every redraw), and the bytes its websocket received.

    python benchmarks/browser_pages.py [--steps 15000] [--run FILE] [--rounds 2]
        [--pages loss,layers,neurons]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "benchmarks"))

from demo import ARGS, CHROMIUM, start_server, stop  # noqa: E402

COUNTS = """() => ({
  nodes: document.querySelectorAll('*').length,
  markers: document.querySelectorAll('.js-plotly-plot path.point').length,
  charts: document.querySelectorAll('.js-plotly-plot').length,
})"""
FINISHED = (
    "document.querySelector('[data-testid=stApp]')"
    ".getAttribute('data-test-script-state') === 'notRunning'"
)


def train(folder: Path, steps: int) -> Path:
    """The demo's network trained ``steps`` steps into ``folder`` (the app's own job)."""
    import os

    os.environ["LCA_RUNS_DIR"] = str(folder)
    from lca import jobs

    job = jobs.start(replace(jobs.demo_config(), steps=steps), "lesson.h5", folder=folder)
    while jobs.poll(job).alive:
        time.sleep(1)
    job = jobs.poll(job)
    if job.returncode != 0:
        raise SystemExit(f"the run failed: {jobs.last_error(job)}")
    return folder / "lesson.h5"


def measure(url: str, run: str, pages: list[str], rounds: int) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            for r in range(rounds):
                for slug in pages:
                    page = browser.new_page(viewport={"width": 1440, "height": 900})
                    received = [0]

                    def count(ws, received=received):
                        ws.on(
                            "framereceived", lambda f: received.__setitem__(0, received[0] + len(f))
                        )

                    page.on("websocket", count)
                    t0 = time.monotonic()
                    page.goto(f"{url}/{slug}?run={run}")
                    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=180_000)
                    drawn = time.monotonic() - t0
                    page.wait_for_function(FINISHED, timeout=180_000)
                    done = time.monotonic() - t0
                    c = page.evaluate(COUNTS)
                    print(
                        f"round {r + 1} {slug:8s} first chart {drawn:5.2f} s, script finished "
                        f"{done:5.2f} s, {c['charts']} charts, {c['nodes']:,} DOM nodes, "
                        f"{c['markers']:,} SVG markers, {received[0] / 1e6:.2f} MB received",
                        flush=True,
                    )
                    page.close()
        finally:
            browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=15000)
    ap.add_argument("--run", type=Path, help="an existing run file (its folder is served)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--pages", default="loss,layers,neurons")
    args = ap.parse_args()
    pages = [s.strip() for s in args.pages.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="lca-browser-pages-") as tmp:
        if args.run is not None:
            path = args.run.resolve()
        else:
            print(f"training the demo's network {args.steps} steps (record full)...", flush=True)
            path = train(Path(tmp), args.steps)
        proc, url = start_server(path.parent, Path(tmp) / "server.log", warm=False)
        try:
            measure(url, path.name, pages, args.rounds)
        finally:
            stop(proc)


if __name__ == "__main__":
    main()
