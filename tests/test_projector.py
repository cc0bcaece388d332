"""Projector layout: every page at 1024×768 and 1440×900, screenshotted for a person to judge,
and failing when a button's, metric's, chart title's or legend's text overflows its box.

Reuses the real-app fixtures of ``test_browser`` (server start, settle, problems). Screenshots
go to artifacts/screenshots/projector-<width>-<page>.png (what fits on the screen, no scrolling).
"""

from __future__ import annotations

import shutil

import pytest

from tests.test_browser import ARGS, CHROMIUM, SHOTS, problems, settle, start_server, sync_api

pytestmark = [pytest.mark.browser, pytest.mark.slow]

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

# Elements whose text is cut when it does not fit: the text box scrolls wider than it shows.
# Plotly draws titles and legends in SVG, so those are compared with the chart's own box.
OVERFLOWS = """() => {
  const out = [];
  const seen = (el) => el.offsetParent !== null && el.clientWidth > 0;
  const cut = (el, what) => {
    if (seen(el) && el.scrollWidth > el.clientWidth + 1)
      out.push(`${what} "${el.innerText.trim().slice(0, 50)}" `
               + `(${el.scrollWidth} > ${el.clientWidth})`);
  };
  document.querySelectorAll('button').forEach((b) => {
    b.querySelectorAll('p, span, div').forEach((t) => cut(t, 'button text'));
    cut(b, 'button');
  });
  document.querySelectorAll('[data-testid="stMetricValue"], [data-testid="stMetricLabel"], '
      + '[data-testid="stMetricDelta"]').forEach((m) => {
    cut(m, 'metric');
    m.querySelectorAll('div, p').forEach((t) => cut(t, 'metric text'));
  });
  document.querySelectorAll('[data-testid="stTab"] p, [data-testid="stHeading"] h1, '
      + '[data-testid="stHeading"] h2, [data-testid="stHeading"] h3')
      .forEach((t) => cut(t, 'heading'));
  document.querySelectorAll('[data-testid="stPlotlyChart"]').forEach((c) => {
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
def projector(tmp_path_factory, make_run, module_processes):
    """A server with two finished runs (Compare needs two) and a browser."""
    runs_dir = tmp_path_factory.mktemp("projector-runs")
    shutil.copy(make_run(), runs_dir / "lesson.h5")
    shutil.copy(make_run(name="other.h5", seed=1), runs_dir / "other.h5")
    _, url, log = start_server(module_processes, runs_dir)
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield url, log, b
        finally:
            b.close()


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_every_page_fits_a_projector(projector, width, height):
    url, log, browser = projector
    page = browser.new_page(viewport={"width": width, "height": height})
    found: dict[str, list[str]] = {}
    try:
        for slug in SLUGS:
            page.goto(f"{url}/{slug}?run=lesson.h5")
            settle(page, 1.5)
            drawn(page)
            page.screenshot(path=str(SHOTS / f"projector-{width}-{slug or 'home'}.png"))
            assert not problems(page), (slug, problems(page), log.read_text()[-2000:])
            bad = page.evaluate(OVERFLOWS)
            if bad:
                found[slug or "home"] = bad
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
