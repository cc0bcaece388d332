"""Loss Change Allocation of straight segments, and a Tracker for any training loop.

A_{t,i} = Δ_{t,i} · ∫_0^1 ∂_i L(θ_t + sΔ_t) ds, so Σ_i A_{t,i} ≈ L(θ_{t+1}) − L(θ_t). The integral
is a quadrature rule from ``lca.integrate``; the gradient at the end of one step is the gradient
at the start of the next, so the tracker pays only for the rule's interior nodes plus the end
point (2 evaluations per step for Simpson). Everything else (sums per unit and per tensor, the
helped fraction) is bookkeeping that must stay small next to those evaluations.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch
from torch import nn

from . import integrate
from .measure import DEFAULT_CHUNK, LossFn, Measurer, Params, current_params


class NonFiniteLossError(RuntimeError):
    """The measured loss became NaN or infinite; the steps before it are kept."""


# ---------------------------------------------------------------------------------------------
# Units: the output neurons / channels that LCA is summed over.


@dataclass(frozen=True)
class UnitGroup:
    """Parameters whose LCA is summed per output unit (a neuron, a channel).

    For Linear and Conv layers a unit is one output's incoming weights plus its bias; for
    normalisation layers it is one channel's γ plus β. ``dims[k]`` is the axis of ``params[k]``
    that indexes the unit (1 for transposed convolutions, else 0).
    """

    name: str
    params: tuple[str, ...]
    dims: tuple[int, ...]
    size: int


def unit_layout(model: nn.Module) -> list[UnitGroup]:
    """Group every parameter of ``model`` into units, module by module, in model order."""
    groups: list[UnitGroup] = []
    for mod_name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not own:
            continue
        full = [f"{mod_name}.{n}" if mod_name else n for n, _ in own]
        out_dim = 1 if isinstance(module, nn.modules.conv._ConvTransposeNd) else 0
        dims = tuple(out_dim if p.ndim > out_dim else 0 for _, p in own)
        sizes = {p.shape[d] if p.ndim else 1 for (_, p), d in zip(own, dims, strict=True)}
        if len(sizes) == 1 and all(p.ndim for _, p in own):
            groups.append(UnitGroup(mod_name or "model", tuple(full), dims, sizes.pop()))
        else:  # parameters that do not share a unit axis: each is its own group
            for fname, (_, p), d in zip(full, own, dims, strict=True):
                groups.append(UnitGroup(fname, (fname,), (d,), p.shape[d] if p.ndim else 1))
    return groups


def sum_units(per_param: Params, groups: list[UnitGroup]) -> dict[str, np.ndarray]:
    """Per-unit LCA (float64) for each group: Σ over each unit's incoming parameters."""
    vectors = []
    for g in groups:
        acc = None
        for name, d in zip(g.params, g.dims, strict=True):
            a = per_param[name].double()
            if a.ndim == 0:
                a = a.reshape(1)
            a = a.movedim(d, 0).reshape(a.shape[d], -1).sum(dim=1)
            acc = a if acc is None else acc + a
        vectors.append(acc)
    if not vectors:
        return {}
    # One device-to-host copy for all groups (a copy per group would sync the GPU each time).
    flat = torch.cat(vectors).cpu().numpy()
    out: dict[str, np.ndarray] = {}
    offset = 0
    for g, v in zip(groups, vectors, strict=True):
        out[g.name] = flat[offset : offset + len(v)]
        offset += len(v)
    return out


# ---------------------------------------------------------------------------------------------
# One segment.


@dataclass
class Allocation:
    """LCA of one straight segment θ_start → θ_end."""

    per_param: Params
    loss_start: float
    loss_end: float
    splits: int = 1  # Simpson panels used (rk4-adaptive), 1 otherwise
    evaluations: int = 0  # new gradient evaluations spent on this segment

    @property
    def per_tensor(self) -> dict[str, float]:
        return {n: float(a.double().sum()) for n, a in self.per_param.items()}

    @property
    def total(self) -> float:
        return math.fsum(self.per_tensor.values())

    @property
    def error(self) -> float:
        """ΔL − ΣA: what the integrator failed to allocate."""
        return (self.loss_end - self.loss_start) - self.total


@dataclass
class _Segment:
    per_param: Params
    loss_end: float
    grad_end: Params | None
    splits: int
    evaluations: int
    per_tensor: np.ndarray  # float64, model order


def _point(start: Params, delta: Params, end: Params, s: Fraction | float) -> Params:
    if s == 0:
        return start
    if s == 1:
        return end
    return {n: torch.add(start[n], delta[n], alpha=float(s)) for n in start}


def _combine(rule: integrate.Rule, grads: dict, delta: Params) -> Params:
    out: Params = {}
    for n, d in delta.items():
        acc = None
        for s, w in zip(rule.nodes, rule.weights, strict=True):
            g = grads[s][n]
            acc = g * w if acc is None else acc.add_(g, alpha=w)
        out[n] = acc.mul_(d)
    return out


def integrate_segment(
    measurer: Measurer,
    start: Params,
    end: Params,
    method: str = "rk4",
    *,
    loss_start: float,
    grad_start: Params | None = None,
    tolerance: float = integrate.DEFAULT_TOLERANCE,
) -> _Segment:
    """LCA of start → end with ``method``, reusing ``grad_start`` when the rule needs it."""
    rule = integrate.rule(method)
    evals0 = measurer.evaluations
    delta = {n: end[n] - start[n] for n in start}
    grads: dict = {}
    if rule.uses_start or method == "rk4-adaptive":
        grads[Fraction(0)] = (
            grad_start if grad_start is not None else measurer.loss_and_grad(start)[1]
        )
    # The end point is always measured: its loss closes the segment, its gradient opens the next.
    need_end_grad = rule.uses_start or rule.uses_end
    loss_end, g_end = measurer.loss_and_grad(end, need_grad=need_end_grad)
    if need_end_grad:
        grads[Fraction(1)] = g_end

    def run(r: integrate.Rule) -> tuple[Params, np.ndarray]:
        for s in r.nodes:
            if s not in grads:
                grads[s] = measurer.loss_and_grad(_point(start, delta, end, s))[1]
        per_param = _combine(r, grads, delta)
        per_tensor = torch.stack([per_param[n].double().sum() for n in start]).cpu().numpy()
        return per_param, per_tensor

    per_param, per_tensor = run(rule)
    splits = 1
    if method == "rk4-adaptive":
        for panels in integrate.ADAPTIVE_PANELS[1:]:
            err = (loss_end - loss_start) - math.fsum(per_tensor)
            if not abs(err) > tolerance:
                break
            per_param, per_tensor = run(integrate.composite_simpson(panels))
            splits = panels
    return _Segment(
        per_param=per_param,
        loss_end=loss_end,
        grad_end=g_end if need_end_grad else None,
        splits=splits,
        evaluations=measurer.evaluations - evals0,
        per_tensor=per_tensor,
    )


def allocate(
    model: nn.Module,
    loss_fn: LossFn,
    data,
    start: Params,
    end: Params,
    method: str = "rk4",
    *,
    tolerance: float = integrate.DEFAULT_TOLERANCE,
    chunk_size: int = DEFAULT_CHUNK,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Allocation:
    """LCA of the straight segment ``start`` → ``end`` (dicts name -> tensor) on ``data``.

    ``model`` supplies the architecture only; its parameters, buffers and modes are untouched.
    """
    measurer = Measurer(model, loss_fn, data, chunk_size=chunk_size, dtype=dtype, device=device)
    missing = [n for n in measurer.names if n not in start or n not in end]
    if missing:
        raise KeyError(
            f"start/end lack parameters {missing[:3]}; use model.named_parameters() names"
        )
    start = {n: start[n].detach().to(measurer.device, dtype) for n in measurer.names}
    end = {n: end[n].detach().to(measurer.device, dtype) for n in measurer.names}
    rule = integrate.rule(method)
    if rule.uses_start or method == "rk4-adaptive":
        loss_start, grad_start = measurer.loss_and_grad(start)
    else:
        loss_start, grad_start = measurer.loss(start), None
    seg = integrate_segment(
        measurer,
        start,
        end,
        method,
        loss_start=loss_start,
        grad_start=grad_start,
        tolerance=tolerance,
    )
    return Allocation(seg.per_param, loss_start, seg.loss_end, seg.splits, measurer.evaluations)


# ---------------------------------------------------------------------------------------------
# The tracker.


@dataclass(frozen=True)
class Layout:
    """What a recorder needs to know before the first step (HDF5 datasets are made up front)."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    units: tuple[UnitGroup, ...]
    method: str
    dtype: str
    measure_size: int
    # Extra per-row series declared by the caller: path -> (numpy dtype str, per-row shape).
    series: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)
    # Event tables: path -> column names; rows of floats appended whenever something happens.
    events: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Fixed-shape arrays overwritten in place: path -> (numpy dtype str, shape, fill value).
    arrays: dict[str, tuple[str, tuple[int, ...], float]] = field(default_factory=dict)

    @property
    def num_params(self) -> int:
        return sum(math.prod(s) for s in self.shapes)


KIND_STEP, KIND_INTERVENTION = 0, 1


@dataclass
class StepRecord:
    """Everything the tracker knows about one segment (an optimizer step or an intervention)."""

    index: int  # row in the run: segments are numbered 0, 1, 2, … in time order
    kind: int  # KIND_STEP or KIND_INTERVENTION
    train_step: int  # optimizer steps completed before this segment ended
    label: str
    loss_start: float
    loss_end: float
    per_param: Params  # float32/64 on the measurement device
    per_tensor: np.ndarray  # (L,) float64
    per_unit: dict[str, np.ndarray]
    helped: float  # fraction of parameters with A < 0
    hurt: float  # fraction with A > 0
    splits: int
    evaluations: int
    seconds_lca: float
    wall: float  # seconds since the tracker started, at the end of this segment
    series: dict[str, object] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return math.fsum(self.per_tensor)

    @property
    def error(self) -> float:
        return (self.loss_end - self.loss_start) - self.total

    @property
    def still(self) -> float:
        return max(0.0, 1.0 - self.helped - self.hurt)


class RecordSink:
    """Where a tracker sends its records (``lca.Writer`` implements this)."""

    def begin(self, layout: Layout, loss0: float) -> None: ...

    def append(self, record: StepRecord) -> None: ...

    def close(self, status: str) -> None: ...


Effective = Callable[[Params], Params]


class Tracker:
    """Instruments a training loop: ``with tracker.step(): opt.step()`` allocates each step.

    The parameters are read before and after the block; their change is the step, whatever
    optimizer made it. A change made between blocks (a prune, a manual edit) is allocated as an
    intervention segment of its own, so the loss always telescopes:
    Σ over segments of ΣA ≈ L_T − L_0.
    ``effective`` maps the stored parameters to the weights the forward pass really uses
    (quantized, masked); LCA is measured on those.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data,
        method: str = "rk4",
        writer: RecordSink | None = None,
        *,
        tolerance: float = integrate.DEFAULT_TOLERANCE,
        chunk_size: int = DEFAULT_CHUNK,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        effective: Effective | None = None,
        series: dict[str, tuple[str, tuple[int, ...]]] | None = None,
        events: dict[str, tuple[str, ...]] | None = None,
        arrays: dict[str, tuple[str, tuple[int, ...], float]] | None = None,
        keep_cumulative: bool = True,
    ) -> None:
        integrate.rule(method)  # validates the name
        self.model = model
        self.method = method
        self.tolerance = tolerance
        self.writer = writer
        self.effective = effective
        self.measurer = Measurer(
            model, loss_fn, data, chunk_size=chunk_size, dtype=dtype, device=device
        )
        self.units = unit_layout(model)
        params = dict(model.named_parameters())
        self.layout = Layout(
            names=tuple(params),
            shapes=tuple(tuple(p.shape) for p in params.values()),
            units=tuple(self.units),
            method=method,
            dtype=str(dtype).replace("torch.", ""),
            measure_size=self.measurer.size,
            series=dict(series or {}),
            events=dict(events or {}),
            arrays=dict(arrays or {}),
        )
        self.keep_cumulative = keep_cumulative
        self.cumulative: Params = {}
        self.history: list[dict[str, float]] = []  # small per-segment scalars, for notebooks
        self.last: StepRecord | None = None
        self.train_steps = 0
        self.loss0: float | None = None
        self._theta: Params | None = None
        self._grad: Params | None = None
        self._loss: float | None = None
        self._t0 = time.perf_counter()
        self._closed = False

    # -- state ------------------------------------------------------------------------------
    def _snapshot(self) -> Params:
        p = current_params(self.model)
        if self.effective is not None:
            p = self.effective(p)
        return {n: t.detach().to(self.measurer.device, self.measurer.dtype) for n, t in p.items()}

    def start(self) -> None:
        """Measure L(θ_0) and open the record; called by the first step if not before."""
        if self._theta is not None:
            return
        self._theta = self._snapshot()
        rule = integrate.rule(self.method)
        if rule.uses_start or self.method == "rk4-adaptive":
            self._loss, self._grad = self.measurer.loss_and_grad(self._theta)
        else:
            self._loss, self._grad = self.measurer.loss(self._theta), None
        self.loss0 = self._loss
        if not math.isfinite(self._loss):
            raise NonFiniteLossError(f"The initial loss is {self._loss}; nothing was recorded.")
        if self.writer is not None:
            self.writer.begin(self.layout, self._loss)

    def _moved_outside(self, now: Params) -> bool:
        return any(not torch.equal(now[n], self._theta[n]) for n in now)

    # -- public -----------------------------------------------------------------------------
    @contextmanager
    def step(self) -> Iterator[dict[str, object]]:
        """Allocate the parameter change made inside the block as one optimizer step.

        Yields a dict the caller may fill with values for series declared at construction.
        """
        if self._closed:
            raise RuntimeError("This tracker is closed.")
        if self._theta is None:
            self.start()
        else:
            now = self._snapshot()
            if self._moved_outside(now):
                self._segment(now, KIND_INTERVENTION, "outside", {})
        row: dict[str, object] = {}
        yield row
        self.train_steps += 1
        try:
            self._segment(self._snapshot(), KIND_STEP, "", row)
        except BaseException:
            self.train_steps -= 1  # the step was not recorded
            raise

    @contextmanager
    def intervention(self, label: str) -> Iterator[dict[str, object]]:
        """Allocate a weight move made outside the optimizer (e.g. a prune) as its own segment."""
        if self._theta is None:
            self.start()
        row: dict[str, object] = {}
        yield row
        self._segment(self._snapshot(), KIND_INTERVENTION, label, row)

    def _segment(self, end: Params, kind: int, label: str, row: dict[str, object]) -> None:
        t0 = time.perf_counter()
        seg = integrate_segment(
            self.measurer,
            self._theta,
            end,
            self.method,
            loss_start=self._loss,
            grad_start=self._grad,
            tolerance=self.tolerance,
        )
        index = len(self.history)
        if not math.isfinite(seg.loss_end):
            raise NonFiniteLossError(
                f"The loss became {seg.loss_end} at step {self.train_steps}; "
                f"the {index} segments before it are kept."
            )
        count = self.layout.num_params
        counts = torch.stack([
            torch.stack([(a < 0).sum(), (a > 0).sum()]) for a in seg.per_param.values()
        ]).sum(dim=0).tolist()  # one host sync for both counts
        helped, hurt = int(counts[0]), int(counts[1])
        if self.keep_cumulative:
            for n, a in seg.per_param.items():
                c = self.cumulative.get(n)
                self.cumulative[n] = a.clone() if c is None else c.add_(a)
        now = time.perf_counter()
        record = StepRecord(
            index=index,
            kind=kind,
            train_step=self.train_steps,
            label=label,
            loss_start=self._loss,
            loss_end=seg.loss_end,
            per_param=seg.per_param,
            per_tensor=seg.per_tensor,
            per_unit=sum_units(seg.per_param, self.units),
            helped=helped / count,
            hurt=hurt / count,
            splits=seg.splits,
            evaluations=seg.evaluations,
            seconds_lca=now - t0,
            wall=now - self._t0,
            series=row,
        )
        self.history.append(
            {
                "loss": record.loss_end,
                "lca": record.total,
                "error": record.error,
                "helped": record.helped,
                "kind": kind,
                "splits": seg.splits,
            }
        )
        self._theta, self._grad, self._loss = end, seg.grad_end, seg.loss_end
        self.last = record
        if self.writer is not None:
            self.writer.append(record)

    def close(self, status: str = "complete") -> None:
        """Finish the run; the writer records ``status``."""
        if self._closed:
            return
        self._closed = True
        if self.writer is not None:
            if self._theta is None:  # no step was taken: still record L_0
                try:
                    self.start()
                except NonFiniteLossError:
                    pass
            self.writer.close(status)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close("complete")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close("interrupted")
        else:
            self.close("failed")
