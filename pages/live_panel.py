"""The live panel: a run's loss, layer lines and bars redrawn every second while it trains.

Shared by Home (the demo) and Train; a helper module, not a page, so pages never import
each other.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from lca import jobs, runs
from lca.figures import live_layer_bars, live_layer_lines, live_loss_figure
from lca.store import Reader, RunFileError
from pages.shared import RUN_KEY, literal, live_fragment, locked_help, may, plot, refuse_unless

log = logging.getLogger("lca.app")
LIVE_KEY = "live_job"  # session: the run name of the job this session watches
SELECT_KEY = "_select_when_ready"  # app.py selects this run in the sidebar once it exists
PAGE_AFTER_RUN = ("pages/loss.py", "pages/layers.py", "pages/runs.py")
ROOT = Path(__file__).resolve().parent.parent
LIVE_SECONDS = 1.0  # the live panel re-reads the run file this often (a short run is quick)
STARTING_SECONDS = 0.25  # ... and this often until the first step is on disk (first chart)
STARTING_FOR_S = 120.0  # but never longer than this after the job started


# ---------------------------------------------------------------------------------------------
# Live panel (also used by the Home page).


def first_existing_page(candidates: tuple[str, ...] = PAGE_AFTER_RUN) -> str:
    """The first page of ``candidates`` whose file exists (pages are added as they are built)."""
    for p in candidates:
        if (ROOT / p).exists():
            return p
    return "pages/runs.py"


def _select(name: str) -> None:
    # A widget callback runs before the sidebar's run picker is drawn, so it may set it.
    st.session_state[RUN_KEY] = name


def switch_page(page: str) -> None:
    """st.switch_page that keeps the sidebar's selection.

    The run picker is bound to ``?run=``; a plain ``st.switch_page(page)`` tries to clear the
    query string and Streamlit refuses because of that binding. An empty mapping replaces the
    query string instead, and the picker writes ``?run=`` back on the new page.
    """
    st.switch_page(page, query_params={})


def open_run_button(name: str, *, label: str, page: str, key: str, **kwargs: Any) -> None:
    """A button that selects run ``name`` in the sidebar and opens ``page``."""
    if st.button(label, key=key, on_click=_select, args=(name,), **kwargs):
        switch_page(page)


def read_snapshot(path: Path) -> dict[str, Any] | None:
    """What the live charts need from a run file (None while the file does not exist yet)."""
    if not path.exists():
        return None
    with Reader(path) as r:
        kind = r.steps("kind")
        snap: dict[str, Any] = {
            "status": r.status,
            "segments": r.num_steps,
            "steps": int((kind == 0).sum()),
            "kind": kind,
            "total": int(r.config.get("steps") or 0) or None,
            "loss": r.steps("loss"),
            "helped": r.steps("helped"),
            "cumulative": r.layer_lca(cumulative=True),
            "names": list(r.names),
            "wall": float(r.steps("wall")[-1]) if r.num_steps else 0.0,
            "test_acc": None,
            "train_loss": None,
        }
        if "steps/train_loss" in getattr(r, "series_layout", {}):
            snap["train_loss"] = r.series("steps/train_loss")
        if r.has("eval"):
            try:
                acc = r.events("eval").get("test_acc")
            except KeyError:
                acc = None
            if acc is not None and len(acc) and np.isfinite(acc[-1]):
                snap["test_acc"] = float(acc[-1])
    return snap


def _draw_snapshot(snap: dict[str, Any], key: str) -> None:
    total = snap["total"]
    done = snap["steps"]
    loss = snap["loss"]
    frac = min(1.0, done / total) if total else 0.0
    st.progress(frac, text=f"Step {done} of {total or '?'}")
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Steps done", f"{done} / {total or '?'}")
    c2.metric(
        "Loss now",
        f"{loss[-1]:.3f}",
        delta=f"{loss[-1] - loss[0]:+.3f} since start" if len(loss) > 1 else None,
        delta_color="inverse",
    )
    c3.metric("Test accuracy", "—" if snap["test_acc"] is None else f"{snap['test_acc']:.1%}")
    helped = snap["helped"]
    c4.metric(
        "Weights that helped (last step)",
        "—" if not len(helped) else f"{helped[-1]:.0%}",
        help="Share of all weights whose LCA was negative on the latest step.",
    )
    left, right = st.columns([3, 2])
    with left:
        plot(
            live_loss_figure(
                loss, total_steps=total, train_loss=snap["train_loss"], kind=snap["kind"]
            ),
            key=f"{key}-loss",
        )
        st.caption("The loss on the fixed measurement set after each step; falling = learning.")
    with right:
        cum = snap["cumulative"]
        totals = cum[-1] if len(cum) else np.zeros(0)
        plot(live_layer_bars(totals, snap["names"]), key=f"{key}-bars")
        st.caption(":green[Green bar]: the layer lowered the loss so far; :red[red]: it raised it.")
    plot(
        live_layer_lines(snap["cumulative"], snap["names"], total_steps=total, kind=snap["kind"]),
        key=f"{key}-lines",
    )
    st.caption(
        "Each line adds up one layer's LCA step by step: the further it sinks into the green "
        "band, the more of the learning that layer did."
    )


def _ended_sentence(job: jobs.Job, snap: dict[str, Any] | None) -> None:
    state = job.state
    if snap is not None:
        state = snap["status"] if snap["status"] != "running" else state
    if state == "complete" and snap is not None:
        loss = snap["loss"]
        acc = "" if snap["test_acc"] is None else f", test accuracy {snap['test_acc']:.1%}"
        st.success(
            f"{job.name} finished {snap['steps']} steps in {job.seconds:.0f} s: loss "
            f"{loss[0]:.3f} → {loss[-1]:.3f}{acc}."
        )
    elif state == "interrupted":
        kept = f" after {snap['steps']} steps" if snap else ""
        st.warning(f"{job.name} was stopped{kept}; every recorded step is kept.")
    else:
        st.error(literal(jobs.last_error(job) or f"{job.name} ended without finishing."))


def _panel_body(name: str, key: str) -> bool:
    """Draw the job's state once; returns whether it is still running."""
    return _panel_state(name, key)[0]


def _panel_state(name: str, key: str) -> tuple[bool, int]:
    """Draw the job's state once; returns (still running, steps recorded so far)."""
    job = jobs.find(name)
    if job is None:
        st.info(f"No training job for {name} is known on this server.")
        return False, 0
    job = jobs.poll(job)
    path = Path(job.path)
    try:
        snap = read_snapshot(path)
    except (RunFileError, OSError, KeyError, ValueError) as e:
        if job.alive:
            snap = None  # the file is being created; next tick will read it
        else:
            st.error(literal(str(e).splitlines()[0] if str(e) else f"{name} cannot be read."))
            return False, 0
    head, stop_col = st.columns([5, 1])
    with head:
        if job.alive:
            st.markdown(f"**Training {name}** · {job.seconds:.0f} s")
        else:
            _ended_sentence(job, snap)
    with stop_col:
        if (
            job.alive
            and st.button(
                "Stop",
                key=f"{key}-stop",
                icon=":material/stop_circle:",
                disabled=not may("stop"),
                help=locked_help(
                    "stop", "Stop as Ctrl-C would: the run ends 'interrupted' and keeps every step."
                ),
            )
            and refuse_unless("stop")
        ):
            jobs.stop(job)
            st.toast(f"Stopping {name}…")
    if snap is None:
        if job.alive:
            st.info("Starting: loading the data, building the model and measuring the first loss…")
        return job.alive, 0
    if snap["segments"] == 0 and job.alive:
        st.info("The first step is being measured…")
    _draw_snapshot(snap, key)
    if not job.alive and path.exists():
        page = first_existing_page()
        open_run_button(
            name,
            label="Open this run",
            page=page,
            key=f"{key}-open",
            type="primary",
            icon=":material/open_in_new:",
        )
    return job.alive, snap["segments"]


def _live_tick(name: str, key: str, *, starting: bool) -> None:
    try:
        running, steps = _panel_state(name, key)
        ready = (runs.runs_dir() / name).exists()
    except Exception as e:  # noqa: BLE001 - a live panel must never show a traceback
        log.exception("live panel failed")
        st.error(f"The live view could not read {name} ({type(e).__name__}); it will retry.")
        running, ready, steps = True, False, 0
    if ready and st.session_state.get(SELECT_KEY) == name:
        st.rerun()  # the file exists now: app.py selects it in the sidebar
    if not running:  # the job ended: redraw the whole page once, without polling
        st.rerun()
    if starting and steps:  # the first step is drawn: poll at the normal pace from now on
        st.rerun()


@live_fragment(LIVE_SECONDS)
def _live_fragment(name: str, key: str) -> None:
    _live_tick(name, key, starting=False)


@live_fragment(STARTING_SECONDS)
def _starting_fragment(name: str, key: str) -> None:
    """The live panel of a run with no step yet: polled fast, so the first chart is drawn as
    soon as the first step is on disk (a warm-started demo has it within a second)."""
    _live_tick(name, key, starting=True)


def _has_steps(path: Path) -> bool:
    try:
        with Reader(path) as r:
            return r.num_steps > 0
    except (RunFileError, OSError, KeyError, ValueError):
        return False


def still_there(name: str) -> bool:
    """Whether a watched run is worth showing: its job still runs or its file still exists."""
    job = jobs.find(name)
    return (job is not None and job.alive) or (runs.runs_dir() / name).exists()


def live_panel(name: str, key: str = "live") -> None:
    """Progress, loss curve and per-layer LCA of the job writing ``name``; live while it runs.

    The whole page reruns once when the run file appears (so the sidebar can select it) and
    once when the job ends (so the panel stops polling).
    """
    job = jobs.find(name)
    if job is not None and jobs.poll(job).alive:
        if job.seconds > STARTING_FOR_S or _has_steps(runs.runs_dir() / name):
            _live_fragment(name, key)
        else:
            _starting_fragment(name, key)
    else:
        try:
            _panel_body(name, key)
        except Exception as e:  # noqa: BLE001
            log.exception("live panel failed")
            st.error(literal(f"{name} could not be shown ({type(e).__name__}: {e})."))
