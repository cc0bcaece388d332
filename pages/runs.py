"""Runs: every run file in the runs folder, and what you can do with them.

One table with what each run was and how it went (so a class can find "the one with pruning"
at a glance); files that are not readable LCA runs are listed with their one-sentence problem
instead of breaking the page. Actions: open, compare, download, delete (with confirmation),
upload a run made elsewhere (validated before it is kept) and recover a run whose writer was
killed (``python -m lca recover``).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from lca import jobs, runs
from lca.store import Reader, RunFileError, filecheck, human_bytes
from pages import through_app
from pages.live_panel import first_existing_page, open_run_button, switch_page
from pages.shared import (
    DELETED_KEY,
    RUN_KEY,
    download_csv,
    literal,
    locked_help,
    may,
    refuse_unless,
)

through_app()  # a bare page run on a fresh server: rerun through app.py

ROOT = Path(__file__).resolve().parent.parent
COMPARE_KEY = "compare_runs"  # the Compare page reads the run names to compare from here
UPLOADED_KEY = "_uploaded_ids"


@st.cache_data(show_spinner=False, max_entries=1000)
def summarize(path: str, mtime: float, size: int) -> tuple[dict[str, Any] | None, str | None]:
    """(summary, None) for a readable run, (None, sentence) for anything else; cached per file
    version (path, mtime, size)."""
    try:
        with Reader(path) as r:
            return r.summary(), None
    except RunFileError as e:
        return None, str(e).splitlines()[0]
    except (OSError, KeyError, ValueError, IndexError, TypeError) as e:
        return None, f"{Path(path).name!r} cannot be read as an LCA run ({type(e).__name__})."


def stale(name: str, summary: dict[str, Any]) -> bool:
    """A run that says "running" but that nothing writes any more (its writer was killed).
    Asked of the run's lock each time (not cached: a writer can die at any moment)."""
    return (
        summary.get("status") == "running"
        and runs.busy_reason(name) is None
        and not jobs.is_live(name)
    )


def table(items: list[runs.RunFile]) -> tuple[pd.DataFrame, dict[str, dict], list[tuple]]:
    good: dict[str, dict] = {}
    bad: list[tuple[str, str]] = []
    rows = []
    filecheck.prefetch(run.path for run in items)  # one checking process for the whole folder
    for run in items:
        s, problem = summarize(str(run.path), run.modified, run.size)
        if s is None:
            bad.append((run.name, problem or "cannot be read"))
            continue
        good[run.name] = s
        status = s.get("status") or "?"
        if stale(run.name, s):
            status = "running (writer gone)"
        helped = s.get("mean_helped")
        rows.append(
            {
                "name": run.name,
                "dataset": s.get("dataset"),
                "model": s.get("model"),
                "techniques": ", ".join(s.get("techniques") or []) or "—",
                "steps": s.get("steps"),
                "status": status,
                "final loss": s.get("loss_final"),
                "test accuracy": None if s.get("test_acc") is None else 100 * s["test_acc"],
                "% helped (mean)": None if helped is None else 100 * helped,
                "conservation error": s.get("conservation_error"),
                "size (MB)": run.size / 1e6,
                "date": dt.datetime.fromtimestamp(run.modified),
            }
        )
    return pd.DataFrame(rows), good, bad


COLUMNS = {
    "name": st.column_config.TextColumn(width="medium", pinned=True),
    "final loss": st.column_config.NumberColumn(format="%.4f"),
    "test accuracy": st.column_config.NumberColumn("test accuracy (%)", format="%.1f"),
    "% helped (mean)": st.column_config.NumberColumn(
        format="%.1f", help="Share of weights with negative LCA (helped) on an average step."
    ),
    "conservation error": st.column_config.NumberColumn(
        format="%.2e", help="Σ over steps of (loss change − Σ LCA): how exactly LCA adds up."
    ),
    "size (MB)": st.column_config.NumberColumn(format="%.2f"),
    "date": st.column_config.DatetimeColumn(format="MMM D, HH:mm"),
}


def _set_compare(names: list[str]) -> None:
    st.session_state[COMPARE_KEY] = list(names)


def one_run_actions(names: list[str], good: dict[str, dict]) -> None:
    st.subheader("One run")
    current = st.session_state.get(RUN_KEY)
    pick = st.selectbox(
        "Run",
        names,
        index=names.index(current) if current in names else 0,
        key="runs_pick",
    )
    if pick is None:
        return
    path = runs.resolve(pick)
    summary = good.get(pick)
    recovered = None
    with st.container(horizontal=True, wrap=True):
        page = first_existing_page()
        open_run_button(
            pick,
            label="Open",
            page=page,
            key="runs_open",
            type="primary",
            icon=":material/open_in_new:",
            disabled=summary is None,
            help="Select this run and show its loss.",
        )
        st.download_button(
            "Download",
            data=lambda: open(path, "rb"),
            file_name=Path(pick).name,
            mime="application/x-hdf5",
            key="runs_download",
            on_click="ignore",
            icon=":material/download:",
        )
        busy = runs.busy_reason(pick)  # written right now (by the app or a terminal)
        if busy is None and jobs.is_live(pick):
            busy = f"{pick} is still training; stop it on the Train page first."
        if st.button(
            "Delete…",
            key="runs_delete",
            icon=":material/delete:",
            disabled=busy is not None or not may("delete"),
            help=locked_help("delete", busy or "Delete the run file."),
        ):
            st.session_state["runs_confirm_delete"] = pick
        if (
            summary is not None
            and summary.get("status") == "running"
            and st.button(
                "Recover",
                key="runs_recover",
                icon=":material/healing:",
                disabled=busy is not None or not may("recover"),
                help=locked_help(
                    "recover",
                    busy
                    or "The program writing this run was killed: keep "
                    "its whole steps and mark it interrupted (python -m lca recover).",
                ),
            )
            and refuse_unless("recover")
        ):
            recovered = recover(path)
    if recovered is not None:
        ok, sentence = recovered
        (st.success if ok else st.error)(literal(sentence))
    if st.session_state.get("runs_confirm_delete") == pick:
        st.warning(f"Delete {literal(pick)} for good? This cannot be undone.")
        d1, d2, _ = st.columns([1, 1, 4])
        if d1.button("Yes, delete it", key="runs_delete_yes", type="primary"):
            delete(pick)
        if d2.button("Cancel", key="runs_delete_no"):
            del st.session_state["runs_confirm_delete"]
            st.rerun()


def delete(name: str) -> None:
    st.session_state.pop("runs_confirm_delete", None)
    if not refuse_unless("delete"):
        return
    if jobs.is_live(name):
        st.error(
            f"{literal(name)} is still training; stop it on the Train page before deleting it."
        )
        return
    try:
        runs.delete(name)  # refused while a process writes it, whoever started that process
        jobs.forget(name)
    except runs.RunBusyError as e:
        st.error(literal(e))
        return
    except (runs.RunNameError, OSError) as e:
        st.error(literal(f"{name} could not be deleted ({e})."))
        return
    st.session_state.setdefault(DELETED_KEY, set()).add(name)  # app.py: no warning
    st.toast(f"Deleted {literal(name)}.")
    st.rerun()


def recover(path: Path) -> tuple[bool, str]:
    """Repair a killed writer's file in a subprocess (the same command a user would type);
    returns (success, one sentence)."""
    try:
        done = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "lca", "recover", str(path)],
            cwd=str(ROOT),
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    except subprocess.TimeoutExpired:
        return False, (
            f"Recovering {path.name} took more than 5 minutes; try python -m lca "
            f"recover {path.name} in a terminal."
        )
    lines = [ln for ln in (done.stdout + "\n" + done.stderr).splitlines() if ln.strip()]
    msg = lines[-1].removeprefix("error: ") if lines else f"{path.name} was recovered."
    if done.returncode == 0:
        summarize.clear()
    return done.returncode == 0, msg


def compare_actions(names: list[str]) -> None:
    st.subheader("Compare runs")
    chosen = st.multiselect(
        "Runs to compare",
        names,
        default=[n for n in st.session_state.get(COMPARE_KEY, []) if n in names],
        key="runs_compare_pick",
        placeholder="Pick two or more runs",
    )
    page = "pages/compare.py"
    available = (ROOT / page).exists()
    if st.button(
        "Compare",
        key="runs_compare",
        disabled=len(chosen) < 2,
        icon=":material/compare_arrows:",
        on_click=_set_compare,
        args=(chosen,),
        help="Pick at least two runs." if len(chosen) < 2 else None,
    ):
        if available:
            switch_page(page)
        st.info("The Compare page is not installed yet.")


def upload() -> None:
    st.subheader("Add a run file")
    if not may("upload"):
        st.caption(locked_help("upload"))
        return
    f = st.file_uploader(
        "Upload an LCA run (.h5) made on another computer",
        type=["h5"],
        key="runs_upload",
        help="It is checked before it is kept: files that are not LCA runs are refused.",
    )
    if f is None:
        return
    # What became of each file already handled: shown again on every rerun while the file
    # stays in the uploader, so a refusal never turns into a quieter message.
    done: dict[str, tuple[str, str]] = st.session_state.setdefault(UPLOADED_KEY, {})
    file_id = getattr(f, "file_id", None) or f"{f.name}:{f.size}"
    if file_id in done:
        refused, sentence = done[file_id]
        (st.error if refused else st.success)(literal(sentence))
        return
    folder = runs.runs_dir()
    tmp = folder / f".upload-{uuid.uuid4().hex}.tmp"  # not *.h5: never listed half-written
    try:
        with open(tmp, "wb") as out:
            out.write(f.getbuffer())
        try:
            # Read only from itself and bounded, checked in a process of its own before any
            # of it is read here; then read as the pages will.
            filecheck.check(tmp, name=f.name)
            with Reader(tmp) as r:
                r.summary()
        except RunFileError as e:
            sentence = str(e).splitlines()[0].replace(repr(tmp.name), repr(f.name))
            done[file_id] = ("refused", f"{sentence} It was not added.")
            st.error(literal(done[file_id][1]))
            return
        except (OSError, KeyError, ValueError, IndexError, TypeError) as e:
            done[file_id] = (
                "refused",
                f"{f.name!r} cannot be read as an LCA run ({type(e).__name__}); it was not added.",
            )
            st.error(literal(done[file_id][1]))
            return
        name = runs.safe_name(f.name)
        os.replace(tmp, runs.resolve(name))
    finally:
        tmp.unlink(missing_ok=True)
    done[file_id] = ("", f"{f.name} was added as {name}.")
    st.success(literal(done[file_id][1]))


def main() -> None:
    st.title("Runs")
    # The listing is filled after the uploader has run, so a file added just now is listed at
    # once, without a second run of the page (which raced the next upload).
    listing = st.container()
    st.divider()
    upload()
    with listing:
        items = runs.list_runs()
        st.caption(
            f"Every run file in the runs folder ({literal(runs.runs_dir())}); "
            f"{human_bytes(runs.free_bytes())} free."
        )
        if not items:
            st.info(
                "The runs folder is empty: start the demo on Home, set up a run on Train, "
                "or upload a run file below."
            )
            return
        df, good, bad = table(items)
        if len(df):
            st.dataframe(df, hide_index=True, column_config=COLUMNS, key="runs_table")
            download_csv(lambda: df.to_csv(index=False), "runs", key="runs_csv")
        if bad:
            st.markdown("**Files that are not readable runs**")
            for name, problem in bad:
                st.warning(literal(f"{name}: {problem}"))
        names = [r.name for r in items]
        left, right = st.columns(2)
        with left:
            one_run_actions(names, good)
        with right:
            compare_actions([n for n in names if n in good])


if __name__ == "__main__":
    main()
