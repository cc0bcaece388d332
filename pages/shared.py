"""What every page shares: the selected run, opening it safely, one-sentence errors.

The run picker lives in the sidebar (app.py) and is bound to ``?run=`` so a teacher can share a
link to a view. Pages only read: they open the run through ``open_selected_run`` and draw with
``lca.figures``; a bad or foreign file becomes one sentence, never a traceback.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Imported here, once, by the first session (app.py imports this module first thing): Streamlit
# imports them lazily inside its elements, and when several sessions' threads did that at the
# same moment (a class opening the app together) Python handed some of them a partially
# initialised pandas ("partially initialized module 'pandas' has no attribute 'Series'"),
# measured with benchmarks/classroom.py.
import pandas  # noqa: F401
import plotly.graph_objects as go
import plotly.io as pio
import pyarrow  # noqa: F401
import streamlit as st

from lca import classroom, priority, refresh, runs, views
from lca.figures.literal import literal_spec
from lca.figures.screen import screen_spec
from lca.store import Reader, RunFileError
from lca.store.lock import holder, lock_path
from pages import presenter

RUN_KEY = "run"  # session-state key and URL query parameter of the selected run
TEACHER_KEY = "_teacher_unlocked"  # session: this browser unlocked classroom mode
DELETED_KEY = "_deleted_runs"  # runs this user deleted on the Runs page: app.py won't warn
LIVE_SECONDS = refresh.BASE_SECONDS  # how often live panels re-read a running file (few viewers)
WATCHERS = refresh.Watchers()  # the sessions watching a live run: they set the pace


# What Streamlit markdown would turn into markup: emphasis, code, links and images, HTML,
# tables, strikethrough, LaTeX, entities, directive attributes, and a colon before a name
# (:red[..] directives). Backslashes stop the parser; Streamlit's emoji and icon shortcodes
# (:smile:, :material/home:) and GitHub's bare links (http://x, www.x, a@b.c) are found later,
# in the parsed text, so those get an invisible WORD JOINER (U+2060) that breaks the pattern.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>!|~$&#{}])")
_WORD_JOINER = "\u2060"
_SHORTCODE_OR_LINK = re.compile(r"(:)(?=[\w/+-])|(@)|(?i:(?<=www)(\.))")
_BLOCK_START = re.compile(r"^(\s*\d*)([-+=>.)])")  # a list, quote or heading at the start


def literal(text: object) -> str:
    """``text`` (a layer name, a status, a config string, a file name, an error sentence that
    quotes a run file) as Streamlit markdown shows it literally: no links, images, emphasis,
    HTML, colour or icons, and on one line. Use it for every string that did not come from our
    code, in st.markdown, st.caption, st.info/warning/error/success, titles and widget labels.
    Only what markdown would interpret is escaped, so ordinary sentences read the same
    (checked in a real browser: tests/test_security_browser.py)."""
    one_line = re.sub(r"[\x00-\x1f\x7f]+", " ", str(text))
    escaped = _MARKDOWN_SPECIAL.sub(r"\\\1", one_line)
    joined = _SHORTCODE_OR_LINK.sub(
        lambda m: (
            "\\:" + _WORD_JOINER if m[1] else "@" + _WORD_JOINER if m[2] else _WORD_JOINER + "."
        ),
        escaped,
    )
    return _BLOCK_START.sub(lambda m: m[1] + "\\" + m[2], joined)


def literal_rows(rows: list[dict]) -> list[dict]:
    """Table rows for st.table (which renders markdown in its cells) with every string cell
    shown literally."""
    return [{k: literal(v) if isinstance(v, str) else v for k, v in row.items()} for row in rows]


def may(action: str) -> bool:
    """Whether this session may ``action`` (train, stop, delete, upload, recover): always,
    except in classroom mode, where only a session the teacher unlocked may."""
    if action not in classroom.ACTIONS:
        raise ValueError(f"Unknown action {action!r}.")
    return not classroom.enabled() or bool(st.session_state.get(TEACHER_KEY))


def refuse_unless(action: str) -> bool:
    """Guard inside an action's handler (a disabled button is not a lock): True when allowed,
    else shows the one sentence and returns False."""
    if may(action):
        return True
    st.warning(classroom.locked_sentence(action), icon=":material/lock:")
    return False


def locked_help(action: str, otherwise: str | None = None) -> str | None:
    """Help text for an action's button: why it is locked, or ``otherwise``."""
    return otherwise if may(action) else classroom.locked_sentence(action)


def runs_folder() -> Path:
    return runs.runs_dir()


def selected_run_name() -> str | None:
    name = st.session_state.get(RUN_KEY)
    return name or None


def selected_run_path() -> Path | None:
    """The selected run's path inside the runs folder, or None (with a sentence) if invalid."""
    name = selected_run_name()
    if name is None:
        return None
    try:
        path = runs.resolve(name)
    except runs.RunNameError as e:
        st.error(literal(e))
        return None
    if not path.exists():
        st.warning(f"The run {literal(name)} no longer exists; pick another run in the sidebar.")
        return None
    return path


@contextmanager
def open_run_or_explain(path: Path) -> Iterator[Reader | None]:
    """Open a run for reading; a bad file yields None after showing its one sentence."""
    try:
        reader = Reader(path)
    except (RunFileError, OSError) as e:
        st.error(literal(str(e).splitlines()[0] if str(e) else f"{path.name} cannot be read."))
        yield None
        return
    try:
        yield reader
    finally:
        reader.close()


def file_stamp(path: Path) -> tuple[int, int]:
    """(mtime, size) of a run file: a new version of the file (a live run's flush) is a new key."""
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


def _read(view: str, path: str, args: tuple) -> Any:
    with Reader(path) as r:
        return getattr(views, view)(r, *args)


@st.cache_data(max_entries=32, show_spinner=False)
def _read_small(view: str, path: str, stamp: tuple[int, int], args: tuple) -> Any:
    del stamp  # part of the cache key only
    return _read(view, path, args)


@st.cache_data(max_entries=4, show_spinner="Reading per-weight LCA…")
def _read_large(view: str, path: str, stamp: tuple[int, int], args: tuple) -> Any:
    del stamp
    return _read(view, path, args)


def read_view(view: Callable[..., Any], path: Path, *args: Any, large: bool = False) -> Any:
    """``view(Reader(path), *args)`` for a function of ``lca.views``, cached per file version
    (path, mtime, size); ``large`` for per-weight reads (fewer kept). While a writer holds the
    file, a version read by any session less than ``LIVE_SECONDS`` ago is used (see
    ``shared_version``). Raises RunFileError or OSError for a file that cannot be read."""
    read = _read_large if large else _read_small
    version = view_version(path, view.__name__, *args, large)
    return read(view.__name__, str(path), version, tuple(args))


def view_version(path: Path, *key: Any) -> tuple[int, int]:
    """The file version (mtime, size) to cache a read of ``path`` under: its version now, or
    the one another session read less than ``LIVE_SECONDS`` ago while the same writer still
    writes the file (``shared_version``). Take it before reading: the data read is then at
    least as new as the key."""
    stamp = file_stamp(path)
    return shared_version(("view", str(path), *key), stamp, writing(path), live_window())


# The versions shared while a run is written: key -> (when first used, writer, version).
_LIVE: dict[tuple, tuple[float, tuple[int, int, int], tuple]] = {}
_LIVE_LOCK = threading.Lock()
_LIVE_KEEP = 512  # entries; the oldest go first


def writing(path: Path) -> tuple[int, int, int] | None:
    """Who is writing ``path`` now, as (run file inode, lock file inode, lock file mtime), or
    None when nobody is. Every writer, recovery or deletion rewrites the lock file when it takes
    it and removes it when done, so a run written again under the same name is another writer.
    """
    try:
        lock = lock_path(path).stat()
        run = path.stat()
    except OSError:
        return None
    if holder(path) is None:
        return None
    return run.st_ino, lock.st_ino, lock.st_mtime_ns


def shared_version(
    key: tuple, stamp: tuple, writer: tuple[int, int, int] | None, window: float = LIVE_SECONDS
) -> tuple:
    """``stamp``, or, while ``writer`` still writes the file, the version ``key`` was first
    used at by any session less than ``window`` seconds ago (``live_window()``: the refresh
    interval, longer for a whole class).

    A run being written changes every second or so, so a class of 30 watching it would read
    and draw everything again for nearly every session. Sharing the version for one refresh
    interval makes each live read and figure happen at most once per interval whatever the
    class size, at most one interval behind, as the live panels' own refresh already is. Once
    the writer is done (finished, killed, recovered) the exact version is used again at once.
    """
    if writer is None:
        return stamp
    now = time.monotonic()
    with _LIVE_LOCK:
        last = _LIVE.get(key)
        if (
            last is not None
            and last[1] == writer
            and stamp[0] >= last[2][0]  # the same file, written on (never older or smaller)
            and stamp[1] >= last[2][1]
            and now - last[0] < window
        ):
            return last[2]
        _LIVE.pop(key, None)
        _LIVE[key] = (now, writer, stamp)
        while len(_LIVE) > _LIVE_KEEP:
            _LIVE.pop(next(iter(_LIVE)))
    return stamp


def _session_id() -> str | None:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx(suppress_warning=True)
    return None if ctx is None else ctx.session_id


def _projector() -> bool:
    """The teacher's unlocked session in classroom mode: its live charts keep the base pace."""
    return classroom.enabled() and bool(st.session_state.get(TEACHER_KEY))


def live_seconds() -> float:
    """This session's live refresh interval, noting that it watches a live run: LIVE_SECONDS
    with few viewers, longer for a class (``lca.refresh.interval``); the teacher's session in
    classroom mode keeps LIVE_SECONDS."""
    session = _session_id()
    watchers = WATCHERS.note(session) if session else WATCHERS.count()
    return LIVE_SECONDS if _projector() else refresh.interval(watchers, base=LIVE_SECONDS)


def live_window() -> float:
    """How long sessions share one version of a live run (``shared_version``): the class's
    refresh interval, so a live figure is drawn at most once per interval whatever the class
    size; LIVE_SECONDS for the teacher's session in classroom mode (the projector stays fresh,
    and the students then share the teacher's newer version)."""
    if _projector():
        return LIVE_SECONDS
    return refresh.interval(WATCHERS.count(), base=LIVE_SECONDS)


def lower_page_priority() -> int:
    """On a real server (not AppTest): this page run or fragment rerun at a lower CPU priority
    than the training jobs the server starts and its event loop (``lca.priority``); returns by
    how much (0: not lowered)."""
    from streamlit import runtime

    if not runtime.exists() or type(runtime.get_instance()) is not runtime.Runtime:
        return 0
    return priority.lower_page_run()


def live_fragment(run_every: float) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``st.fragment(run_every=...)`` whose timed reruns, each a new thread that does not pass
    through app.py, run at the page runs' lower priority too (``lower_page_priority``): the
    live charts' refreshes are most of what a class costs the server."""

    def wrap(body: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(body)
        def lowered(*args: Any, **kwargs: Any) -> Any:
            lower_page_priority()
            return body(*args, **kwargs)

        return st.fragment(lowered, run_every=run_every)

    return wrap


def view_or_explain(view: Callable[..., Any], path: Path, *args: Any) -> Any:
    """``read_view``, or None after showing the one sentence that says why the run is
    unreadable."""
    try:
        return read_view(view, path, *args)
    except (RunFileError, OSError) as e:
        st.error(literal(str(e).splitlines()[0] if str(e) else f"{path.name} cannot be read."))
        return None


def require_run() -> Path:
    """The selected run, or a friendly prompt and st.stop() when there is none."""
    path = selected_run_path()
    if path is None:
        if selected_run_name() is None:
            st.info("Pick a run in the sidebar, or start one on the Home or Train page.")
        st.stop()
    return path


class PreparedFigure(go.Figure):
    """A figure already built, its strings made literal and its arrays turned into JSON data:
    what ``st.plotly_chart`` sends, handed over without plotly copying and validating every
    property again (that cost as much as building the figure). The data is shared between
    sessions through the figure cache, so it is never modified: ``plot`` copies what it changes.
    """

    def __init__(self, spec: dict) -> None:
        super().__init__()
        self._spec = spec

    def to_dict(self) -> dict:
        return self._spec

    def to_plotly_json(self) -> dict:
        return self._spec


def prepare(fig: go.Figure) -> PreparedFigure:
    """``fig`` as the browser will get it: strings shown literally (``literal_spec``), numpy
    arrays as plotly's typed-array JSON at screen precision (``screen_spec``: float32), so
    sending it again costs only the JSON encoding."""
    if isinstance(fig, PreparedFigure):
        return fig
    spec = screen_spec(literal_spec(fig))
    return PreparedFigure(json.loads(pio.to_json(spec, validate=False)))


@st.cache_resource(max_entries=96, show_spinner=False)
def _figure_spec(
    name: str, path: str, stamp: tuple[int, int, int], options: tuple, _make: Callable
) -> PreparedFigure:
    del stamp  # part of the cache key only
    return prepare(_make())


class RunFigures:
    """The figures of one version of one run file, built once and shared by every session.

    Make it at the start of a page's render, before anything of the run is read: the file's
    version (mtime, size, inode) and its writer are taken then, so a figure is never filed under
    a version newer than the data it was drawn from (a live run that grows gets new keys, and is
    drawn again). ``figures("name", make, *options)`` returns ``make()`` prepared for ``plot``,
    from the cache when this run version, figure name and options were drawn before by any
    session; everything ``make`` draws from must be fixed by the path, the version and
    ``options``. While a writer holds the file, versions are shared for one refresh interval
    (``shared_version``), so a class watching a live run costs one build per interval.
    """

    def __init__(self, path: Path) -> None:
        stat = path.stat()
        self.path = str(path)
        self.stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        self.writer = writing(path)

    def __call__(self, name: str, make: Callable[[], go.Figure], *options: Any) -> PreparedFigure:
        key = ("figure", self.path, name, tuple(options))
        version = shared_version(key, self.stamp, self.writer, live_window())
        return _figure_spec(name, self.path, version, tuple(options), make)


def plot(fig, *, key: str | None = None, **kwargs):
    """st.plotly_chart with theme=None so the LCA colours (green helped, red hurt) are kept.

    ``fig`` is a plotly Figure or one from ``RunFigures`` (prepared and cached). The chart's
    camera button (plotly's modebar, drawn in the browser, offline) saves it as a PNG named
    after the run and the chart; in presenter mode the chart's type is bigger.
    """
    fig = prepare(fig)  # strings from the file (layer names...) shown literally
    if presenter.is_on():
        spec = fig.to_dict()
        layout = dict(spec.get("layout") or {})
        layout["font"] = {**(layout.get("font") or {}), "size": presenter.FONT_SIZE}
        fig = PreparedFigure({**spec, "layout": layout})
    name = "-".join(p for p in (Path(selected_run_name() or "lca-lab").stem, key) if p)
    config = {
        "displaylogo": False,
        "toImageButtonOptions": {"format": "png", "filename": name.replace(" ", "_"), "scale": 2},
    }
    return st.plotly_chart(
        fig,
        theme=None,
        width="stretch",
        key=key,
        config={**config, **kwargs.pop("config", {})},
        **kwargs,
    )


def download_csv(
    make: Callable[[], str], name: str, *, key: str, label: str = "Download CSV"
) -> None:
    """A button that saves the data a chart or table shows as ``<run>-<name>.csv``.

    ``make`` builds the CSV text (``lca.export``) only when the button is clicked, on its own
    thread, so drawing the page costs nothing for it; the click does not rerun the page.
    """
    run = Path(selected_run_name() or "lca-lab").stem
    st.download_button(
        label,
        make,
        file_name=f"{run}-{name}.csv".replace(" ", "_"),
        mime="text/csv",
        key=key,
        on_click="ignore",
        icon=":material/download:",
        type="tertiary",
    )


def show_run(render: Callable[[Path], object]) -> None:
    """Draw ``render(path)`` for the selected run; while it trains, redraw every
    ``live_seconds()`` (LIVE_SECONDS with few viewers, longer for a whole class).

    A live run's charts sit in a fragment that re-reads the file on a timer; when ``render``
    reports the run is no longer running (returns falsy), the page reruns once more without the
    timer, so a finished run is drawn exactly like one opened later.
    """
    path = require_run()
    run = view_or_explain(views.run_view, path)  # cached: no file opened per rerun
    if run is None:
        return
    running = run.running
    if not running:
        _render_or_explain(render, path)
        return

    @live_fragment(live_seconds())
    def live() -> None:
        live_seconds()  # still watching: counted in the class's pace
        if not _render_or_explain(render, path):
            st.rerun()

    live()


def _render_or_explain(render: Callable[[Path], object], path: Path) -> bool:
    """``render(path)``; a file that became unreadable while the page read it piece by piece
    (deleted, replaced) ends the page with its one sentence, not a traceback."""
    try:
        return bool(render(path))
    except (RunFileError, OSError) as e:
        st.error(literal(str(e).splitlines()[0] if str(e) else f"{path.name} cannot be read."))
        return False


def steps_phrase(kind) -> str:
    """How many optimizer steps a run's segment kinds hold, and how many interventions (e.g.
    prune events: segments of their own, drawn between the steps around them)."""
    extra = int((kind == 1).sum()) if len(kind) else 0
    steps = len(kind) - extra
    if not extra:
        return f"{steps:,} steps"
    return f"{steps:,} steps + {extra:,} intervention{'s' if extra > 1 else ''}"
