"""The real app in a real browser: start the server, click the demo, watch it train live, then
open every page on the demo run and check that nothing shows an error and the charts are there.

Screenshots go to artifacts/screenshots/ (gitignored) so a person can judge what a class sees.
Skipped when Chromium is not installed (CI installs Debian's chromium).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from lca.serve import app_command, free_port

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium")
ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "artifacts" / "screenshots"
DEMO_STALL_S = 120  # s without a new step before the demo counts as stuck (~20 s in all on
# two idle cores): the wait follows progress, so a slow, busy machine only takes longer
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# url path -> (file, whether the page draws at least one chart for a finished run); the default
# page (Home) lives at "/" and nowhere else.
PAGES = {
    "": ("pages/home.py", False),
    "runs": ("pages/runs.py", False),
    "train": ("pages/train.py", False),
    "loss": ("pages/loss.py", True),
    "layers": ("pages/layers.py", True),
    "neurons": ("pages/neurons.py", True),
    "techniques": ("pages/techniques_used.py", False),
    "compare": ("pages/compare.py", False),
    "playground": ("pages/playground.py", False),
}

if CHROMIUM is None:
    pytest.skip("chromium is not installed", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


def start_server(processes, runs_dir: Path) -> tuple[subprocess.Popen, str, Path]:
    """``streamlit run app.py`` on a free port with LCA_RUNS_DIR=runs_dir; waits until healthy.
    The ``processes`` fixture ends the server and its process group at teardown."""
    port = free_port()
    env = {**os.environ, "LCA_RUNS_DIR": str(runs_dir), "PYTHONPATH": str(ROOT)}
    log_path = runs_dir.parent / f"streamlit-{port}.log"
    with open(log_path, "w") as log:
        proc = processes.start(
            app_command(port),
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url, log_path
        except OSError:
            time.sleep(0.3)
    pytest.fail("streamlit did not start: " + log_path.read_text()[-2000:])


def stop_jobs(runs_dir: Path) -> None:
    """Stop the training jobs the app started (as its Stop button does: their status kept)."""
    from lca import jobs

    for j in jobs.active(runs_dir):
        jobs.stop(j, wait_s=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory, module_processes):
    runs_dir = tmp_path_factory.mktemp("browser-runs")
    _, url, log = start_server(module_processes, runs_dir)
    try:
        yield url, runs_dir, log
    finally:
        stop_jobs(runs_dir)  # then module_processes ends the server's process group


@pytest.fixture(scope="module")
def browser():
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


# A script run under way: the app's own state (set the moment a run starts) or the status
# widget's running icon (shown only after a run has taken a while).
RUNNING = (
    '[data-testid="stApp"][data-test-script-state="running"], '
    '[data-testid="stStatusWidgetRunningIcon"], [data-testid="stStatusWidgetRunningManIcon"]'
)


def settle(page, seconds: float = 1.0) -> None:
    """Wait until Streamlit has drawn the page and stopped running the script for a moment."""
    page.locator('[data-testid="stMain"] h1').first.wait_for(timeout=30_000)
    deadline = time.monotonic() + 45
    quiet_since = None
    while time.monotonic() < deadline:
        if page.locator(RUNNING).count():
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= seconds:
            return
        time.sleep(0.2)


def picked(page) -> str:
    """What the sidebar's run picker shows (its value is not part of the visible text)."""
    box = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]')
    return box.first.inner_html() if box.count() else ""


def problems(page) -> list[str]:
    out = []
    if page.locator('[data-testid="stException"]').count():
        out.append("an exception element is shown")
    body = page.inner_text("body")
    for bad in ("Traceback", "unexpected problem", "Error running app", "Page not found"):
        if bad in body:
            out.append(f"the page says {bad!r}")
    return out


# Streamlit runs a project with a pages/ folder as an old-style multipage app until app.py has
# called st.navigation once in the server process; pages/__init__.py switches that off.
def test_first_visit_straight_to_a_shared_link(tmp_path, browser, make_run, processes):
    """A student opens the teacher's link (/loss?run=...) on a server nobody has visited yet:
    the page must come with the app's sidebar and the run selected."""
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    shutil.copy(make_run(), runs_dir / "shared.h5")
    _, url, log = start_server(processes, runs_dir)
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    try:
        page.goto(f"{url}/loss?run=shared.h5")
        settle(page)
        page.screenshot(path=str(SHOTS / "00-deep-link-first-visit.png"), full_page=True)
        assert not problems(page), problems(page)
        assert "shared.h5" in picked(page), "the sidebar run picker is missing or empty"
        nav = page.locator('[data-testid="stSidebarNav"]').inner_text()
        assert "Neurons & weights" in nav and "shared" not in nav.split(), nav
    finally:
        page.close()  # the server is ended by the processes fixture


def test_demo_live_then_every_page(server, browser):
    url, runs_dir, log = server
    page = browser.new_page(viewport={"width": 1440, "height": 1800})
    # An offline classroom tool talks to its own server and nothing else.
    elsewhere: list[str] = []
    own_host = urllib.parse.urlsplit(url).netloc
    page.on(
        "request",
        lambda r: (
            elsewhere.append(r.url)
            if urllib.parse.urlsplit(r.url).scheme in ("http", "https", "ws", "wss")
            and urllib.parse.urlsplit(r.url).netloc != own_host
            else None
        ),
    )
    page.goto(url)
    page.get_by_role("button", name=re.compile("Start the demo")).wait_for(timeout=60_000)
    settle(page)
    page.screenshot(path=str(SHOTS / "00-first-start.png"), full_page=True)
    assert not problems(page)

    from lca.jobs import demo_config

    total = demo_config().steps
    t0 = time.monotonic()
    page.get_by_role("button", name=re.compile("Start the demo")).click()
    seen_steps: set[int] = set()
    shot_mid = False
    finished = False
    progress_at = t0
    while time.monotonic() - progress_at < DEMO_STALL_S:
        body = page.inner_text("body")
        m = re.search(rf"Step (\d+) of {total}", body)
        if m:
            if int(m.group(1)) not in seen_steps:
                progress_at = time.monotonic()
            seen_steps.add(int(m.group(1)))
            if not shot_mid and total // 3 <= int(m.group(1)) < total:
                page.screenshot(path=str(SHOTS / "01-demo-live.png"), full_page=True)
                shot_mid = True
        if re.search(rf"finished {total} steps", body):
            finished = True
            break
        assert not problems(page), problems(page)
        time.sleep(0.5)
    wall = time.monotonic() - t0
    assert finished, f"the demo made no progress for {DEMO_STALL_S} s; saw {sorted(seen_steps)}"
    print(f"demo wall time in the browser (click to finished): {wall:.1f} s")
    assert len(seen_steps) >= 2, f"the live view did not update: {sorted(seen_steps)}"
    settle(page)
    page.screenshot(path=str(SHOTS / "02-demo-done.png"), full_page=True)
    assert page.locator('[data-testid="stPlotlyChart"]').count() >= 3
    assert not problems(page)
    demo = next(p.name for p in runs_dir.glob("demo*.h5"))
    # The new run is selected in the sidebar and in the address, so the link can be shared.
    assert f"run={demo}" in page.url, page.url
    assert demo in picked(page)

    # The selection survives the navigation menu, and "Open" on the Runs page opens the run.
    page.locator('[data-testid="stSidebarNav"] a[href$="/runs"]').click()
    open_button = page.locator('[data-testid="stMain"] button[kind="primary"]').filter(
        has_text=re.compile(r"Open$")
    )
    open_button.first.wait_for(timeout=30_000)
    settle(page)
    assert f"run={demo}" in page.url and "/runs" in page.url, page.url
    assert not problems(page), problems(page)
    open_button.first.click()
    settle(page)
    assert f"run={demo}" in page.url and "/runs" not in page.url, page.url
    assert not problems(page), problems(page)

    # Upload: a real run is added under a new name, a file that is not a run is refused.
    page.goto(f"{url}/runs?run={demo}")
    settle(page)
    upload = page.locator('[data-testid="stFileUploader"] input[type="file"]')
    upload.set_input_files(str(runs_dir / demo))
    page.get_by_text(re.compile(r"was added as demo-2\.h5")).wait_for(timeout=60_000)
    assert (runs_dir / "demo-2.h5").exists()
    fake = runs_dir.parent / "not-a-run.h5"
    fake.write_text("hello")
    upload.set_input_files(str(fake))
    page.get_by_text(re.compile(r"not an HDF5 file.*not added")).wait_for(timeout=60_000)
    settle(page)
    page.screenshot(path=str(SHOTS / "02b-runs-upload.png"), full_page=True)
    assert not problems(page), problems(page)
    assert sorted(p.name for p in runs_dir.glob("*.h5")) == sorted([demo, "demo-2.h5"])

    for i, (slug, (file, charts)) in enumerate(PAGES.items(), start=3):
        if not (ROOT / file).exists():
            continue
        page.goto(f"{url}/{slug}?run={demo}")
        settle(page, 1.5)
        page.screenshot(path=str(SHOTS / f"{i:02d}-{slug or 'home'}.png"), full_page=True)
        assert not problems(page), (slug, problems(page), log.read_text()[-3000:])
        if charts:
            n = page.locator('[data-testid="stPlotlyChart"]').count()
            assert n >= 1, f"{slug}: no chart drawn"
        # The sidebar picker shows the run from the link.
        assert demo in picked(page), slug

    # Deleting the run the sidebar shows moves the picker to a run that exists, without
    # warning that the run "may have been deleted": the user just did that.
    page.goto(f"{url}/runs?run=demo-2.h5")
    settle(page)
    page.get_by_role("button", name="Delete…").click()
    page.get_by_role("button", name="Yes, delete it").click()
    deadline = time.monotonic() + 30
    while (runs_dir / "demo-2.h5").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not (runs_dir / "demo-2.h5").exists()
    settle(page, 1.5)
    assert demo in picked(page) and "demo-2.h5" not in picked(page)
    assert "deleted or renamed" not in page.inner_text("body")
    assert not problems(page), problems(page)
    assert not elsewhere, f"pages made requests to other hosts: {sorted(set(elsewhere))[:5]}"
