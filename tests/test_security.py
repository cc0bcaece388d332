"""Crafted run files: each is refused with one sentence before any of it is read, in bounded
time, without holding up other readers; text from a file is shown literally; the runs folder's
symlinks never lead outside it.

The files are made here with h5py from a real run (external storage, external links, virtual
datasets, deep nesting, huge declared shapes, many attributes, markdown and HTML in strings).
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from lca import runs
from lca.figures.literal import literal_figure, plain
from lca.store import Reader, RunFileError, filecheck, recover
from lca.store.schema import _fixed_strings

ROOT = Path(__file__).resolve().parent.parent
SECRET = "LCA_SECRET_TOKEN=do-not-show-this"


@pytest.fixture(autouse=True)
def _fresh_verdicts():
    filecheck.forget()
    yield
    filecheck.forget()


@pytest.fixture
def normal(make_run, tmp_path) -> Path:
    """A finished real run (record full), copied so a test may change its copy."""
    return make_run(name="normal.h5", folder=tmp_path / "made")


def crafted(normal: Path, folder: Path, name: str, change) -> Path:
    """A copy of ``normal`` as ``folder/name``, changed by ``change(h5py.File)``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    shutil.copy(normal, path)
    with h5py.File(path, "r+") as f:
        change(f)
    return path


def names_in_other_file(target: Path, size: int | None = None):
    """/layers/names kept in ``target`` (external raw storage), as in the issue."""

    def change(f: h5py.File) -> None:
        n = f["layers/names"].shape[0]
        del f["layers/names"]
        extent = h5py.h5f.UNLIMITED if size is None else size
        f.create_dataset(
            "layers/names", shape=(n,), dtype="S8", external=[(str(target), 0, extent)]
        )

    return change


def secret_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "private.txt"
    path.write_text(SECRET * 4)
    return path


def refused(path: Path) -> str:
    """The one sentence opening ``path`` gives (the test fails if it opens)."""
    with pytest.raises(RunFileError) as e:
        Reader(path).close()
    sentence = str(e.value)
    assert "\n" not in sentence and sentence.endswith(".")
    assert repr(path.name) in sentence
    assert SECRET not in sentence
    return sentence


# -- read only from itself -----------------------------------------------------------------------


def test_external_storage_outside_the_folder_is_refused(normal, tmp_path):
    secret = secret_file(tmp_path / "outside")
    path = crafted(normal, tmp_path / "runs", "ext.h5", names_in_other_file(secret, 32))
    sentence = refused(path)
    assert "external storage" in sentence and "/layers/names" in sentence


def test_external_storage_in_proc_self_environ_is_refused(normal, tmp_path, monkeypatch):
    monkeypatch.setenv("LCA_SECRET_TOKEN", "do-not-show-this")
    path = crafted(
        normal, tmp_path / "runs", "environ.h5", names_in_other_file(Path("/proc/self/environ"))
    )
    assert "external storage" in refused(path)


def test_relative_external_storage_is_refused(normal, tmp_path):
    secret_file(tmp_path / "outside")
    path = crafted(
        normal, tmp_path / "runs", "rel.h5", names_in_other_file(Path("../outside/private.txt"), 32)
    )
    assert "external storage" in refused(path)


@pytest.mark.slow
def test_external_storage_in_a_fifo_is_refused_without_blocking(normal, tmp_path):
    fifo = tmp_path / "outside" / "pipe"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    path = crafted(normal, tmp_path / "runs", "fifo.h5", names_in_other_file(fifo))
    done = threading.Event()
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            Reader(path).close()
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            outcome.append(e)
        finally:
            done.set()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    if not done.wait(120):  # a read of the FIFO would block forever: unblock it, then fail
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        thread.join(30)
        pytest.fail("opening a file whose data lives in a FIFO blocked")
    assert isinstance(outcome[0], RunFileError)
    assert "external storage" in str(outcome[0])


def test_a_fifo_named_like_a_run_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)
    with pytest.raises(RunFileError, match="not a regular file"):
        Reader(fifo)


def test_external_link_is_refused(normal, tmp_path):
    other = tmp_path / "outside" / "other.h5"
    other.parent.mkdir()
    with h5py.File(other, "w") as g:
        g["names"] = np.array([SECRET.encode()] * 4)

    def change(f: h5py.File) -> None:
        del f["layers/names"]
        f["layers/names"] = h5py.ExternalLink(str(other), "/names")

    sentence = refused(crafted(normal, tmp_path / "runs", "elink.h5", change))
    assert "external link" in sentence


def test_virtual_dataset_is_refused(normal, tmp_path):
    other = tmp_path / "outside" / "other.h5"
    other.parent.mkdir()
    with h5py.File(other, "w") as g:
        g["names"] = np.array([SECRET.encode()] * 4)

    def change(f: h5py.File) -> None:
        del f["layers/names"]
        layout = h5py.VirtualLayout(shape=(4,), dtype=g_dtype)
        layout[:] = h5py.VirtualSource(str(other), "names", shape=(4,))
        f.create_virtual_dataset("layers/names", layout)

    with h5py.File(other) as g:
        g_dtype = g["names"].dtype
    sentence = refused(crafted(normal, tmp_path / "runs", "vds.h5", change))
    assert "virtual dataset" in sentence


def test_soft_link_is_refused(normal, tmp_path):
    def change(f: h5py.File) -> None:
        f["alias"] = h5py.SoftLink("/layers/names")

    assert "soft link" in refused(crafted(normal, tmp_path / "runs", "soft.h5", change))


def test_a_hard_link_cycle_is_refused(normal, tmp_path):
    def change(f: h5py.File) -> None:
        f["params/loop"] = f["params"]  # a group that contains itself

    assert "two places" in refused(crafted(normal, tmp_path / "runs", "cycle.h5", change))


def test_object_references_are_refused(normal, tmp_path):
    def change(f: h5py.File) -> None:
        ref = f.create_dataset("refs", (1,), dtype=h5py.ref_dtype)
        ref[0] = f["layers/names"].ref

    assert "references" in refused(crafted(normal, tmp_path / "runs", "refs.h5", change))


def test_recover_and_cli_inspect_refuse_crafted_files(normal, tmp_path, capsys):
    from lca import cli

    secret = secret_file(tmp_path / "outside")
    path = crafted(normal, tmp_path / "runs", "ext.h5", names_in_other_file(secret, 32))
    with pytest.raises(RunFileError, match="external storage"):
        recover(path)
    code = cli.main(["inspect", str(path)])
    out = capsys.readouterr()
    assert code != 0
    assert "external storage" in out.err and SECRET not in out.err + out.out
    assert "Traceback" not in out.err


# -- bounded cost -----------------------------------------------------------------------------


def test_deep_nesting_is_refused(normal, tmp_path):
    def change(f: h5py.File) -> None:
        g = f
        for _ in range(2000):
            g = g.create_group("g")

    assert "deeper than" in refused(crafted(normal, tmp_path / "runs", "deep.h5", change))


def test_huge_declared_shapes_are_refused(normal, tmp_path):
    rows = 20_000_000

    def change(f: h5py.File) -> None:
        def grow(name: str, obj) -> None:
            if isinstance(obj, h5py.Dataset) and obj.maxshape[:1] == (None,) and obj.ndim:
                obj.resize(rows + (name == "steps/loss"), axis=0)

        f.visititems(grow)

    path = crafted(normal, tmp_path / "runs", "huge.h5", change)
    assert path.stat().st_size < 5_000_000
    sentence = refused(path)
    assert "declares" in sentence and "damaged or crafted" in sentence


def test_many_attributes_are_refused(normal, tmp_path):
    def change(f: h5py.File) -> None:
        for i in range(5000):
            f.attrs[f"a{i}"] = i

    assert "attributes" in refused(crafted(normal, tmp_path / "runs", "attrs.h5", change))


def test_a_normal_run_is_checked_once(normal, monkeypatch):
    calls = []
    real = filecheck._spawn
    monkeypatch.setattr(filecheck, "_spawn", lambda p: calls.append(p) or real(p))
    for _ in range(3):
        with Reader(normal) as r:
            assert r.num_steps == 30
    assert len(calls) == 1


def test_a_folder_listing_is_checked_in_one_process(normal, tmp_path, monkeypatch):
    def deep(f: h5py.File) -> None:
        g = f
        for _ in range(20):
            g = g.create_group("g")

    folder = tmp_path / "runs"
    paths = [
        crafted(normal, folder, "a.h5", lambda f: None),
        crafted(normal, folder, "b.h5", lambda f: None),
        crafted(normal, folder, "deep.h5", deep),
    ]
    batches = []
    real = filecheck._run_child
    monkeypatch.setattr(filecheck, "_run_child", lambda ps: batches.append(ps) or real(ps))
    filecheck.prefetch(paths)
    Reader(paths[0]).close()
    Reader(paths[1]).close()
    assert "deeper than" in refused(paths[2])
    assert len(batches) == 1 and len(batches[0]) == 3


@pytest.mark.slow
def test_checking_a_hostile_file_never_blocks_other_readers(normal, tmp_path, monkeypatch):
    """While the check of a crafted file is in flight, another thread keeps reading a run."""

    def change(f: h5py.File) -> None:
        g = f
        for _ in range(2000):
            g = g.create_group("g")

    hostile = crafted(normal, tmp_path / "runs", "deep.h5", change)
    Reader(normal).close()  # its verdict is cached: reading it needs no check
    in_flight, enough_reads, stop = threading.Event(), threading.Event(), threading.Event()
    reads: list[int] = []
    reads_while_checking: list[int] = []
    real = filecheck._spawn

    def spawn(path: Path) -> dict:
        if Path(path).name == hostile.name:
            in_flight.set()
            verdict = real(path)
            enough_reads.wait(120)  # held in flight until the other reader made progress
            reads_while_checking.append(len(reads))
            return verdict
        return real(path)

    monkeypatch.setattr(filecheck, "_spawn", spawn)

    def keep_reading() -> None:
        in_flight.wait(120)
        while not stop.is_set():
            with Reader(normal) as r:
                assert len(r.steps("loss")) == 31
            reads.append(1)
            if len(reads) >= 5:
                enough_reads.set()

    reader = threading.Thread(target=keep_reading, daemon=True)
    reader.start()
    try:
        with pytest.raises(RunFileError, match="deeper than"):
            Reader(hostile)
    finally:
        stop.set()
        in_flight.set()
        reader.join(60)
    assert reads_while_checking and reads_while_checking[0] >= 5


# -- text is text ------------------------------------------------------------------------------

MARKUP_NAMES = [
    "[click](http://example.com/x)",
    "<b>bold</b><a href='http://e.com'>a</a>",
    ":red[red] **strong**",
    "![img](http://example.com/i.png)",
]


def markup_run(normal: Path, folder: Path, name: str = "markup.h5") -> Path:
    def change(f: h5py.File) -> None:
        del f["layers/names"]
        f.create_dataset("layers/names", data=_fixed_strings(MARKUP_NAMES))
        f["status"][()] = np.bytes_(b"![x](http://e/)")

    return crafted(normal, folder, name, change)


def test_markdown_helper_shows_text_literally():
    import re

    from pages.shared import literal

    for text in [*MARKUP_NAMES, "see www.example.com", "1. a list", "# a heading"]:
        out = literal(text)
        bare = re.sub(r"\\.", "", out)  # what is left once every escaped character is removed
        assert not re.search(r"[\[\]<>*!#]|:\w|www\.|^\d+\.", bare), (text, out)
    assert literal("'fc1.weight' is cut short; try: python -m lca recover x.h5") == (
        "'fc1.weight' is cut short; try: python -m lca recover x.h5"
    )  # plain text unchanged
    assert literal("a\nb") == "a b"


def test_figures_show_names_literally():
    import plotly.graph_objects as go

    assert plain("<a href='x'>a</a> & b") == "&lt;a href='x'&gt;a&lt;/a&gt; &amp; b"
    fig = go.Figure(
        go.Bar(
            x=MARKUP_NAMES,
            y=[1, 2, 3, 4],
            name="<b>n</b>",
            hovertemplate="%{x}<br>%{y}<extra></extra>",
        )
    )
    fig.update_layout(title="LCA of <a href='http://e.com'>x</a>")
    out = literal_figure(fig).to_plotly_json()
    bar = out["data"][0]
    assert list(bar["x"]) == [plain(n) for n in MARKUP_NAMES]
    assert bar["name"] == "&lt;b&gt;n&lt;/b&gt;"
    assert bar["hovertemplate"] == "%{x}<br>%{y}<extra></extra>"  # our own markup is kept
    assert "<a" not in out["layout"]["title"]["text"]


def test_layers_page_shows_markup_names_literally(normal, runs_folder):
    markup_run(normal, runs_folder)
    at = AppTest.from_file(str(ROOT / "pages" / "layers.py"), default_timeout=60)
    at.session_state["run"] = "markup.h5"
    at.run()
    assert not at.exception
    texts = [e.value for e in at.caption] + [e.value for e in at.markdown]
    texts += [getattr(e, "value", "") for e in at.error] + [
        getattr(e, "value", "") for e in at.warning
    ]
    joined = "\n".join(str(t) for t in texts)
    for raw in [*MARKUP_NAMES, "![x](http://e/)"]:
        assert raw not in joined
    assert "\\!\\[x\\](http" in joined  # the status, shown literally
    figures = [e.proto.spec for e in at.get("plotly_chart")]
    assert figures
    for spec in figures:
        assert "<a href" not in spec and "<b>bold" not in spec
    assert any("&lt;b&gt;bold" in spec for spec in figures)


def test_runs_page_refuses_a_crafted_upload_and_keeps_nothing(normal, runs_folder, tmp_path):
    secret = secret_file(tmp_path / "outside")
    bad = crafted(normal, tmp_path / "made", "ext.h5", names_in_other_file(secret, 32))
    at = AppTest.from_file(str(ROOT / "pages" / "runs.py"), default_timeout=60)
    at.run()
    at.file_uploader(key="runs_upload").set_value(
        ("[x](http://e.com).h5", bad.read_bytes(), "application/x-hdf5")
    )
    at.run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1
    assert "external storage" in errors[0] and "It was not added" in errors[0]
    shown = errors[0].replace("\u2060", "")  # literal() adds invisible word joiners
    assert "\\[x\\](http\\://e.com)" in shown  # its name shown literally, not a link
    assert SECRET not in errors[0]
    assert sorted(os.listdir(runs_folder)) == []  # nothing kept, not even a temporary file


# -- the runs folder ---------------------------------------------------------------------------


def test_symlinks_leading_outside_the_runs_folder_are_ignored(normal, runs_folder, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(normal, outside / "theirs.h5")
    shutil.copy(normal, runs_folder / "mine.h5")
    (runs_folder / "link-out.h5").symlink_to(outside / "theirs.h5")
    (runs_folder / "sub").symlink_to(outside, target_is_directory=True)
    (runs_folder / "link-in.h5").symlink_to(runs_folder / "mine.h5")
    names = {r.name for r in runs.list_runs()}
    assert names == {"mine.h5", "link-in.h5"}
    with pytest.raises(runs.RunNameError, match="outside the runs folder"):
        runs.resolve("link-out.h5")
    with pytest.raises(runs.RunNameError, match="outside the runs folder"):
        runs.resolve("sub/theirs.h5")
    assert runs.resolve("link-in.h5") == runs_folder / "mine.h5"
