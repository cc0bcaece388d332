"""The Playground in a real browser: steps per second there, and what it costs the server.

Starts ``streamlit run app.py`` on a free port (an empty runs folder), opens the Playground in
Debian's Chromium (Playwright), then measures, one after the other:

1. idle: the page loaded, nothing playing (the server's baseline CPU);
2. Play at the default speed (50 steps/s asked for): steps/s and frames/s reached in the browser;
3. Play at "fastest": as many steps per frame as fit in ~18 ms, redrawing every frame.

For each phase it prints the steps and frames per second measured inside the page and the
CPU-seconds the Streamlit server process consumed (utime + stime from /proc/<pid>/stat). It also
lists every host the browser contacted. The server is ended whatever happens.

    python benchmarks/playground.py [--seconds 20] [--width 1024 --height 768]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lca.serve import app_command, free_port  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking"]
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces; skip past it
    return (int(fields[11]) + int(fields[12])) / TICK


def start_server(runs_dir: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "LCA_RUNS_DIR": str(runs_dir), "PYTHONPATH": str(ROOT)}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            app_command(port),
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
    stop(proc)
    raise SystemExit("streamlit did not start:\n" + log_path.read_text()[-2000:])


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def component_frame(page, timeout_s: float = 120.0):
    """The Playground component's iframe, once its engine is ready."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for frame in page.frames:
            if "lca_playground" in frame.url:
                try:
                    if frame.evaluate("Boolean(window.PG && window.PG.ready)"):
                        return frame
                except Exception:  # noqa: BLE001 - the frame may still be loading
                    pass
        page.wait_for_timeout(200)
    urls = [f.url for f in page.frames]
    raise SystemExit(f"the Playground component did not start in the browser (frames: {urls})")


def measure(frame, server_pid: int, seconds: float) -> dict[str, float]:
    before = frame.evaluate("({s: PG.session.steps, d: PG.stats.drawn, t: performance.now()})")
    cpu0 = cpu_seconds(server_pid)
    time.sleep(seconds)
    cpu1 = cpu_seconds(server_pid)
    after = frame.evaluate("({s: PG.session.steps, d: PG.stats.drawn, t: performance.now()})")
    dt = (after["t"] - before["t"]) / 1000
    return {
        "seconds": dt,
        "steps_per_s": (after["s"] - before["s"]) / dt,
        "frames_per_s": (after["d"] - before["d"]) / dt,
        "server_cpu_s": cpu1 - cpu0,
        "steps": after["s"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="play time at fastest speed")
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--height", type=int, default=768)
    args = ap.parse_args()

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        runs.mkdir()
        proc, url = start_server(runs, Path(tmp) / "streamlit.log")
        hosts: set[str] = set()  # requests made by the component's frame
        app_hosts: set[str] = set()  # requests made by the rest of the page (Streamlit, app.py)

        def record(request) -> None:
            host = urlparse(request.url).netloc or request.url[:20]
            try:
                frame_url = request.frame.url
            except Exception:  # noqa: BLE001 - a request without a frame (a service worker)
                frame_url = ""
            (hosts if "lca_playground" in frame_url else app_hosts).add(host)

        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = browser.new_page(viewport={"width": args.width, "height": args.height})
                page.on("request", record)
                t0 = time.perf_counter()
                page.goto(f"{url}/playground")
                frame = component_frame(page)
                print(f"component ready {time.perf_counter() - t0:.1f} s after opening the page")
                page.wait_for_timeout(1500)
                idle = measure(frame, proc.pid, 5.0)
                frame.click("#pg-play")
                default = measure(frame, proc.pid, max(5.0, args.seconds / 2))
                frame.select_option("#pg-speed", "max")  # one settings report to the server
                page.wait_for_timeout(2000)
                fastest = measure(frame, proc.pid, args.seconds)
                frame.click("#pg-play")
                shown = page.url
                browser.close()
        finally:
            stop(proc)

    print(f"viewport {args.width}x{args.height}, Chromium headless (software rendering)")
    print(f"{'phase':<22}{'seconds':>8}{'steps/s':>10}{'frames/s':>10}{'server CPU-s':>14}")
    for name, m in (
        ("idle (loaded)", idle),
        ("play, 50 steps/s asked", default),
        ("play, fastest", fastest),
    ):
        print(
            f"{name:<22}{m['seconds']:>8.1f}{m['steps_per_s']:>10.1f}{m['frames_per_s']:>10.1f}"
            f"{m['server_cpu_s']:>14.2f}"
        )
    per_min = 60 * fastest["server_cpu_s"] / fastest["seconds"]
    print(f"server CPU while one student plays: {per_min:.2f} CPU-s per minute of play")
    print(f"steps trained in the browser: {fastest['steps']:,}; address after play: {shown}")
    print(f"hosts the Playground component contacted: {', '.join(sorted(hosts))}")
    print(f"hosts the rest of the page contacted: {', '.join(sorted(app_hosts))}")


if __name__ == "__main__":
    main()
