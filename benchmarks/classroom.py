"""A class on one server, measured: N sessions cycle through the pages while one run trains.

Starts the app (``lca.serve.app_command`` on a free port, headless, a temporary runs folder; the
server and the training job are ended whatever happens) and one training run (the demo's
network, made long enough to outlast the class). It measures the run's steps/s alone, then runs
``--sessions`` sessions for ``--seconds``, then measures steps/s alone again (the machine may be
shared: the two "alone" figures show how much other work moved it).

Sessions: ``--browsers`` of them are real headless chromium pages (Playwright on Debian's
chromium); the rest are lightweight clients that speak the app's own websocket protocol as a
browser tab does (``/_stcore/stream``: a ``BackMsg`` asking to run a page, with the hashes of
the messages the tab already has; ``ForwardMsg`` deltas back, or references to messages it has;
while a page shows a live run, the ``auto_rerun`` the server asks for is honoured:
the client asks for the live fragment again at that interval, as the browser's timer does).
Each session cycles through the pages that draw the training run and the Playground, staying
``--dwell`` seconds on each like a student looking at it. A view counts when its first chart
arrives (a plotly chart; on the Playground, the component, which then runs in the browser).

For a chromium page, "first chart" is timed twice: to the chart drawn on the page (the
browser's own drawing, on this same machine, included) and to the chart's message arriving on
its websocket, which is what a lightweight client times; the p95 against the target is of the
latter for every session (the server's side; the students' browsers are on their own machines
in a class), and the drawn times are printed beside it. The class's arrival (every session's
first view, all within a few seconds) is also shown apart from the views after it.

Prints, measured in this one run: the priorities (nice) of the server, the training run and the
clients; sessions served (every view got its chart and the session did not break off), failed
views, median and p95 seconds from asking for a page to its first chart (per page and in all),
the server's CPU seconds and peak RSS (from /proc, its finished child processes included), the
CPU of the training run, the lightweight clients, the chromium pages and everything else on the
machine, the server CPU per request, the machine's load, and the training run's steps/s under
load divided by its steps/s alone.

Before the class, one session alone opens each page (``--solo-views``) and refreshes its live
fragment: the server CPU-s and bytes of one view and one refresh per page. The chromium tabs
load the app once and then click the sidebar from page to page, as a student does
(``--browser-nav goto``: a full page load per view). ``--clients-nice 19`` runs the client side
(this process's clients and chromium, which stand for the students' own machines) at the lowest
priority, after the server and the training run were started, and lowers this process's
scheduling group too where Linux's autogroup shares the CPU between sessions first (the server
runs in a session of its own); the default is normal priority.

    python benchmarks/classroom.py [--sessions 30] [--browsers 3] [--seconds 180] [--dwell 8]
        [--solo-views 2] [--browser-nav click|goto] [--clients-nice 0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "benchmarks"))

from demo import ARGS, CHROMIUM, start_server, stop  # noqa: E402

from lca.priority import server_nice  # noqa: E402

# The pages a student cycles through (URL paths); Compare needs two finished runs: left out.
PAGES = ["loss", "layers", "neurons", "playground", "home"]
CHARTLESS = {"home"}  # Home shows the run picker and the demo: a chart is not required there
COMPONENT_PAGES = {"playground"}  # their "chart" is the browser-side component
VIEW_TIMEOUT_S = 60.0
CHROMIUM_CPU = [0.0]  # CPU seconds of chromium and Playwright's driver, read before they close
RUN = "lesson.h5"


@dataclass
class Session:
    """What one session saw: (page, seconds to its first chart) per view, and its failures."""

    views: list[tuple[str, float]] = field(default_factory=list)
    # chromium: (page, seconds from the click to its first chart's message, as the lightweight
    # clients measure) beside ``views`` (to the chart drawn on the page)
    delivered: list[tuple[str, float]] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    reruns: int = 0  # live-fragment reruns it asked for
    loads: list[float] = field(default_factory=list)  # chromium: full page loads (seconds)


def proc_cpu_rss(pid: int) -> tuple[float, int]:
    """(CPU seconds of the process and its finished children, peak resident bytes), /proc;
    (nan, 0) for a process that has ended (a training run that finished during the class)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan"), 0
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = sum(int(f) for f in fields[11:15]) / ticks  # utime stime cutime cstime
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            rss = int(line.split()[1]) * 1024
    return cpu, rss


def start_training(runs_dir: Path, steps: int):
    """The class's training run (the demo's network, ``steps`` long) as the app's job, started
    in a session of its own, as a job the teacher starts from the app runs in the server's
    session and not in the students': where Linux's autogroup shares the CPU between sessions
    first, a run started from this process would share the client side's half of the machine
    with the chromium pages (the training run then got ~0.6 of a core with a core idle)."""
    import subprocess

    from lca import jobs

    code = (
        "import sys; from dataclasses import replace; from lca import jobs; "
        "jobs.start(replace(jobs.demo_config(), steps=int(sys.argv[1])), sys.argv[2])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(steps), RUN],
        cwd=ROOT,
        env={**os.environ, "LCA_RUNS_DIR": str(runs_dir), "PYTHONPATH": str(ROOT)},
        start_new_session=True,
        capture_output=True,
        text=True,
        check=True,
    )
    job = jobs.find(RUN, runs_dir)
    if job is None:
        raise SystemExit(f"the training run did not start: {out.stderr[-2000:]}")
    return job


def lower_autogroup(nice: int) -> str:
    """Lower this process's scheduling group as well (Linux with autogroup): there the kernel
    first shares the CPU equally between sessions (the server, started in a session of its own
    with its jobs, is one; this benchmark with its chromium pages another), and a process's nice
    value only counts inside its session, so without this the client side takes half the
    machine at any nice value. Returns what was done, as a sentence."""
    group = Path("/proc/self/autogroup")
    try:
        before = group.read_text().strip()
        group.write_text(str(nice))
        return f"client side's scheduling group: {before} -> {group.read_text().strip()}"
    except OSError as e:
        return f"client side's scheduling group unchanged ({e.strerror or e}): only its nice"


def proc_nice(pid: int) -> int:
    """The nice value of a process's main thread (/proc/PID/stat)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def _own_cpu() -> float:
    """CPU seconds of this process (the lightweight clients)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def _descendants(exclude: set[int]) -> list[int]:
    """This process's descendants but ``exclude`` (the server and the training run): the
    chromium pages and Playwright's driver. Every thread's children are read: the driver starts
    chromium from a worker thread."""
    found, todo = [], [os.getpid()]
    while todo:
        pid = todo.pop()
        children: list[str] = []
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError):
                    children += (task / "children").read_text().split()
        except OSError:
            continue
        for c in map(int, children):
            if c not in exclude and c not in found:
                found.append(c)
                todo.append(c)
    return found


def lower_descendant_groups(nice: int, exclude: set[int]) -> str:
    """Lower the scheduling groups of the chromium pages to ``nice`` (Linux autogroup):
    Playwright starts chromium in a session of its own, so without this it takes an equal
    share of the machine whatever its nice. Returns what was done, as a sentence."""
    groups: dict[str, int] = {}
    for pid in _descendants(exclude):
        path = Path(f"/proc/{pid}/autogroup")
        with contextlib.suppress(OSError):
            name = path.read_text().split()[0]
            if name not in groups:
                path.write_text(str(nice))
                groups[name] = pid
    return f"chromium's scheduling groups at nice {nice}: {', '.join(groups) or 'none found'}"


def _chromium_cpu(exclude: set[int]) -> float:
    """CPU seconds of the processes this benchmark started for the chromium pages (chromium
    and Playwright's node driver: its descendants but ``exclude``, the server and the job),
    with their children that ended (renderers of closed tabs)."""
    total = 0.0
    for pid in _descendants(exclude):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(fields[i]) for i in (11, 12, 13, 14)) / os.sysconf("SC_CLK_TCK")
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = parts[3] + parts[4]
    return (sum(parts) - idle) / ticks, sum(parts) / ticks


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


def _is_chart(fm, slug: str) -> bool:
    if fm.WhichOneof("type") != "delta" or fm.delta.WhichOneof("type") != "new_element":
        return False
    kind = fm.delta.new_element.WhichOneof("type")
    if slug in COMPONENT_PAGES:
        return kind in ("component_instance", "bidi_component")
    return kind == "plotly_chart"


async def _until_finished(ws, slug: str, t0: float, seen: dict) -> None:
    """Read ForwardMsgs until the script run ends; note the first chart, the live fragment."""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    while True:
        left = VIEW_TIMEOUT_S - (time.monotonic() - t0)
        if left <= 0:
            raise TimeoutError(f"{slug}: the script did not finish in {VIEW_TIMEOUT_S:.0f} s")
        raw = await asyncio.wait_for(ws.recv(), timeout=left)
        if isinstance(raw, str):
            continue
        seen["bytes"] = seen.get("bytes", 0) + len(raw)
        fm = ForwardMsg()
        fm.ParseFromString(raw)
        kind = fm.WhichOneof("type")
        cache = seen.setdefault("cache", {})  # message hash -> is a chart, as a browser keeps
        if fm.metadata.cacheable and fm.hash:
            cache[fm.hash] = _is_chart(fm, slug)
        chart = _is_chart(fm, slug) or (kind == "ref_hash" and cache.get(fm.ref_hash, False))
        if "chart" not in seen and chart:
            seen["chart"] = time.monotonic() - t0
        elif kind == "delta" and fm.delta.WhichOneof("type") == "new_element":
            element = fm.delta.new_element
            what = element.WhichOneof("type")
            if what in ("alert", "exception"):  # what the page said instead of a chart
                body = getattr(element, what)
                seen.setdefault("said", []).append(getattr(body, "body", "") or str(body))
        elif kind == "new_session":
            seen["page_hash"] = fm.new_session.page_script_hash
        elif kind == "auto_rerun":
            seen["fragment"] = (fm.auto_rerun.fragment_id, fm.auto_rerun.interval)
        elif kind == "stop_auto_rerun":
            seen.pop("fragment", None)
        # A run that ends early for a rerun (the app selecting the run, a page switching) is
        # followed by the run that draws the page: wait for that one.
        elif kind == "script_finished" and (
            fm.script_finished != ForwardMsg.FINISHED_EARLY_FOR_RERUN
        ):
            return


async def _connect(url: str):
    import websockets  # installed with Streamlit

    return await websockets.connect(
        url.replace("http", "ws", 1) + "/_stcore/stream", subprotocols=["streamlit"], max_size=None
    )


async def _ask(ws, slug: str, seen: dict, fragment: str | None = None) -> float:
    """Ask for page ``slug`` (or, with ``fragment``, for that live fragment of it, as the
    browser's timer does) and read until the run ends; returns the seconds it took. ``seen``
    holds the tab's message cache and gets what the run sent (first chart, bytes, fragment)."""
    from streamlit.proto.BackMsg_pb2 import BackMsg

    msg = BackMsg()
    msg.rerun_script.query_string = f"run={RUN}"
    msg.rerun_script.page_name = slug
    msg.rerun_script.cached_message_hashes.extend(seen["cache"])
    if fragment is not None:
        msg.rerun_script.page_script_hash = seen.get("page_hash", "")
        msg.rerun_script.fragment_id = fragment
        msg.rerun_script.is_auto_rerun = True
    t0 = time.monotonic()
    await ws.send(msg.SerializeToString())
    await _until_finished(ws, slug, t0, seen)
    return time.monotonic() - t0


async def ws_session(
    url: str, pages: list[str], until: float, dwell: float, s: Session, views: int | None = None
) -> None:
    """One lightweight client: one websocket session asking for page after page (until
    ``until``, or ``views`` pages)."""
    ws = await _connect(url)
    try:
        cache: dict[str, bool] = {}  # the messages this tab has, which the server may reference
        i = 0
        while time.monotonic() < until and (views is None or i < views):
            slug = pages[i % len(pages)]
            i += 1
            seen: dict = {"cache": cache}
            await _ask(ws, slug, seen)
            if "chart" in seen:
                s.views.append((slug, seen["chart"]))
            elif slug not in CHARTLESS:
                said = " / ".join(x.strip()[:160] for x in seen.get("said", []))
                s.failures.append((slug, f"no chart; the page said: {said or 'nothing'}"))
            # Stay on the page; a live page asks for its fragment again on a timer.
            leave = min(until, time.monotonic() + dwell)
            while "fragment" in seen:
                fragment, interval = seen["fragment"]
                if time.monotonic() + interval >= leave:
                    break
                await asyncio.sleep(interval)
                await _ask(ws, slug, seen, fragment)
                s.reruns += 1
            await asyncio.sleep(max(0.0, leave - time.monotonic()))
    finally:
        await ws.close()


@dataclass
class Solo:
    """One session alone on the server, per page: server CPU-s and bytes of each full view and
    of each live-fragment refresh, and the refresh interval the page asked for."""

    view_cpu: list[float] = field(default_factory=list)
    view_bytes: list[int] = field(default_factory=list)
    refresh_cpu: list[float] = field(default_factory=list)
    refresh_bytes: list[int] = field(default_factory=list)
    interval: float | None = None


async def solo_costs(url: str, server_pid: int, views: int, refreshes: int) -> dict[str, Solo]:
    """What one page view and one live refresh cost the server, one session alone (before the
    class): for each page, ``views`` fresh tabs (a new session, as a student opening the link)
    each asking for the page, then ``refreshes`` timed refreshes of its live fragment."""
    out: dict[str, Solo] = {}
    for slug in PAGES:
        solo = out.setdefault(slug, Solo())
        for _ in range(views):
            ws = await _connect(url)
            try:
                seen: dict = {"cache": {}}
                cpu0 = proc_cpu_rss(server_pid)[0]
                await _ask(ws, slug, seen)
                solo.view_cpu.append(proc_cpu_rss(server_pid)[0] - cpu0)
                solo.view_bytes.append(seen.get("bytes", 0))
                for _ in range(refreshes if "fragment" in seen else 0):
                    fragment, solo.interval = seen["fragment"]
                    await asyncio.sleep(solo.interval)
                    seen["bytes"] = 0
                    cpu0 = proc_cpu_rss(server_pid)[0]
                    await _ask(ws, slug, seen, fragment)
                    solo.refresh_cpu.append(proc_cpu_rss(server_pid)[0] - cpu0)
                    solo.refresh_bytes.append(seen["bytes"])
            finally:
                await ws.close()
    return out


async def teacher_visit(url: str) -> float:
    """The teacher opens the run once before the class (the server's first page run imports
    torch, plotly and the pages): seconds to its first chart."""
    s = Session()
    await ws_session(url, ["loss"], time.monotonic() + VIEW_TIMEOUT_S, 0.0, s, views=1)
    if not s.views:
        raise SystemExit(f"the teacher's first visit got no chart: {s.failures}")
    return s.views[0][1]


# The title each page shows (the wait for a page after a click starts there).
TITLE = {
    "loss": "Loss: does LCA add up?",
    "layers": "Layers: where and when",
    "neurons": "Neurons & weights: who did",
    "playground": "Playground",
    "home": "LCA Lab",
}
FRESH_CHART = (  # a chart of the current script run (a previous page's charts are stale)
    '[data-testid="stMain"] [data-testid="stElementContainer"][data-stale="false"] '
    '[data-testid="stPlotlyChart"] .main-svg'
)


class ChartArrival:
    """Watches a chromium tab's websocket: when the first chart of the page it moves to arrived
    from the server (what the lightweight clients time), before the browser draws it.

    After ``expect(slug)``, the next run of a page other than the one shown (a ``new_session``
    message with another page hash; on the first load, any) is the page asked for; its first
    chart message, or a reference to a cached one, is the arrival. The previous page's live
    refreshes, still arriving, carry the old page's hash and are not counted."""

    def __init__(self) -> None:
        self.slug = ""
        self.shown: str | None = None  # page hash of the page on screen
        self.target: str | None = None
        self.armed = False
        self.at: float | None = None
        self.cache: dict[str, bool] = {}

    def expect(self, slug: str) -> None:
        self.slug, self.target, self.armed, self.at = slug, None, True, None

    def frame(self, payload: bytes | str) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        if isinstance(payload, str):
            return
        now = time.monotonic()
        fm = ForwardMsg()
        fm.ParseFromString(payload)
        kind = fm.WhichOneof("type")
        if fm.metadata.cacheable and fm.hash:
            self.cache[fm.hash] = _is_chart(fm, self.slug)
        if kind == "new_session":
            page = fm.new_session.page_script_hash
            if self.armed and self.target is None and page != self.shown:
                self.target = page
            self.shown = page
            return
        chart = _is_chart(fm, self.slug) or (
            kind == "ref_hash" and self.cache.get(fm.ref_hash, False)
        )
        if chart and self.at is None and self.target is not None and self.shown == self.target:
            self.at = now


async def browser_session(
    browser,
    url: str,
    pages: list[str],
    until: float,
    dwell: float,
    s: Session,
    nav: str = "click",
) -> None:
    """One real chromium tab: open each page, wait until its first chart is drawn.

    ``nav="click"``: the tab loads the app once (its first page, a full page load, also noted in
    ``s.loads``) and then moves from page to page by clicking the sidebar, as a student does;
    ``nav="goto"``: every page is a new full page load (the address typed again).
    """
    page = await browser.new_page(viewport={"width": 1024, "height": 768})
    page.set_default_navigation_timeout(VIEW_TIMEOUT_S * 1000)
    page.set_default_timeout(VIEW_TIMEOUT_S * 1000)
    wait_ms = VIEW_TIMEOUT_S * 1000
    arrival = ChartArrival()
    page.on("websocket", lambda ws: ws.on("framereceived", arrival.frame))

    async def view(slug: str, load: bool) -> None:
        if load:
            await page.goto(f"{url}/{'' if slug == 'home' else slug}?run={RUN}")
        else:
            href = f"{url}/{'' if slug == 'home' else slug}"
            link = page.locator(f'[data-testid="stSidebarNavLink"][href="{href}"]')
            await link.first.click(timeout=wait_ms)
        await page.locator("h1", has_text=TITLE[slug]).first.wait_for(timeout=wait_ms)
        if slug in COMPONENT_PAGES:
            await (
                page.frame_locator('[data-testid="stMain"] iframe')
                .first.locator("svg, canvas")
                .first.wait_for(timeout=wait_ms)
            )
        elif slug not in CHARTLESS:
            await page.locator(FRESH_CHART).first.wait_for(timeout=wait_ms)

    try:
        i = 0
        while time.monotonic() < until:
            slug = pages[i % len(pages)]
            load = i == 0 or nav == "goto"
            i += 1
            t0 = time.monotonic()
            arrival.expect(slug)
            try:
                # Bounded as a whole: a starved renderer must not hold the class open.
                await asyncio.wait_for(view(slug, load), 2 * VIEW_TIMEOUT_S)
                if slug not in CHARTLESS:
                    s.views.append((slug, time.monotonic() - t0))
                    if arrival.at is not None:
                        s.delivered.append((slug, arrival.at - t0))
                    if load:
                        s.loads.append(time.monotonic() - t0)
            except Exception:  # noqa: BLE001 - a timeout is a failed view, counted
                if slug not in CHARTLESS:
                    try:
                        said = await asyncio.wait_for(
                            page.locator(
                                '[data-testid="stAlert"], [data-testid="stException"]'
                            ).all_inner_texts(),
                            10,
                        )
                    except Exception:  # noqa: BLE001
                        said = ["(the page did not answer)"]
                    s.failures.append(
                        (slug, f"no chart in the browser; it said: {' / '.join(said)[:300]}")
                    )
            await asyncio.sleep(max(0.0, min(until, time.monotonic() + dwell) - time.monotonic()))
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(page.close(), 30)


async def run_class(
    url: str,
    n: int,
    browsers: int,
    seconds: float,
    dwell: float,
    exclude: set[int],
    nav: str,
    clients_nice: int = 0,
) -> tuple[list[Session], int]:
    from playwright.async_api import async_playwright

    sessions = [Session() for _ in range(n)]
    until = time.monotonic() + seconds
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS) if browsers else None
        if b is not None and clients_nice:
            print(lower_descendant_groups(clients_nice, exclude), flush=True)
        tasks = []
        for i in range(n):
            order = PAGES[i % len(PAGES) :] + PAGES[: i % len(PAGES)]  # spread the pages
            if i < browsers:
                session = browser_session(b, url, order, until, dwell, sessions[i], nav)
            else:
                session = ws_session(url, order, until, dwell, sessions[i])
            tasks.append(asyncio.create_task(session))  # starts now, 0.1 s after the previous
            await asyncio.sleep(0.1)  # students do not all press Enter in the same millisecond
        done = await asyncio.gather(*tasks, return_exceptions=True)
        CHROMIUM_CPU[0] = _chromium_cpu(exclude)  # before they exit
        if b is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(b.close(), 60)
    crashed = 0
    for s, d in zip(sessions, done, strict=True):
        if isinstance(d, BaseException):
            crashed += 1
            s.failures.append(("session", f"{type(d).__name__}: {d}"))
    return sessions, crashed


def print_solo(solo: dict[str, Solo]) -> None:
    """The table of one session alone: server CPU and bytes per view and per live refresh."""
    print("one session alone (server CPU-s from /proc, bytes received; median):", flush=True)
    for slug, s in solo.items():
        line = (
            f"  {slug:10s} view {statistics.median(s.view_cpu):.3f} CPU-s, "
            f"{statistics.median(s.view_bytes) / 1024:.0f} KiB"
        )
        if s.refresh_cpu:
            line += (
                f"; live refresh every {s.interval:g} s: "
                f"{statistics.median(s.refresh_cpu):.3f} CPU-s, "
                f"{statistics.median(s.refresh_bytes) / 1024:.0f} KiB"
            )
        print(line, flush=True)


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))] if v else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=30)
    ap.add_argument("--browsers", type=int, default=3, help="how many sessions are chromium")
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--dwell", type=float, default=8.0, help="seconds a student stays on a page")
    ap.add_argument("--alone", type=float, default=15.0, help="seconds to time training alone")
    ap.add_argument(
        "--solo-views",
        type=int,
        default=2,
        help="before the class, one session alone opens each page this many times (server CPU "
        "and bytes per view; 0: skip)",
    )
    ap.add_argument(
        "--browser-nav",
        choices=("click", "goto"),
        default="click",
        help="how a chromium page moves to the next page: click the sidebar, as a student does "
        "(the app is loaded once), or goto: a full page load every time (the address typed)",
    )
    ap.add_argument(
        "--clients-nice",
        type=int,
        default=0,
        help="run the client side (this process's lightweight clients and the chromium pages, "
        "which stand for the students' own machines) at this nice value, so they take only the "
        "CPU the server and the training run leave (0: normal priority, as the other processes)",
    )
    args = ap.parse_args()
    print(
        f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs); "
        f"{args.sessions} sessions ({args.browsers} chromium) for {args.seconds:.0f} s, "
        f"{args.dwell:.0f} s on each page",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="lca-class-bench-") as tmp:
        runs_dir = Path(tmp) / "runs"
        runs_dir.mkdir()
        os.environ["LCA_RUNS_DIR"] = str(runs_dir)
        from lca import jobs

        proc, url = start_server(runs_dir, Path(tmp) / "server.log", warm=True)
        job = None
        try:
            # The demo's network; enough steps to outlast the class (it trains ~140-190
            # steps/s alone on an idle core since the measurement gradient got faster).
            steps = int(300 * (2 * args.alone + args.seconds + 120))
            job = start_training(runs_dir, steps)
            path = runs_dir / RUN
            while steps_done(path) < 20:
                if not jobs.poll(job).alive:
                    raise SystemExit("the training run ended before it began")
                time.sleep(0.5)
            first = asyncio.run(teacher_visit(url))
            print(f"teacher's first visit after the server started: {first:.1f} s", flush=True)
            print(
                f"priorities (nice): the server's main thread (event loop) "
                f"{proc_nice(proc.pid)}, its page runs {proc_nice(proc.pid) + server_nice()} "
                f"(each lowers its own thread), the training run "
                f"{proc_nice(job.pid)}, the clients "
                f"{os.getpriority(os.PRIO_PROCESS, 0) + args.clients_nice}",
                flush=True,
            )
            if args.solo_views:
                print_solo(asyncio.run(solo_costs(url, proc.pid, args.solo_views, 2)))
            busy0, total0 = machine_busy()
            alone = steps_per_second(path, args.alone)
            busy1, total1 = machine_busy()
            cpu0, _ = proc_cpu_rss(proc.pid)
            job0, _ = proc_cpu_rss(job.pid)
            if args.clients_nice:
                # This thread runs the lightweight clients and starts chromium (its children
                # inherit it); the server and the training run were started before.
                os.nice(args.clients_nice)
                print(lower_autogroup(args.clients_nice), flush=True)
            me0 = _own_cpu()
            s0, t0 = steps_done(path), time.monotonic()
            sessions, crashed = asyncio.run(
                run_class(
                    url,
                    args.sessions,
                    args.browsers,
                    args.seconds,
                    args.dwell,
                    {proc.pid, job.pid},
                    args.browser_nav,
                    args.clients_nice,
                )
            )
            loaded = (steps_done(path) - s0) / (time.monotonic() - t0)
            cpu1, rss = proc_cpu_rss(proc.pid)
            job1, _ = proc_cpu_rss(job.pid)
            me1 = _own_cpu()
            wall = time.monotonic() - t0
            busy2, total2 = machine_busy()
            load_during = os.getloadavg()[0]
            alone_after = steps_per_second(path, args.alone)
            if not jobs.poll(job).alive:
                print("note: the training run ended during the measurement", flush=True)
        finally:
            if job is not None:
                jobs.stop(job, wait_s=30)
            stop(proc)
    views = [v for s in sessions for v in s.views]
    failures = [f for s in sessions for f in s.failures]
    served = sum(1 for s in sessions if s.views and not s.failures)
    print(
        f"sessions served: {served}/{args.sessions} (every view got its chart); views with a "
        f"chart: {len(views)}; failed views: {len(failures) - crashed}; sessions that broke "
        f"off: {crashed}; live-chart refreshes asked by the lightweight clients: "
        f"{sum(s.reruns for s in sessions)}"
    )
    for slug in PAGES:
        t = [sec for p, sec in views if p == slug]
        if t:
            print(
                f"  {slug:10s} first chart: median {statistics.median(t):.2f} s, "
                f"p95 {pct(t, 95):.2f} s ({len(t)} views)"
            )
    allt = [sec for _, sec in views]
    if allt:
        print(
            f"all pages, to the chart drawn in chromium / delivered to a lightweight client: "
            f"median {statistics.median(allt):.2f} s, p95 {pct(allt, 95):.2f} s"
        )
    # The server's side, measured the same way for every session: from asking for a page to its
    # first chart's message (chromium: from the click, as read on its websocket).
    served_t = [sec for s in sessions[: args.browsers] for _, sec in s.delivered] + [
        sec for s in sessions[args.browsers :] for _, sec in s.views
    ]
    if served_t:
        print(
            f"all pages, to the first chart's message from the server (every session): median "
            f"{statistics.median(served_t):.2f} s, p95 {pct(served_t, 95):.2f} s "
            "(target p95 <= 3 s)"
        )
    first = [s.views[0][1] for s in sessions[args.browsers :] if s.views]
    later = [sec for s in sessions[args.browsers :] for _, sec in s.views[1:]]
    if first and later:
        print(
            f"  lightweight clients: the class arriving (each one's first view, "
            f"{len(sessions)} within {0.1 * len(sessions):.0f} s): median "
            f"{statistics.median(first):.2f} s, p95 {pct(first, 95):.2f} s; every view after "
            f"it: median {statistics.median(later):.2f} s, p95 {pct(later, 95):.2f} s"
        )
    browsers = [sec for s in sessions[: args.browsers] for _, sec in s.views]
    delivered = [sec for s in sessions[: args.browsers] for _, sec in s.delivered]
    if browsers:
        print(
            f"  in the chromium pages: drawn median {statistics.median(browsers):.2f} s, "
            f"p95 {pct(browsers, 95):.2f} s ({len(browsers)} views, moving between pages by "
            f"{'clicking the sidebar' if args.browser_nav == 'click' else 'full page loads'})"
            + (
                f"; its message arrived: median {statistics.median(delivered):.2f} s, "
                f"p95 {pct(delivered, 95):.2f} s ({len(delivered)} views)"
                if delivered
                else ""
            )
        )
    loads = [sec for s in sessions[: args.browsers] for sec in s.loads]
    if loads and args.browser_nav == "click":
        print(f"  their first full page load: {', '.join(f'{x:.2f}' for x in loads)} s")
    print(
        f"server: {cpu1 - cpu0:.1f} CPU-s in {wall:.0f} s ({(cpu1 - cpu0) / wall:.2f} cores), "
        f"peak RSS {rss / 2**20:.0f} MiB"
    )
    cores = os.cpu_count() or 1
    chromium = CHROMIUM_CPU[0] / wall
    class_busy = (busy2 - busy1) / (total2 - total1) * cores
    print(
        f"machine: {(busy1 - busy0) / (total1 - total0) * cores:.2f} cores busy while training "
        f"alone, {class_busy:.2f} during the class (load average {load_during:.2f} at its end); "
        f"during the class the server took {(cpu1 - cpu0) / wall:.2f} cores, the training run "
        f"{(job1 - job0) / wall:.2f}, this benchmark's lightweight clients "
        f"{(me1 - me0) / wall:.2f}, the chromium pages (and Playwright's driver) "
        f"{chromium:.2f}, everything else on the machine "
        f"{max(0.0, class_busy - (cpu1 - cpu0 + job1 - job0 + me1 - me0) / wall - chromium):.2f}"
        + (f" (clients at nice {args.clients_nice})" if args.clients_nice else "")
    )
    refreshes = sum(s.reruns for s in sessions)
    print(
        f"server CPU per request in the class: {(cpu1 - cpu0) / max(1, len(views) + refreshes):.3f}"
        f" CPU-s ({len(views)} views + {refreshes} live refreshes of the lightweight clients; the"
        " chromium pages' own refreshes are not counted)"
    )
    before_after = (alone + alone_after) / 2
    print(
        f"training: {alone:.1f} steps/s alone before, {alone_after:.1f} after, {loaded:.1f} "
        f"under load; ratio {loaded / before_after if before_after else float('nan'):.2f} "
        "(target >= 0.8; under load / mean of alone before and after)"
    )
    for f in failures[:8]:
        print("  failure:", f)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
