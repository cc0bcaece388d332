"""Post-hoc LCA: save θ at every step while training, compute (or recompute) LCA afterwards.

This is how the LCA paper's released code works (weights saved every step, LCA after training),
and it is useful here to recompute a run with another integrator, to check the online numbers,
or to spread the work over many processes by step range.

Saving. ``python -m lca train ... --save-weights`` declares, before the file goes SWMR:

* ``series/weights/<name>``: one row per segment, the parameter tensor at the segment's END, in
  the measurement dtype (f4 or f8), exactly the values the online tracker measured (after any
  technique's ``effective`` map: the weights the forward pass used);
* ``weights0/<name>``: θ_0, the start of the first segment (a fixed array, set once).

Float32 θ saved exactly is all post-hoc needs to reproduce the online LCA: the online tracker
measures those same float32 values, and Δ is their difference.

Recomputing. ``python -m lca allocate RUN.h5 [--method rk4] [--out NEW.h5] [--compare]``
rebuilds the model and the measurement set from the run's stored config, walks the saved
trajectory θ_0 → θ_1 → … with a ``Tracker`` (so every number is made by the same code as
online), and writes a new run file with the same steps, series, events and arrays (the saved
weights themselves are not copied). A run recorded with ``measure_val`` gets its LCA of the
held-out loss recomputed the same way, on the held-out set rebuilt from the config (its series
and per-weight totals are measured again, never copied), and ``--compare`` compares it too.
Under ``torchrun --nproc-per-node N`` each rank takes a contiguous range of segments (paying one
extra gradient at its range's start) and rank 0 gathers the records, and sums the ranks'
held-out per-weight totals, and writes them in order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import distributed, integrate
from .allocate import (
    KIND_STEP,
    VAL_LAYERS,
    VAL_LOSS,
    VAL_TOTAL,
    Layout,
    RecordSink,
    StepRecord,
    Tracker,
    val_arrays,
    val_series,
)
from .config import RunConfig
from .measure import Params
from .setup import (
    build_data_and_model,
    measurement_set,
    resolve_device,
    seed_everything,
    val_measurement_set,
)

WEIGHTS = "weights"  # series prefix: θ at the end of each segment
WEIGHTS0 = "weights0"  # array prefix: θ_0
READ_ROWS = 64  # saved-weight rows read from the file at a time


class PosthocError(ValueError):
    """A run cannot be recomputed (no saved weights, a model that does not match): one sentence."""


# ---------------------------------------------------------------------------------------------
# Saving weights during training.


def weight_declarations(
    names_shapes: list[tuple[str, tuple[int, ...]]], dtype: torch.dtype
) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, tuple[str, tuple[int, ...], float]]]:
    """(series, arrays) to declare in the Tracker's layout for ``--save-weights``.

    SWMR cannot add datasets once the file is live, so they are declared up front: a per-row
    series per parameter (θ after each segment) and a fixed array per parameter (θ_0, NaN until
    set, so a run that never started shows it).
    """
    code = "f8" if dtype == torch.float64 else "f4"
    series = {f"{WEIGHTS}/{n}": (code, tuple(s)) for n, s in names_shapes}
    arrays = {f"{WEIGHTS0}/{n}": (code, tuple(s), float("nan")) for n, s in names_shapes}
    return series, arrays


def declarations_for(
    model: nn.Module, dtype: torch.dtype
) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, tuple[str, tuple[int, ...], float]]]:
    """``weight_declarations`` for the parameters of ``model``."""
    return weight_declarations([(n, tuple(p.shape)) for n, p in model.named_parameters()], dtype)


class WeightSavingTracker(Tracker):
    """A Tracker that also records the weights it measured: θ_0 once, θ_end every segment.

    The values are the tracker's own snapshots (effective weights, measurement dtype), so a
    post-hoc pass over them repeats the online computation exactly. Declare the datasets with
    ``declarations_for`` (``series=`` and ``arrays=``) when constructing it.
    """

    def start(self) -> None:
        first = self._theta is None
        super().start()
        if first and self.writer is not None and hasattr(self.writer, "set_array"):
            for n, t in self.params_at_last_segment().items():
                self.writer.set_array(f"{WEIGHTS0}/{n}", t)

    def _segment(self, end, kind: int, label: str, row: dict[str, object]) -> None:
        for n, t in self.space.unflatten(end).items():
            row[f"{WEIGHTS}/{n}"] = t
        super()._segment(end, kind, label, row)


def has_weights(reader: Any) -> bool:
    """Whether a run file holds the saved trajectory (``--save-weights``)."""
    return all(f"{WEIGHTS}/{n}" in reader.series_layout for n in reader.names) and all(
        f"{WEIGHTS0}/{n}" in reader.array_layout for n in reader.names
    )


def saved_weights(reader: Any, start: int = 0, stop: int | None = None) -> Iterator[Params]:
    """θ_start, θ_start+1, …, θ_stop from a run file (θ_0 is ``weights0``), as CPU tensors.

    Reads ``READ_ROWS`` rows per parameter at a time: one HDF5 read per block, not per step.
    """
    stop = reader.num_steps if stop is None else stop
    k = start
    if k == 0:
        yield {n: torch.from_numpy(reader.array(f"{WEIGHTS0}/{n}")) for n in reader.names}
        k = 1
    while k <= stop:
        hi = min(stop, k - 1 + READ_ROWS)  # rows k-1 .. hi-1 hold θ_k .. θ_hi
        block = {n: reader.series(f"{WEIGHTS}/{n}", k - 1, hi) for n in reader.names}
        for j in range(hi - k + 1):
            yield {n: torch.from_numpy(np.ascontiguousarray(block[n][j])) for n in reader.names}
        k = hi + 1


# ---------------------------------------------------------------------------------------------
# Recomputing.


@dataclass
class Comparison:
    """How far recomputed LCA is from the file's own (max over steps, per tensor)."""

    max_abs: dict[str, float] = field(default_factory=dict)  # max |new − old|
    scale: dict[str, float] = field(default_factory=dict)  # max |old|
    level: str = "params"  # params (per weight, record full) or layers (per tensor)
    loss_max_abs: float = 0.0
    steps: int = 0
    # LCA of the held-out loss (runs with measure_val), per tensor and step, and its loss.
    held_out: Comparison | None = None

    def add(self, name: str, new: np.ndarray, old: np.ndarray) -> None:
        new, old = np.asarray(new, np.float64), np.asarray(old, np.float64)
        d = float(np.max(np.abs(new - old))) if new.size else 0.0
        s = float(np.max(np.abs(old))) if old.size else 0.0
        self.max_abs[name] = max(self.max_abs.get(name, 0.0), d)
        self.scale[name] = max(self.scale.get(name, 0.0), s)

    def merge(self, other: Comparison) -> None:
        for n, v in other.max_abs.items():
            self.max_abs[n] = max(self.max_abs.get(n, 0.0), v)
        for n, v in other.scale.items():
            self.scale[n] = max(self.scale.get(n, 0.0), v)
        self.loss_max_abs = max(self.loss_max_abs, other.loss_max_abs)
        self.steps += other.steps
        if other.held_out is not None:
            if self.held_out is None:
                self.held_out = Comparison(level="layers")
            self.held_out.merge(other.held_out)

    @property
    def relative(self) -> dict[str, float]:
        """Per tensor: max |new − old| / max |old| (0 where the tensor never moved)."""
        return {n: (d / self.scale[n] if self.scale[n] > 0 else d) for n, d in self.max_abs.items()}

    @property
    def max_relative(self) -> float:
        return max(self.relative.values(), default=0.0)

    def format(self) -> str:
        rel = self.relative
        worst = max(rel, key=rel.get) if rel else "n/a"
        line = (
            f"compared {self.steps} segments per {'weight' if self.level == 'params' else 'tensor'}"
            f": max relative difference {self.max_relative:.3e} (worst {worst}), "
            f"max loss difference {self.loss_max_abs:.3e}"
        )
        if self.held_out is not None:
            line += f"\nheld-out LCA: {self.held_out.format()}"
        return line


@dataclass
class PosthocResult:
    """What ``allocate_run`` did (on rank 0; other ranks get their own slice's numbers)."""

    path: str | None
    segments: int
    seconds: float
    method: str
    comparison: Comparison | None
    ranks: int = 1
    status: str = "complete"


class _Relay(RecordSink):
    """Receives a range tracker's records, renumbers them globally, and writes, compares or
    keeps them (ranks other than 0 keep them for rank 0)."""

    def __init__(
        self,
        lo: int,
        train_steps: np.ndarray,
        writer: Any,
        compare: Comparison | None,
        reader: Any,
        series: dict[str, np.ndarray],
        keep: bool,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.lo, self.train_steps, self.writer, self.compare = lo, train_steps, writer, compare
        self.reader, self.series, self.keep, self.progress = reader, series, keep, progress
        self.kept: list[StepRecord] = []
        self.layout: Layout | None = None
        self.loss0: float | None = None
        self.val_total: Any = None  # this rank's running Σ A_val per weight (measure_val runs)

    def begin(self, layout: Layout, loss0: float) -> None:
        self.layout, self.loss0 = layout, loss0
        if self.writer is not None:
            self.writer.begin(layout, loss0)

    def append(self, record: StepRecord) -> None:
        record.index += self.lo
        record.train_step = int(self.train_steps[record.index])
        if self.compare is not None:
            compare_record(self.compare, self.reader, record)
        if self.keep:  # the tracker's own series (held-out LCA) go to rank 0 with the record
            record.per_param = {n: a.detach().cpu() for n, a in record.per_param.items()}
            self.kept.append(record)
        else:
            self.write(record)
        if self.progress is not None:
            self.progress(record.index + 1)

    def write(self, record: StepRecord) -> None:
        if self.writer is not None:  # the source's rows, and what the tracker measured again
            record.series = {
                **{p: v[record.index] for p, v in self.series.items()},
                **record.series,
            }
            self.writer.append(record)

    def set_array(self, path: str, value: Any) -> None:
        """The tracker's own arrays (held-out L_val(θ_0) and per-weight totals): written on rank
        0; each rank keeps its totals for rank 0 to add up (``gather``)."""
        if path == VAL_TOTAL:
            self.val_total = value
        if self.writer is not None:
            self.writer.set_array(path, value)

    def close(self, status: str) -> None:  # the caller closes the writer after gathering
        pass


def compare_record(c: Comparison, reader: Any, record: StepRecord) -> None:
    """Fold one recomputed segment into ``c`` against row ``record.index`` of the source."""
    k = record.index
    if reader.record == "full":
        for n in reader.names:
            c.add(n, record.per_param[n].detach().cpu().numpy(), reader.param_lca(n, k, k + 1)[0])
    else:
        c.level = "layers"
        old = reader.layer_lca(k, k + 1)[0]
        for i, n in enumerate(reader.names):
            c.add(n, np.asarray([record.per_tensor[i]]), np.asarray([old[i]]))
    loss = reader.steps("loss", k + 1, k + 2)
    if len(loss):
        c.loss_max_abs = max(c.loss_max_abs, abs(record.loss_end - float(loss[0])))
    c.steps += 1
    if VAL_LAYERS in record.series and reader.has_val:
        if c.held_out is None:
            c.held_out = Comparison(level="layers")
        v = c.held_out
        old = reader.val_layer_lca(k, k + 1)[0]
        new = np.asarray(record.series[VAL_LAYERS], dtype=np.float64)
        for i, n in enumerate(reader.names):
            v.add(n, new[i : i + 1], old[i : i + 1])
        v.loss_max_abs = max(
            v.loss_max_abs,
            abs(float(record.series[VAL_LOSS]) - float(reader.val_steps("loss", k + 1, k + 2)[0])),
        )
        v.steps += 1


def rebuild(config: dict[str, Any], device: torch.device, data_dir: str | None = None):
    """(config, model, loss_fn, measurement set, held-out set or None) of a run from its stored
    config, as training made them.

    Uses the training loop's own setup (lca/setup.py), so the measurement set and the held-out
    set (``measure_val``) are the same seeded subsets.
    """
    values = dict(config)
    if data_dir is not None:
        values["data_dir"] = data_dir
    cfg = RunConfig.from_dict(values)
    seed_everything(cfg.seed)
    ds, model = build_data_and_model(cfg)
    model.to(device)
    val = val_measurement_set(ds, cfg) if cfg.measure_val else None
    return cfg, model, nn.CrossEntropyLoss(), measurement_set(ds, cfg), val


def default_out(source: str | Path, method: str) -> Path:
    p = Path(source)
    return p.with_name(f"{p.stem}.posthoc-{method}{p.suffix or '.h5'}")


def allocate_run(
    source: str | Path,
    *,
    out: str | Path | None = None,
    method: str | None = None,
    record: str | None = None,
    device: str = "auto",
    data_dir: str | None = None,
    compare: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> PosthocResult:
    """Recompute the LCA of a run recorded with ``--save-weights``.

    ``out``: write a new run file there (None with ``compare``: compare only). ``method``: the
    integrator (default: the run's). Launched by torchrun, ranks split the segments by range.
    """
    # Imported here: the store pulls in h5py, which `import lca.train` (and so this module)
    # must not pay for at start-up.
    from .store import Reader

    t0 = time.perf_counter()
    dev = resolve_device(device)
    dist_ctx = distributed.setup(dev)
    rank, world = (dist_ctx.rank, dist_ctx.world) if dist_ctx else (0, 1)
    if dist_ctx is not None:
        dev = dist_ctx.device
    done = False  # every rank recomputed its range: leave the group together
    try:
        with Reader(source) as reader:
            job = validate(reader, source, method, data_dir, dev)
            job.lo, job.hi = distributed.shard_range(job.total, rank, world)
            job.main = rank == 0
            path = _output_path(job, source, out, compare)
            writer = _open_output(job, reader, path, record, overwrite)
            try:
                relay = replay(job, reader, writer, compare, progress)
            except BaseException:
                if writer is not None:  # a file that was begun says how it ended
                    writer.close("failed")
                raise
            status = reader.status
        comparison = gather(relay, world, progress, job.total)
        final = {"running": "interrupted"}.get(status, status)
        if writer is not None:
            writer.close(final)
        done = True
        return PosthocResult(
            path=str(path) if path is not None else None,
            segments=job.total if job.main else job.hi - job.lo,
            seconds=time.perf_counter() - t0,
            method=job.method,
            comparison=comparison,
            ranks=world,
            status=final,
        )
    finally:
        distributed.teardown(dist_ctx, clean=done)


@dataclass
class _Job:
    """A run file checked for recomputing, with its model and measurement set rebuilt."""

    name: str  # the source file's name, for messages
    method: str
    config: RunConfig
    model: nn.Module
    loss_fn: Callable
    measure: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor] | None  # the held-out set (measure_val runs)
    dtype: torch.dtype
    device: torch.device
    total: int  # segments in the source run
    lo: int = 0  # this rank's segments: lo .. hi-1
    hi: int = 0
    main: bool = True  # rank 0: writes the new file


def validate(
    reader: Any, source: str | Path, method: str | None, data_dir: str | None, device
) -> _Job:
    """Refuse, with one sentence, a run that cannot be recomputed; else rebuild its model."""
    name = Path(source).name
    if not has_weights(reader):
        raise PosthocError(
            f"{name} has no saved weights; record the run with --save-weights to compute its "
            "LCA afterwards."
        )
    if not reader.config.get("dataset") or not reader.config.get("model"):
        raise PosthocError(
            f"{name} has no training config (dataset, model), so its measurement set cannot be "
            "rebuilt; recompute runs made by `python -m lca train`, or call lca.allocate on the "
            "saved weights yourself."
        )
    method = method or reader.method
    integrate.rule(method)  # one sentence for an unknown name
    cfg, model, loss_fn, measure, val = rebuild(reader.config, device, data_dir)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    if list(shapes) != reader.names or any(shapes[n] != reader.shapes[n] for n in shapes):
        raise PosthocError(
            f"The model rebuilt from {name}'s config does not match the saved weights (names "
            "or shapes differ); was the model zoo changed?"
        )
    dtype = torch.float64 if reader.dtype == "float64" else torch.float32
    return _Job(name, method, cfg, model, loss_fn, measure, val, dtype, device, reader.num_steps)


def _output_path(job: _Job, source: str | Path, out: str | Path | None, compare: bool):
    """Where rank 0 writes the recomputed run (None: compare only, or another rank)."""
    if not job.main or (out is None and compare):
        return None
    path = Path(out) if out is not None else default_out(source, job.method)
    if path.resolve() == Path(source).resolve():
        raise PosthocError("--out must differ from the run being recomputed.")
    if path.suffix != ".h5":
        raise PosthocError(
            f"--out {path} does not end in .h5; name the new run file like {path.stem or 'run'}.h5."
        )
    return path


def _open_output(job: _Job, reader: Any, path: Path | None, record: str | None, overwrite: bool):
    """The new run file's writer: the source's config with the new method, or None."""
    if path is None:
        return None
    # Imported here for the same reason as Reader in allocate_run (h5py at start-up).
    from .store import Writer

    if path.exists() and not overwrite:  # never replaced without being asked
        raise PosthocError(
            f"{path} already exists; choose another --out, or add --overwrite to replace it."
        )
    config = {**reader.config, "method": job.method, "save_weights": False, "out": str(path)}
    return Writer(
        path,
        record=record or reader.record,
        config=config,
        max_bytes=job.config.max_bytes,
        expected_steps=job.total,
        overwrite=overwrite,
    )


def replay(
    job: _Job,
    reader: Any,
    writer: Any,
    compare: bool,
    progress: Callable[[int, int], None] | None,
) -> _Relay:
    """Walk this rank's saved segments θ_lo → … → θ_hi with a Tracker; the relay holds the
    records (written on rank 0 as they come, kept for rank 0 on the others)."""
    series, events, arrays = _copied_layout(reader, job.main)
    relay = _Relay(
        job.lo,
        reader.steps("train_step"),
        writer,
        Comparison() if compare else None,
        reader,
        {p: reader.series(p) for p in series} if job.main else {},
        keep=not job.main,
        progress=(lambda i: progress(i, job.total)) if (progress and job.main) else None,
    )
    trajectory = saved_weights(reader, job.lo, job.hi)
    current: dict[str, Params] = {"θ": next(trajectory)}
    if not _finite(current["θ"]):
        raise PosthocError(
            f"{job.name} holds no finite weights at segment {job.lo} (θ_0 is saved when the "
            "first step starts); it cannot be recomputed."
        )
    tracker = Tracker(
        job.model,
        job.loss_fn,
        job.measure,
        method=job.method,
        writer=relay,
        tolerance=job.config.tolerance,
        chunk_size=job.config.measure_batch,
        dtype=job.dtype,
        device=job.device,
        effective=lambda _p: current["θ"],
        series=series or None,
        events=events or None,
        arrays=arrays or None,
        keep_cumulative=False,
        val_data=job.val,
    )
    if job.main or job.hi > job.lo:  # a rank with no segments measures nothing
        tracker.start()
    if writer is not None:
        _copy_events_and_arrays(reader, writer, events, arrays)
    kinds, labels = reader.steps("kind"), reader.steps("label")
    for k in range(job.lo, job.hi):
        theta = next(trajectory)
        if int(kinds[k]) == KIND_STEP:
            segment = tracker.step()
        else:
            segment = tracker.intervention(str(labels[k]))
        with segment:
            current["θ"] = theta
    return relay


def _copied_layout(reader: Any, main: bool) -> tuple[dict, dict, dict]:
    """(series, events, arrays) of the source run that the new file repeats: all but the saved
    weights and what the tracker measures again (the held-out set's LCA); only rank 0 writes,
    so the other ranks declare none."""
    if not main:
        return {}, {}, {}
    remeasured = {*val_series(0), *val_arrays(0)}
    series = {
        p: v
        for p, v in reader.series_layout.items()
        if not p.startswith(WEIGHTS + "/") and p not in remeasured
    }
    arrays = {
        p: v
        for p, v in reader.array_layout.items()
        if not p.startswith(WEIGHTS0 + "/") and p not in remeasured
    }
    return series, dict(reader.event_layout), arrays


def _copy_events_and_arrays(reader: Any, writer: Any, events: dict, arrays: dict) -> None:
    """The source run's event tables and fixed arrays, as they are, into the new file."""
    for p in events:
        table = reader.events(p)
        cols = reader.event_layout[p]
        rows = np.stack([table[c] for c in cols], axis=1) if cols else []
        for r in rows:
            writer.add_event(p, r)
    for p in arrays:
        writer.set_array(p, reader.array(p))


def gather(
    relay: _Relay, world: int, progress: Callable[[int, int], None] | None, total: int
) -> Comparison | None:
    """Rank 0 writes the other ranks' records in order and merges their comparisons."""
    comparison = relay.compare
    if world == 1:
        return comparison
    val_total = None if relay.val_total is None else relay.val_total.detach().cpu().double().clone()
    gathered = distributed.gather_objects((relay.kept, comparison, val_total), dst=0)
    if gathered is None:  # not rank 0: its records went to rank 0
        return comparison
    for r_kept, r_cmp, r_val in gathered[1:]:
        for rec in r_kept:
            relay.write(rec)
            if progress is not None:
                progress(rec.index + 1, total)
        if comparison is not None and r_cmp is not None:
            comparison.merge(r_cmp)
        if val_total is not None and r_val is not None:  # Σ over ranks' step ranges
            val_total += r_val
    if val_total is not None and relay.writer is not None:
        relay.writer.set_array(VAL_TOTAL, val_total)
    return comparison


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """max |a − b| / max |b|: the tolerance measure used for LCA comparisons (0 if b ≡ 0)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    d = float(np.max(np.abs(a - b))) if a.size else 0.0
    return d / scale if scale > 0 else d


def _finite(values: Params) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in values.values())


__all__ = [
    "WEIGHTS",
    "WEIGHTS0",
    "Comparison",
    "PosthocError",
    "PosthocResult",
    "WeightSavingTracker",
    "allocate_run",
    "declarations_for",
    "has_weights",
    "relative_difference",
    "saved_weights",
    "weight_declarations",
]
