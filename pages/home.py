"""Home: what LCA Lab does, a one-click demo that trains live, and the recent runs.

A classroom starts here with an empty runs folder: two lines say what the app shows, one button
trains a small network on handwritten digits (about 20 s) and the class watches the loss fall
and each layer's share of the learning grow, green for helped and red for hurt.
"""

from __future__ import annotations

import datetime as dt

import streamlit as st

from lca import jobs, runs
from lca.store import Reader, RunFileError, filecheck
from pages import through_app
from pages.live_panel import (
    LIVE_KEY,
    SELECT_KEY,
    first_existing_page,
    live_panel,
    open_run_button,
    still_there,
)
from pages.shared import literal, locked_help, may, refuse_unless, view_version

through_app()  # a bare page run on a fresh server: rerun through app.py

DEMO_KEY = "demo_job"  # session: run name of this session's demo
RECENT = 8

INTRO = (
    "LCA Lab shows **how a neural network learns**. While a model trains, every step's drop "
    "in the loss is shared out among its weights (*Loss Change Allocation*): "
    ":green[**green**] weights **helped** lower the loss, :red[**red**] ones **hurt**. "
    "You can see which layers, neurons and weights did the learning, live."
)


def start_demo() -> None:
    if not refuse_unless("train"):
        return
    name = runs.safe_name("demo")
    try:
        job = jobs.start(jobs.demo_config(), name)
    except (jobs.JobError, ValueError, OSError) as e:
        st.error(literal(e))
        return
    st.session_state[DEMO_KEY] = job.name
    st.session_state[LIVE_KEY] = job.name
    st.session_state[SELECT_KEY] = job.name
    st.rerun()


def demo_button(label: str, *, primary: bool) -> None:
    if st.button(
        label,
        type="primary" if primary else "secondary",
        key="home_demo",
        icon=":material/play_arrow:",
        disabled=not may("train"),
        help=locked_help(
            "train",
            "Trains a small network (two hidden layers, 64 and 32 "
            "neurons) on 8x8 handwritten digits for 800 steps, recording every "
            "weight's LCA; it takes about 20 seconds.",
        ),
    ):
        start_demo()


def current_demo() -> str | None:
    """This session's demo, else a demo still training on this server (after a page reload)."""
    name = st.session_state.get(DEMO_KEY)
    if name and still_there(name):
        return name
    st.session_state.pop(DEMO_KEY, None)
    for j in jobs.active():
        if j.name.startswith("demo"):
            st.session_state[DEMO_KEY] = j.name
            return j.name
    return None


@st.cache_data(max_entries=256, show_spinner=False)
def _summary(path: str, version: tuple) -> dict:
    """``Reader.summary()`` of one version of a run file (the status is in the file), shared by
    every session: Home lists the recent runs on every rerun, and opening each file for it was
    most of Home's server time (``benchmarks/app.py --server-cpu``)."""
    del version  # part of the cache key only
    with Reader(path) as r:
        return r.summary()


def _row(run: runs.RunFile) -> dict:
    info = {"status": "unreadable", "what": "", "loss": "", "problem": None}
    try:
        s = _summary(str(run.path), view_version(run.path, "summary"))
        info["status"] = s.get("status") or "?"
        what = literal(f"{s.get('dataset')} · {s.get('model')}")
        info["what"] = f"{what} · {s.get('steps')} steps"
        if s.get("loss0") is not None and s.get("loss_final") is not None:
            info["loss"] = f"loss {s['loss0']:.3f} → {s['loss_final']:.3f}"
        if s.get("test_acc") is not None:
            info["loss"] += f" · test accuracy {s['test_acc']:.1%}"
    except (RunFileError, OSError, KeyError, ValueError, IndexError) as e:
        info["problem"] = str(e).splitlines()[0] if str(e) else "cannot be read"
    return info


STATUS_ICON = {
    "running": ":blue[● running]",
    # Green and red mean helped and hurt the loss in this app, so statuses use other colours.
    "complete": ":violet[● complete]",
    "failed": ":orange[● failed]",
    "interrupted": ":gray[● interrupted]",
}


def recent_runs(items: list[runs.RunFile]) -> None:
    st.subheader("Recent runs")
    page = first_existing_page()
    filecheck.prefetch(run.path for run in items[:RECENT])  # one checking process for all
    for i, run in enumerate(items[:RECENT]):
        info = _row(run)
        c1, c2 = st.columns([5, 1], vertical_alignment="center")
        with c1:
            when = dt.datetime.fromtimestamp(run.modified).strftime("%d %b %H:%M")
            if info["problem"]:
                st.markdown(
                    f"**{literal(run.name)}** · {when}  \n:orange[{literal(info['problem'])}]"
                )
            else:
                st.markdown(
                    f"**{literal(run.name)}** · "
                    f"{STATUS_ICON.get(info['status'], literal(info['status']))} · "
                    f"{when}  \n{info['what']} · {info['loss']}"
                )
        with c2:
            if not info["problem"]:
                open_run_button(
                    run.name,
                    label="Open",
                    page=page,
                    key=f"home_open_{i}",
                    icon=":material/open_in_new:",
                )
    if len(items) > RECENT:
        st.page_link("pages/runs.py", label=f"All {len(items)} runs", icon=":material/list:")


def main() -> None:
    st.title("LCA Lab")
    st.markdown(INTRO)
    items = runs.list_runs()
    demo = current_demo()
    if demo:
        st.header("Demo: a network learning to read digits")
        live_panel(demo, key="home-demo")
        if not jobs.find(demo) or not jobs.find(demo).alive:
            demo_button("Run the demo again", primary=False)
    elif not items:
        st.info(
            "There are no runs yet. Start the demo to watch a small network learn to read "
            "handwritten digits in about 20 seconds, or set up your own run on the Train page."
        )
        demo_button("Start the demo", primary=True)
    else:
        c1, c2 = st.columns([1, 3], vertical_alignment="center")
        with c1:
            demo_button("Run the demo", primary=False)
        with c2:
            st.page_link(
                "pages/train.py", label="Set up your own run", icon=":material/play_circle:"
            )
    live_demo = demo if demo and jobs.is_live(demo) else None
    others = [r for r in items if r.name != live_demo]  # the live demo is drawn live above
    if others:
        st.divider()
        recent_runs(others)


if __name__ == "__main__":
    main()
