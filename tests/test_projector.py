"""Projector layout: every page at 1024×768 and 1440×900, screenshotted for a person to judge,
and failing when a button's, metric's, chart title's or legend's text overflows its box.

Reuses the real-app fixtures of ``test_browser`` (server start, settle, problems). Screenshots
go to artifacts/screenshots/projector-<width>-<page>.png (what fits on the screen, no scrolling).
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request

import pytest

from lca.serve import app_command, free_port
from tests.test_browser import (
    ARGS,
    CHROMIUM,
    ROOT,
    SHOTS,
    problems,
    settle,
    start_server,
    sync_api,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PROBE = ROOT / "tests" / "overflow_probe_app.py"

SIZES = [(1024, 768), (1440, 900)]
SLUGS = [
    "",
    "explain",
    "runs",
    "train",
    "loss",
    "layers",
    "neurons",
    "techniques",
    "compare",
    "playground",
]

# Every label-like element Streamlit draws, and what to call it in a report. Text is cut when it
# does not fit: a box clips it (overflow hidden, often with an ellipsis "…") or it spills out.
# Either way the element that holds the text scrolls wider than it shows (scrollWidth >
# clientWidth), and that element may be the label itself or any box inside it (a checkbox's
# label is cut by a div two levels down), so the label and all its descendants are measured.
# Widget labels (selectbox, slider, number input), radio options and expander summaries wrap in
# today's Streamlit; they are checked so that a version that cuts them is caught.
LABELS = [
    ("checkbox or toggle", '[data-testid="stCheckbox"]'),
    ("radio option", '[data-testid="stRadioOption"]'),
    ("widget label", '[data-testid="stWidgetLabel"]'),
    ("expander", '[data-testid="stExpander"] summary'),
    ("tabs", '[data-testid="stTabs"] [role="tablist"]'),
    (
        "metric",
        '[data-testid="stMetricLabel"], [data-testid="stMetricValue"], '
        '[data-testid="stMetricDelta"]',
    ),
    ("button", 'button, [data-testid="stLinkButton"] a, [data-testid="stPageLink"] a'),
    ("menu link", '[data-testid="stSidebarNavLink"]'),
    (
        "heading",
        '[data-testid="stHeading"] h1, [data-testid="stHeading"] h2, [data-testid="stHeading"] h3',
    ),
]

# (root selector or null, LABELS) -> one line per cut text. Plotly draws chart titles and
# legends in SVG, so those are compared with the chart's own box.
OVERFLOWS = """([rootSelector, labels]) => {
  const root = rootSelector ? document.querySelector(rootSelector) : document;
  if (!root) return [`no element matches ${rootSelector}`];
  const out = [];
  const cut = new Set();  // boxes already reported (a checkbox holds a widget label)
  const shown = (el) => {
    if (!el.getClientRects().length || el.clientWidth <= 2) return false;
    const s = getComputedStyle(el);
    if (s.visibility === 'hidden' || s.display === 'none') return false;
    // Screen-reader-only helpers (a checkbox's hidden input) are clipped to 1 px on purpose.
    return s.clip === 'auto' && (!s.clipPath || s.clipPath === 'none');
  };
  const text = (el) => (el.innerText || el.textContent || '').trim().replace(/\\s+/g, ' ')
    .slice(0, 60);
  for (const [what, selector] of labels) {
    root.querySelectorAll(selector).forEach((el) => {
      for (const box of [el, ...el.querySelectorAll('*')]) {
        if (box.tagName === 'INPUT' || box instanceof SVGElement || cut.has(box)) continue;
        if (!shown(box) || box.scrollWidth <= box.clientWidth + 1) continue;
        cut.add(box);
        out.push(`${what} "${text(el)}" (${box.scrollWidth} > ${box.clientWidth} px)`);
        break;
      }
    });
  }
  root.querySelectorAll('[data-testid="stPlotlyChart"]').forEach((c) => {
    const box = c.getBoundingClientRect();
    if (!box.width) return;
    c.querySelectorAll('.gtitle, .legend').forEach((t) => {
      const r = t.getBoundingClientRect();
      if (r.width && (r.right > box.right + 2 || r.left < box.left - 2))
        out.push(`chart ${t.classList.contains('legend') ? 'legend' : 'title'} "`
                 + `${(t.textContent || '').trim().slice(0, 50)}" runs `
                 + `${Math.round(r.right - box.right)} px past the chart`);
    });
  });
  return out;
}"""


def overflows(page, root: str | None = None) -> list[str]:
    """Every label-like text cut on ``page`` (inside the element ``root`` selects, if given)."""
    return page.evaluate(OVERFLOWS, [root, LABELS])


def overflows_in_every_view(page) -> list[str]:
    """``overflows`` of the page as it opens, then with every expander of the main area open and
    each of its tabs shown in turn (their text is measured only while it is on screen)."""
    found = overflows(page)
    closed = page.locator(
        '[data-testid="stMain"] [data-testid="stExpander"] details:not([open]) > summary'
    )
    for _ in range(closed.count()):
        closed.first.click()
    tabs = page.locator('[data-testid="stMain"] [data-testid="stTab"]')
    for i in range(max(1, tabs.count())):
        if tabs.count():
            tabs.nth(i).click()
        page.wait_for_timeout(300)  # an expander's or tab's animation
        found += [f for f in overflows(page) if f not in found]
    return found


def wait_healthy(url: str, log) -> None:
    """Wait until the Streamlit server at ``url`` answers its health check."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail("streamlit did not start: " + log.read_text()[-2000:])


def drawn_in_full(page) -> None:
    """Wait until the page's script has finished (the app's script state, which Streamlit sets on
    its root element, is no longer "running"), then until it has been quiet for a moment.

    ``settle`` alone watches the toolbar's running icon, which ``toolbarMode = "minimal"`` never
    shows: a page that takes long to run (the Train page imports torch and builds the models
    on a fresh server: 30 s and more on a loaded machine) was measured half drawn. This waits on
    the script finishing and every widget's code being loaded (until then a widget is a grey
    skeleton with no text to measure), however long that takes, not on a time budget."""
    page.wait_for_function(
        """() => {
          const app = document.querySelector('[data-testid="stApp"]');
          const state = app && app.getAttribute('data-test-script-state');
          // Widgets whose code is still loading are drawn as grey skeletons, without text.
          const loading = document.querySelector('[data-testid="stSkeleton"], '
            + '[data-testid="stSkeletonElement"], [data-testid="stAppSkeleton"]');
          return state && !['initial', 'running', 'rerunRequested'].includes(state) && !loading;
        }""",
        timeout=300_000,  # a bound for a stuck page only: a slow one is waited for
        polling=200,
    )
    settle(page, 1.5)


def sidebar_collapsed(page) -> bool:
    """Whether the sidebar is out of sight (a collapsed sidebar slides off the left edge)."""
    page.wait_for_timeout(500)  # its slide animation
    box = page.locator('[data-testid="stSidebar"]').bounding_box()
    return box is None or box["x"] + box["width"] <= 1


def drawn(page) -> None:
    """Wait until plotly has drawn every chart (its SVG exists), so titles can be measured."""
    charts = page.locator('[data-testid="stMain"] [data-testid="stPlotlyChart"]')
    for i in range(charts.count()):
        charts.nth(i).locator(".main-svg").first.wait_for(state="attached", timeout=90_000)


@pytest.fixture(scope="module")
def chromium():
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def projector(tmp_path_factory, make_run, module_processes, chromium):
    """A server with two finished runs (Compare needs two) and a browser."""
    runs_dir = tmp_path_factory.mktemp("projector-runs")
    shutil.copy(make_run(), runs_dir / "lesson.h5")
    shutil.copy(make_run(name="other.h5", seed=1), runs_dir / "other.h5")
    _, url, log = start_server(module_processes, runs_dir)
    return url, log, chromium


def test_overflow_check_reports_every_cut_label(tmp_path, processes, chromium):
    """The check itself, on a small app (tests/overflow_probe_app.py): every label-like element
    with a label far too long for its narrow column is reported, ellipsis-cut ones included,
    and the same elements with short labels are not."""
    port = free_port()
    command = app_command(port)
    command[command.index("app.py")] = str(PROBE)
    log = tmp_path / "probe.log"
    with open(log, "w") as out:
        processes.start(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, log)
    page = chromium.new_page(viewport={"width": 1024, "height": 768})
    try:
        page.goto(url)
        page.locator(".st-key-short [data-testid='stTab']").last.wait_for(timeout=60_000)
        drawn_in_full(page)
        page.screenshot(path=str(SHOTS / "projector-overflow-probe.png"), full_page=True)
        found = overflows(page, ".st-key-long")
        kinds = [f.split(' "')[0] for f in found]
        assert kinds.count("checkbox or toggle") == 2, found  # cut with an ellipsis
        assert kinds.count("metric") == 3, found  # label, value and delta
        assert kinds.count("button") == 2, found  # a button and a download button
        assert kinds.count("tabs") == 1, found
        long_texts = ("A label far too long", "12,345", "+1,234")  # the probe app's long texts
        assert all(any(t in f for t in long_texts) for f in found), found
        assert overflows(page, ".st-key-short") == []
    finally:
        page.close()


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_every_page_fits_a_projector(projector, width, height):
    url, log, browser = projector
    page = browser.new_page(viewport={"width": width, "height": height})
    found: dict[str, list[str]] = {}
    try:
        for slug in SLUGS:
            page.goto(f"{url}/{slug}?run=lesson.h5")
            drawn_in_full(page)
            drawn(page)
            page.screenshot(path=str(SHOTS / f"projector-{width}-{slug or 'home'}.png"))
            assert not problems(page), (slug, problems(page), log.read_text()[-2000:])
            bad = overflows_in_every_view(page)
            if bad:
                found[slug or "home"] = bad
                page.screenshot(
                    path=str(SHOTS / f"projector-{width}-{slug or 'home'}-cut.png"),
                    full_page=True,
                )
            if slug == "playground":  # the projector's main view: on screen without scrolling
                frame = page.locator('[data-testid="stMain"] iframe').first
                frame.wait_for(timeout=30_000)
                top = frame.bounding_box()["y"]
                assert top < height * 0.5, f"the Playground starts {top:.0f} px down"
    finally:
        page.close()
    assert not found, f"text cut at {width}×{height}: {found}"


def test_presenter_mode_is_kept_and_makes_type_bigger(projector):
    url, _, browser = projector
    page = browser.new_page(viewport={"width": 1024, "height": 768})
    try:
        page.goto(f"{url}/loss?run=lesson.h5")
        settle(page)
        size = page.evaluate("() => getComputedStyle(document.documentElement).fontSize")
        page.locator('[data-testid="stSidebar"]').get_by_text("Presenter mode").click()
        settle(page)
        assert "presenter=true" in page.url, page.url
        bigger = page.evaluate("() => getComputedStyle(document.documentElement).fontSize")
        assert float(bigger.rstrip("px")) > float(size.rstrip("px"))
        assert sidebar_collapsed(page)  # the class sees the charts, not the menu
        # Kept when the class moves on to another page through the menu.
        page.locator(
            '[data-testid="stExpandSidebarButton"], '
            '[data-testid="stSidebarCollapsedControl"] button'
        ).first.click()
        page.locator('[data-testid="stSidebarNav"] a[href$="/layers"]').click()
        settle(page)
        assert "presenter=true" in page.url, page.url
        assert page.evaluate("() => getComputedStyle(document.documentElement).fontSize") == bigger
        page.screenshot(path=str(SHOTS / "projector-1024-presenter-layers.png"))
        # A bookmarked presenter link opens with the sidebar collapsed.
        fresh = browser.new_page(viewport={"width": 1024, "height": 768})
        try:
            fresh.goto(f"{url}/loss?run=lesson.h5&presenter=true")
            settle(fresh)
            assert sidebar_collapsed(fresh)
            fresh.screenshot(path=str(SHOTS / "projector-1024-presenter-loss.png"))
        finally:
            fresh.close()
    finally:
        page.close()
