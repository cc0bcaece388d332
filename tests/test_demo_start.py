"""The demo's first chart as soon as the first step exists, and every page's own address on a
server nobody has visited yet."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_first_step_is_readable_at_once(tmp_path):
    """A live view (the demo) draws its first chart as soon as one step exists: the writer sends
    the first row out without waiting for its flush interval or a full chunk."""
    import torch
    from torch import nn

    import lca
    from lca.store import Reader

    torch.manual_seed(0)
    x, y = torch.randn(40, 4), torch.randint(0, 2, (40,))
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "live.h5"
    writer = lca.Writer(path, record="full", chunk_rows=64, flush_seconds=1e9)
    tracker = lca.Tracker(model, nn.functional.cross_entropy, (x, y), writer=writer)
    try:
        for _ in range(2):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            with tracker.step():
                opt.step()
        with Reader(path) as r:
            assert r.num_steps == 1  # the first step at once; the second waits for its chunk
    finally:
        tracker.close()


# ---------------------------------------------------------------------------------------------
# Every page's own address works on a server nobody has visited yet.


def _app_pages() -> list[tuple[str, str, str, str]]:
    """app.PAGES, read without running app.py (importing it would draw the app)."""
    tree = ast.parse((ROOT / "app.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "PAGES":
            return ast.literal_eval(node.value)
    raise AssertionError("app.py has no PAGES list")


def test_every_page_address_resolves_before_navigation_has_run():
    """Until st.navigation runs once, Streamlit finds a page by its file's name in pages/
    (leading digits, underscores and dashes dropped); each page's address must name a file
    there, whose import of ``pages`` then reruns the visit through app.py."""
    from streamlit.source_util import page_icon_and_name

    by_name = {page_icon_and_name(p)[1]: p for p in (ROOT / "pages").glob("*.py")}
    for file, _title, url, _icon in _app_pages():
        if url == "home":  # the default page: its address is "/", which is app.py itself
            continue
        assert url in by_name, f"/{url} ({file}) names no file in pages/"
        assert (
            "import pages" in by_name[url].read_text() or "from pages" in by_name[url].read_text()
        ), f"{by_name[url].name} does not import pages (no rerun through app.py)"


# ---------------------------------------------------------------------------------------------
# A real server and browser: /techniques on a fresh server, then the warm demo.

CHART = '[data-testid="stMain"] [data-testid="stPlotlyChart"]'
STALL_S = 180  # s without any progress before the test gives up: bounds only a hang


def _start_server(processes, runs_dir):
    from lca.serve import app_command, free_port

    port = free_port()
    env = {
        **os.environ,
        "LCA_RUNS_DIR": str(runs_dir),
        "PYTHONPATH": str(ROOT),
        "LCA_WARM_WORKER": "1",
    }
    log = runs_dir.parent / f"streamlit-{port}.log"
    with open(log, "w") as fh:
        processes.start(app_command(port), cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    while True:  # the server ends the wait either way: healthy, or its process ended
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as r:
                if r.status == 200:
                    return url, log
        except OSError:
            assert processes.started[-1].poll() is None, log.read_text()[-2000:]
            time.sleep(0.3)


def _progress_wait(check, what: str, progress=lambda: None):
    """Wait until ``check()`` is true; fail only when ``progress()`` (any value that changes
    while the app works) has not changed for STALL_S seconds."""
    last, since = progress(), time.monotonic()
    while not check():
        now = progress()
        if now != last:
            last, since = now, time.monotonic()
        assert time.monotonic() - since < STALL_S, f"no progress towards {what} for {STALL_S} s"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.browser
def test_fresh_server_techniques_link_then_a_warm_demo(tmp_path, processes):
    """On a server nobody has visited, /techniques opens the Techniques page (not Home behind
    "Page not found"); then the demo starts on the server's warm worker and its first chart
    is drawn while the run is still young. Every wait follows progress."""
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed")
    from lca import jobs, warm
    from lca.store import Reader

    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    url, log = _start_server(processes, runs_dir)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1024, "height": 768})
            page.goto(f"{url}/techniques")
            title = page.locator('[data-testid="stMain"] h1').first
            title.wait_for(timeout=STALL_S * 1000)
            _progress_wait(
                lambda: (
                    title.inner_text().strip() == "Techniques"
                    or "Page not found" in page.inner_text("body")
                ),
                "the first page",
            )
            assert "Page not found" not in page.inner_text("body")
            assert title.inner_text().strip() == "Techniques"
            assert page.url.split("?")[0].endswith("/techniques"), page.url

            # The page view started the server's warm worker; the demo runs on it.
            _progress_wait(lambda: warm.ready_pids(runs_dir), "a warm worker")
            page.goto(url)
            button = page.get_by_role("button", name=re.compile("Start the demo"))
            button.wait_for(timeout=STALL_S * 1000)
            button.click()

            def run_steps() -> int:
                for f in runs_dir.glob("demo*.h5"):
                    try:
                        with Reader(f) as r:
                            return r.num_steps
                    except Exception:  # noqa: BLE001 - being created
                        return -1
                return -2

            _progress_wait(lambda: page.locator(CHART).count() > 0, "the first chart", run_steps)
            job = jobs.active(runs_dir)[0]
            assert job.name.startswith("demo") and job.worker, "the demo did not start warm"
            total = jobs.demo_config().steps
            _progress_wait(
                lambda: re.search(rf"Step [1-9]\d* of {total}", page.inner_text("body")),
                "a step in the live panel",
                run_steps,
            )
            assert run_steps() < total  # drawn while the run trains, not after it
            assert "Traceback" not in page.inner_text("body")
            browser.close()
    finally:
        for j in jobs.active(runs_dir):
            jobs.stop(j, wait_s=60)
