"""What every experiment shares: the run cache, the base configs, tables, figures, the report.

Why a shared module: the experiments compare numbers *across* runs (the same fc-mnist run feeds
the helped, layers, freeze, synchrony and pruning reports), so a run is identified by its full
config and trained once per runs folder; and every number in a report must come from a run file,
so the report helpers only format what the caller computed from a :class:`lca.store.Reader`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import RunConfig
from ..store import Reader

__all__ = [
    "ExperimentContext",
    "ExperimentError",
    "Report",
    "RunInfo",
    "dataset_available",
    "fmt",
    "md_table",
    "module_groups",
    "one_thread",
    "pct",
    "sci",
]

FIGURES = "figures"  # sub-folder of the report folder for the HTML figures (+ plotly.min.js)


class ExperimentError(ValueError):
    """An experiment cannot run (unknown name, bad folder): one sentence, exit status 2."""


# ---------------------------------------------------------------------------------------------
# Number formatting: one place, so tests can parse what the reports print.


def fmt(x: float | None, digits: int = 4) -> str:
    """A number with ``digits`` significant digits; ``n/a`` for None/NaN."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}g}"


def sci(x: float | None, digits: int = 3) -> str:
    """Signed scientific notation (LCA values: the sign says helped / hurt)."""
    if x is None or not math.isfinite(float(x)):
        return "n/a"
    return f"{x:+.{digits}e}"


def pct(x: float | None, digits: int = 1) -> str:
    """A fraction as a percentage number (no % sign, so the cell parses as a float)."""
    if x is None or not math.isfinite(float(x)):
        return "n/a"
    text = f"{100 * x:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.0"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells are str()-ed, pipes escaped."""

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(cell(h) for h in headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def module_groups(
    names: Sequence[str], shapes: dict[str, tuple[int, ...]]
) -> list[tuple[str, list[int], int]]:
    """Parameter tensors grouped by module (``fc1.weight`` + ``fc1.bias`` -> ``fc1``), in model
    order: ``(module, tensor indices, parameter count)``. The paper reports layers, not tensors."""
    out: dict[str, tuple[list[int], int]] = {}
    for i, n in enumerate(names):
        mod = n.rsplit(".", 1)[0] if "." in n else n
        idx, count = out.get(mod, ([], 0))
        idx.append(i)
        out[mod] = (idx, count + math.prod(shapes.get(n, ())))
    return [(m, idx, c) for m, (idx, c) in out.items()]


@contextlib.contextmanager
def one_thread(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch threads, restoring the old count after.

    Why: on the small models of these experiments, on a shared 2-core machine, one thread was
    5-10× faster than two (thread hand-off costs more than the tiny matmuls gain).
    """
    import torch

    if not threads:
        yield
        return
    from .. import threads as run_threads

    old = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        with run_threads.capped(int(threads)):  # runs with threads = "auto" keep to it too
            yield
    finally:
        torch.set_num_threads(old)


def dataset_available(name: str, data_dir: str | None) -> bool:
    """Whether the on-disk dataset ``name`` can be read from ``data_dir`` (never downloads)."""
    if data_dir is None:
        return False
    import data

    try:
        data.load(name, subset=8, data_dir=data_dir)
    except (ValueError, OSError):
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Runs: trained once per config, reused by every experiment that asks for the same config.


@dataclass
class RunInfo:
    """One run an experiment used: its label, file, config and how it was obtained."""

    label: str
    path: Path
    config: RunConfig
    seconds: float  # wall time of the training + LCA (from the file's /steps/wall)
    reused: bool

    def open(self) -> Reader:
        return Reader(self.path)


class _LongRunProgress:
    """A run's progress in an experiment: the cost line (steps × seconds per tracked step) once
    a few steps are timed, then, for a long run only, a progress bar with the time left."""

    def __init__(self, log: Callable[[str], None]) -> None:
        from ..cost import CostProbe

        self.probe = CostProbe(lambda line: log("    " + line))
        self.bar: Any = None

    def __call__(self, step: int, total: int, loss: float) -> None:
        self.probe.update(step, total)
        if self.bar is None and self.probe.announced:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.4f}")
            if step >= total:
                self.bar.close()


@dataclass
class ExperimentContext:
    """Where an experiment writes and how big it is."""

    out_dir: Path
    runs_dir: Path
    tiny: bool = False
    data_dir: str | None = None
    retrain: bool = False
    log: Callable[[str], None] = print
    runs: dict[str, RunInfo] = field(default_factory=dict)  # file name -> info (this process)
    # --scale paper --dataset NAME: add runs at the LCA paper's MNIST protocol on NAME
    # (setups.paper_setups); paper_steps / paper_measure shrink them for a reduced run.
    scale: str = "quick"
    dataset: str | None = None
    # An int (both models) or {model: int} (e.g. LeNet shorter than fc-mnist on a small CPU).
    paper_steps: int | dict[str, int] | None = None
    paper_measure: int | dict[str, int] | None = None

    def size(self, default: Any, tiny: Any) -> Any:
        """``default`` at full size, ``tiny`` with --tiny."""
        return tiny if self.tiny else default

    def train(self, label: str, config: RunConfig) -> RunInfo:
        """The run of ``config``: reused from the runs folder when a complete file with exactly
        this config exists (unless ``retrain``), else trained now from the config's seed."""
        from ..train import TrainingError, run

        text = config.to_json()
        digest = hashlib.sha256(text.encode()).hexdigest()[:10]
        path = self.runs_dir / f"{label}-{digest}.h5"
        if path.name in self.runs:
            return self.runs[path.name]
        reused = False
        if path.exists() and not self.retrain:
            with contextlib.suppress(ValueError, OSError):
                with Reader(path) as r:
                    if r.status == "complete" and r.config == json.loads(text):
                        reused = True
        if not reused:
            self.log(
                f"  training {label} ({config.model} on {config.dataset}, "
                f"{config.steps} steps, {config.method}) -> {path}"
            )
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            try:
                result = run(  # our own cache file
                    config, out=path, overwrite=True, progress=_LongRunProgress(self.log)
                )
            except TrainingError as e:
                raise ExperimentError(f"Run {label!r} could not start: {e}") from None
            if result.status != "complete":
                raise ExperimentError(f"Run {label!r} ended {result.status}: {result.message}")
            self.log(f"    done in {time.perf_counter() - t0:.1f} s")
        with Reader(path) as r:
            wall = r.steps("wall")
            seconds = float(wall[-1]) if len(wall) else 0.0
        info = RunInfo(label, path, config, seconds, reused)
        self.runs[path.name] = info
        return info


# ---------------------------------------------------------------------------------------------
# The report: markdown + HTML figures + a JSON of the key numbers (RESULTS.md is built from it).


class Report:
    """Collects one experiment's markdown, figures and key numbers, then writes them."""

    def __init__(self, ctx: ExperimentContext, name: str, title: str) -> None:
        self.ctx = ctx
        self.name = name
        self.title = title
        self.parts: list[str] = []
        self.findings: dict[str, Any] = {}
        self.used: list[RunInfo] = []
        self.t0 = time.perf_counter()

    def text(self, markdown: str) -> None:
        self.parts.append(markdown.strip("\n"))

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append("#" * level + " " + text)

    def table(
        self, headers: Sequence[str], rows: Sequence[Sequence[Any]], caption: str | None = None
    ) -> None:
        if caption:
            self.parts.append(caption)
        self.parts.append(md_table(headers, rows))

    def use(self, info: RunInfo) -> RunInfo:
        if info not in self.used:
            self.used.append(info)
        return info

    def figure(self, fig: Any, slug: str, caption: str) -> str:
        """Write ``fig`` as standalone HTML beside a shared plotly.min.js (no network needed to
        view it; kaleido for PNG is not available) and link it from the report."""
        folder = self.ctx.out_dir / FIGURES
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{self.name}-{slug}.html"
        fig.write_html(folder / name, include_plotlyjs="directory", full_html=True)
        rel = f"{FIGURES}/{name}"
        self.parts.append(f"Figure: [{caption}]({rel})")
        return rel

    def finding(self, key: str, value: Any) -> None:
        self.findings[key] = _plain(value)

    def runs_table(self) -> str:
        rows = []
        for info in self.used:
            c = info.config
            opts = ", ".join(f"{k}={v}" for k, v in c.model_options.items())
            tech = ", ".join(t["name"] for t in c.techniques) or "none"
            with info.open() as r:
                params = r.num_params
                msize = r.measure_size
            rows.append(
                [
                    info.label,
                    c.dataset + (f" (subset {c.subset})" if c.subset else ""),
                    c.model + (f" ({opts})" if opts else ""),
                    f"{params:,}",
                    c.steps,
                    f"{c.optimizer} lr {c.lr} batch {c.batch_size}",
                    msize,
                    c.method,
                    c.record,
                    tech,
                    f"{info.seconds:.1f}",
                    info.path.name,
                ]
            )
        return md_table(
            [
                "run",
                "data",
                "model",
                "params",
                "steps",
                "optimizer",
                "measure set",
                "LCA method",
                "record",
                "techniques",
                "seconds",
                "file",
            ],
            rows,
        )

    def write(self) -> Path:
        """Write ``<out>/<name>.md`` and ``<out>/<name>.json``; return the markdown's path."""
        seconds = time.perf_counter() - self.t0
        run_seconds = sum(i.seconds for i in self.used)
        out = self.ctx.out_dir
        out.mkdir(parents=True, exist_ok=True)
        size = (
            "--tiny (seconds-long smoke size: numbers are not meaningful)"
            if self.ctx.tiny
            else "default size"
        )
        head = [
            f"# {self.title}",
            f"Generated by `python -m lca experiment {self.name}` ({size}); every number below "
            "is computed from the run files listed at the end (folder "
            f"`{_display(self.ctx.runs_dir)}`, not committed), with `lca.store.Reader`. "
            f"Training + LCA of these runs took {run_seconds:.0f} s (from their /steps/wall; "
            "one CPU thread on a shared 2-core machine); this report took "
            f"{seconds:.0f} s to make, reusing runs already in the runs folder.",
        ]
        tail = ["## Runs", self.runs_table()]
        text = "\n\n".join([*head, *self.parts, *tail]) + "\n"
        path = out / f"{self.name}.md"
        path.write_text(text)
        summary = {
            "name": self.name,
            "title": self.title,
            "tiny": self.ctx.tiny,
            "seconds": seconds,
            "run_seconds": run_seconds,
            "report": path.name,
            "runs": [i.path.name for i in self.used],
            "findings": self.findings,
        }
        (out / f"{self.name}.json").write_text(json.dumps(summary, indent=2))
        return path


def _display(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def _plain(v: Any) -> Any:
    """numpy -> plain Python for JSON (NaN -> None)."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return _plain(v.tolist())
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
