"""Text from a run file is shown literally in a real browser: a run whose layer names and status
are markdown and HTML (links, images, bold, colour directives, emoji shortcodes, bare URLs)
opened on the Layers page draws no link, no image and no markup, and shows the strings as
they are. AppTest sees only the markdown source; what the browser renders is checked here.

Skipped when Chromium is not installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import h5py
import numpy as np
import pytest

from lca.serve import app_command, free_port
from lca.store.schema import _fixed_strings

pytestmark = [pytest.mark.browser, pytest.mark.slow]

if shutil.which("chromium") is None:
    pytest.skip("chromium is not installed", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def start_server(runs_dir: Path) -> tuple[subprocess.Popen, str]:
    """``streamlit run app.py`` on a free port; returns once it answers its health check."""
    port = free_port()
    env = {**os.environ, "LCA_RUNS_DIR": str(runs_dir), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        app_command(port),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):  # each try waits up to 2 s for an answer
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.2)  # the server is starting: nothing to wait on but its port
    proc.kill()
    proc.wait(20)
    pytest.fail("streamlit did not start")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(20)


NAMES = [
    "[click](http://example.com/x)",
    "<b>bold</b><a href='http://example.com'>a</a>",
    ":red[red] :smile: **strong**",
    "see www.example.com or me@example.com",
]
STATUS = "![x](http://e/)"


@pytest.fixture
def markup_server(make_run, tmp_path):
    runs_dir = tmp_path / "runs"
    path = make_run(name="markup.h5", folder=runs_dir)
    with h5py.File(path, "r+") as f:
        del f["layers/names"]
        f.create_dataset("layers/names", data=_fixed_strings(NAMES))
        f["status"][()] = np.bytes_(STATUS.encode())
    proc, url = start_server(runs_dir)
    yield url
    stop_server(proc)


def test_layer_names_and_status_are_shown_literally(markup_server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{markup_server}/layers?run=markup.h5", timeout=120_000)
            page.wait_for_selector(
                ".js-plotly-plot .xtick, .js-plotly-plot .ytick", timeout=120_000
            )
            main = page.locator('[data-testid="stMain"]')
            assert page.locator("a[href*='example.com'], a[href*='http://e/']").count() == 0
            assert page.locator("img[src*='example.com'], img[src*='http://e/']").count() == 0
            text = main.inner_text().replace("\u2060", "")  # the word joiners are invisible
            assert STATUS in text  # the status, literally, in the page's caption
            ticks = "".join(
                page.locator(
                    ".js-plotly-plot .xtick text, .js-plotly-plot .ytick text"
                ).all_text_contents()
            )
            for name in NAMES:
                assert name in ticks
            assert page.locator(".js-plotly-plot a").count() == 0
        finally:
            browser.close()
