"""What the Loss, Layers, Neurons & weights and Compare pages draw, read from a run file.

Each ``*_view(r)`` reads, from an open ``lca.store.Reader``, the arrays one page draws, once and
bounded to the steps recorded when it starts (a live run keeps growing while a page draws), and
returns them as a small dataclass of numpy arrays: the figures in ``lca.figures`` take these
arrays, never a Reader. The page caches a view per file version (path, mtime, size); a notebook
calls the same function::

    with Reader("runs/demo.h5") as r:
        v = views.loss_view(r)
    F.loss_conservation(v.loss, v.lca, kind=v.kind)

Per-step arrays are whole (figures block-sum what they draw); per-weight arrays, which can be
huge, are read by their own functions (``unit_rows``, ``param_rows``, ``value_sample``) for
the part a page shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import data
from lca.segments import step_positions
from lca.store import Reader

__all__ = [
    "IMAGE_DATASETS",
    "CompareView",
    "LayersView",
    "LossView",
    "NeuronsView",
    "RunView",
    "WeightStats",
    "compare_view",
    "infer_image_shape",
    "layers_view",
    "loss_view",
    "neurons_view",
    "run_view",
    "param_rows",
    "unit_rows",
    "value_sample",
    "weight_stats",
]

VALUE_BUDGET = 4_000_000  # LCA values read for the histogram (a seeded sample of steps beyond)

# Per-example input shapes of the image datasets (from ``data.info``, the one place they live).
IMAGE_DATASETS: dict[str, tuple[int, ...]] = {
    n: data.info(n).input_shape for n in data.names() if data.info(n).images
}


def infer_image_shape(dataset: str | None, in_features: int) -> tuple[int, int, int] | None:
    """(C, H, W) of an image dataset whose flattened input has ``in_features`` values, else None
    (see ``data.image_shape``: IDX files may hold any square size, inferred from the count)."""
    return data.image_shape(dataset, in_features)


@dataclass
class RunView:
    """What every page's caption says about a run, and the segment kinds of its T rows."""

    name: str
    status: str
    record: str
    method: str
    num_params: int
    names: list[str]
    shapes: dict[str, tuple[int, ...]]
    units: list[tuple[str, int, list[str]]]  # (unit group, units, its parameter tensors)
    config: dict[str, Any]
    kind: np.ndarray  # (T,) 0 optimizer step, 1 intervention (e.g. a prune event)

    @property
    def num_steps(self) -> int:
        """Recorded rows (segments): optimizer steps and interventions."""
        return len(self.kind)

    @property
    def positions(self) -> np.ndarray:
        """Each row's place on the training-step axis (``lca.segments.step_positions``)."""
        return step_positions(self.kind)

    @property
    def sizes(self) -> dict[str, int]:
        """Parameters per tensor."""
        return {n: int(math.prod(self.shapes[n])) for n in self.names}

    @property
    def running(self) -> bool:
        return self.status == "running"


def _run(r: Reader, t: int) -> dict[str, Any]:
    return {
        "name": r.path.name,
        "status": r.status,
        "record": r.record,
        "method": r.method,
        "num_params": int(r.num_params),
        "names": list(r.names),
        "shapes": {n: tuple(s) for n, s in r.shapes.items()},
        "units": [(g, int(size), list(params)) for g, size, params in r.units],
        "config": dict(r.config),
        "kind": np.asarray(r.steps("kind", 0, t)),
    }


def run_view(r: Reader) -> RunView:
    """The run at a glance: status, record mode, tensors, and the kinds of its rows."""
    return RunView(**_run(r, r.num_steps))


@dataclass
class LossView(RunView):
    """The Loss page: per-step scalars (cheap even for huge runs) and the run's summary."""

    loss: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (T+1,) L_0 .. L_T
    lca: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (T,) ΣA per step
    error: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (T,) ΔL − ΣA
    splits: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (T,) Simpson panels
    helped: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (T,) share with LCA < 0
    hurt: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (T,) share with LCA > 0
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))  # (T,) str
    train_loss: np.ndarray | None = None  # (T,) minibatch loss, when recorded
    evals: dict[str, np.ndarray] = field(default_factory=dict)  # the eval event table
    summary: dict[str, Any] = field(default_factory=dict)  # ``Reader.summary()``

    @property
    def tolerance(self) -> float | None:
        """The adaptive method's per-step tolerance, None for a fixed method."""
        if "adaptive" not in self.method:
            return None
        return float(self.config.get("tolerance", 0) or 0)


def loss_view(r: Reader) -> LossView:
    t = r.num_steps
    steps = {
        f: np.asarray(r.steps(f, 0, t))
        for f in ("lca", "error", "splits", "helped", "hurt", "label")
    }
    train_loss = None
    if "steps/train_loss" in r.series_layout:
        train_loss = np.asarray(r.series("steps/train_loss", 0, t))
    return LossView(
        **_run(r, t),
        loss=np.asarray(r.steps("loss", 0, t + 1)),
        lca=steps["lca"],
        error=steps["error"],
        splits=steps["splits"],
        helped=steps["helped"],
        hurt=steps["hurt"],
        labels=steps["label"],
        train_loss=train_loss,
        evals=r.events("eval") if "eval" in r.event_layout else {},
        summary=r.summary() if t else {},
    )


@dataclass
class LayersView(RunView):
    """The Layers page: the (T, L) per-tensor LCA table (small: one value per tensor per step)."""

    layer_lca: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    @property
    def totals(self) -> np.ndarray:
        """(L,) total LCA of each tensor over the run so far."""
        return self.layer_lca.sum(axis=0)

    @property
    def cumulative(self) -> np.ndarray:
        """(T, L) running sums from step 1."""
        return np.cumsum(self.layer_lca, axis=0)

    @property
    def counts(self) -> np.ndarray:
        """(L,) parameters per tensor, in ``names`` order."""
        sizes = self.sizes
        return np.array([sizes[n] for n in self.names])


def layers_view(r: Reader) -> LayersView:
    t = r.num_steps
    return LayersView(**_run(r, t), layer_lca=np.asarray(r.layer_lca(0, t), dtype=np.float64))


@dataclass
class NeuronsView(RunView):
    """The Neurons & weights page: what it needs besides the per-weight reads below."""

    dataset: str | None = None
    first_weight: tuple[str, tuple[int, ...]] | None = None  # the first layer's weight tensor

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """(C, H, W) the first layer's Linear weights can be drawn as, else None."""
        if self.first_weight is None or len(self.first_weight[1]) != 2:
            return None
        return data.image_shape(self.dataset, self.first_weight[1][1])


def _first_weight(
    units: list[tuple[str, int, list[str]]], shapes: dict[str, tuple[int, ...]]
) -> tuple[str, tuple[int, ...]] | None:
    """The first layer's weight tensor (2-D Linear or 4-D Conv), in model order."""
    for _group, _size, params in units:
        for name in params:
            if len(shapes[name]) in (2, 4):
                return name, shapes[name]
        return None
    return None


def neurons_view(r: Reader) -> NeuronsView:
    base = _run(r, r.num_steps)
    dataset = base["config"].get("dataset")
    if isinstance(dataset, dict):
        dataset = dataset.get("name")
    return NeuronsView(
        **base,
        dataset=None if dataset is None else str(dataset),
        first_weight=_first_weight(base["units"], base["shapes"]),
    )


@dataclass
class WeightStats:
    """Per-weight totals and helped-step counts of every tensor (kept in every record mode)."""

    totals: dict[str, np.ndarray]
    helped: dict[str, np.ndarray]
    rows: int  # the steps they cover
    # Tensors whose LCA is rounding noise on every step (lca.views.rounding_tensors), which
    # helped fractions leave out.
    rounding: dict[str, bool] = field(default_factory=dict)

    def left_out(self) -> np.ndarray:
        """Flat bool over every weight (model order): True where its tensor is left out."""
        return np.concatenate(
            [np.full(np.size(t), bool(self.rounding.get(n, False))) for n, t in self.totals.items()]
        )


def weight_stats(r: Reader) -> WeightStats:
    from .heldout import rounding_mask

    return WeightStats(
        {n: r.param_totals(n) for n in r.names},
        {n: r.param_helped_steps(n) for n in r.names},
        min(r.totals_rows, r.num_steps),
        dict(zip(r.names, (bool(z) for z in rounding_mask(r)), strict=True)),
    )


def unit_rows(
    r: Reader, group: str, start: int | None = None, stop: int | None = None
) -> np.ndarray:
    """(steps, U) LCA of each unit of one unit group (record units or full)."""
    return np.asarray(r.unit_lca(group, start, stop))


def param_rows(
    r: Reader,
    name: str,
    start: int | None = None,
    stop: int | None = None,
    index: int | None = None,
) -> np.ndarray:
    """Per-weight LCA of one tensor over steps (record full): (steps, *shape), or (steps,) for
    the weight at flat ``index``."""
    return np.asarray(r.param_lca(name, start, stop, index=index))


def value_sample(r: Reader, budget: int = VALUE_BUDGET) -> tuple[np.ndarray, int]:
    """Every per-weight LCA value (record full), or those of a seeded sample of whole windows of
    steps (aligned to the file's time chunks, so reads stay cheap) when that is more than
    ``budget`` values; and how many steps they cover."""
    t = r.num_steps
    p = max(1, r.num_params)
    rows = max(1, budget // p)
    if rows >= t:
        ranges = [(0, t)]
    else:
        window = max(1, min(int(r.attrs.get("chunk_rows", 32)), rows))
        starts = np.arange(0, t - window + 1, window)
        pick = np.random.default_rng(0).choice(
            len(starts), size=min(len(starts), max(1, rows // window)), replace=False
        )
        ranges = [(int(s), int(s) + window) for s in np.sort(starts[pick])]
    parts = [r.param_lca(n, s, e).ravel() for s, e in ranges for n in r.names]
    used = sum(e - s for s, e in ranges)
    return np.concatenate(parts).astype(np.float32, copy=False), used


@dataclass
class CompareView:
    """What the Compare page needs from one run: loss, step and wall axes, per-layer totals."""

    name: str
    status: str
    summary: dict[str, Any]
    loss: np.ndarray  # (T+1,)
    train_step: np.ndarray  # (T,) optimizer steps done after each row
    wall: np.ndarray  # (T,) seconds since the run started
    names: list[str]
    totals: np.ndarray  # (L,)
    sizes: dict[str, int]


def compare_view(r: Reader) -> CompareView:
    t = r.num_steps
    return CompareView(
        name=r.path.name,
        status=r.status,
        summary=r.summary(),
        loss=np.asarray(r.steps("loss", 0, t + 1)),
        train_step=np.asarray(r.steps("train_step", 0, t)),
        wall=np.asarray(r.steps("wall", 0, t)),
        names=list(r.names),
        totals=(np.asarray(r.layer_lca(0, t)).sum(axis=0) if t else np.zeros(len(r.names))),
        sizes={n: int(math.prod(r.shapes[n])) for n in r.names},
    )
