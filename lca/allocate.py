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
from .integrate import DEFAULT_PARAM_TOLERANCE
from .measure import DEFAULT_CHUNK, LossFn, Measurer, Params
from .memory import RELEASE_MIN_BYTES, release_free_memory


def exit_status(exc_type: type[BaseException] | None) -> str:
    """The run status a ``with`` block ends in: complete, interrupted (Ctrl-C) or failed."""
    if exc_type is None:
        return "complete"
    return "interrupted" if issubclass(exc_type, KeyboardInterrupt) else "failed"


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
    first = next(iter(per_param.values()))
    space = FlatSpace(list(per_param), [a.shape for a in per_param.values()], groups, first.device)
    return space.split_units(space.per_unit(space.flatten(per_param)).cpu().numpy())


# ---------------------------------------------------------------------------------------------
# One segment.


@dataclass
class Allocation:
    """LCA of one straight segment θ_start → θ_end."""

    per_param: Params
    loss_start: float
    loss_end: float
    splits: int = 1  # Simpson panels used (rk4-adaptive, rk4-paper), 1 otherwise
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


class FlatSpace:
    """All parameters as one flat vector, so per-step bookkeeping is a handful of tensor ops.

    The step's arithmetic (Δ, the points on the segment, the weighted sum of gradients, the
    signs, the running totals) runs once over one vector instead of once per tensor. Per-tensor
    dicts are views. The sums per tensor and per unit run over each tensor's slice in blocks of
    at most ``BLOCK`` elements: no per-parameter index vectors (they cost 16 B per parameter,
    half the tracker's state) and no full-size float64 temporaries (8 B per parameter each,
    kept by the allocator as resident memory), measured by ``benchmarks/memory.py``.
    """

    BLOCK = 1 << 16  # elements per float64 temporary (512 KiB)
    # Up to this many parameters the sums are one index_add_ each over cached index vectors
    # (≤ 1 MiB): a few ops per step, where a small model's step is short.
    SMALL = 1 << 16

    def __init__(self, names, shapes, units: list[UnitGroup], device: torch.device) -> None:
        self.names = list(names)
        self.shapes = [tuple(s) for s in shapes]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int).tolist()
        self.numel = self.offsets[-1]
        self.device = device
        where = {n: i for i, n in enumerate(self.names)}
        self.units = list(units)
        self.unit_sizes = [g.size for g in self.units]
        # (tensor index, unit axis, first unit) of every parameter in a unit group, in order.
        self._unit_parts: list[tuple[int, int, int]] = []
        base = 0
        for g in self.units:
            for name, d in zip(g.params, g.dims, strict=True):
                self._unit_parts.append((where[name], d, base))
            base += g.size
        self.num_units = base
        self._index: tuple[torch.Tensor, torch.Tensor] | None = None
        if self.numel <= self.SMALL:
            self._index = (self.tensor_index, self._unit_index())

    def _unit_index(self) -> torch.Tensor:
        index = torch.zeros(self.numel, dtype=torch.long, device=self.device)
        for i, d, base in self._unit_parts:
            shape = self.shapes[i]
            if shape:
                view = [-1 if k == d else 1 for k in range(len(shape))]
                idx = torch.arange(shape[d], device=self.device).reshape(view).expand(shape)
                idx = idx.reshape(-1)
            else:
                idx = torch.zeros(1, dtype=torch.long, device=self.device)
            index[self.offsets[i] : self.offsets[i + 1]] = idx + base
        return index

    @classmethod
    def of(cls, model: nn.Module, device: torch.device) -> FlatSpace:
        params = dict(model.named_parameters())
        return cls(params, [p.shape for p in params.values()], unit_layout(model), device)

    @property
    def tensor_index(self) -> torch.Tensor:
        """(numel,) long: the tensor each flat entry belongs to (kept for small models only)."""
        if getattr(self, "_index", None) is not None:
            return self._index[0]  # type: ignore[index]
        return torch.repeat_interleave(
            torch.arange(len(self.names), device=self.device),
            torch.tensor(self.sizes, device=self.device),
        )

    def flatten(self, params: Params, dtype: torch.dtype | None = None) -> torch.Tensor:
        flat = torch.cat([params[n].detach().reshape(-1) for n in self.names])
        return flat.to(self.device, dtype or flat.dtype)

    def unflatten(self, flat: torch.Tensor) -> Params:
        """Views of ``flat`` shaped like the parameters (no copy)."""
        return {
            n: flat[o : o + k].view(shape)
            for n, o, k, shape in zip(
                self.names, self.offsets[:-1], self.sizes, self.shapes, strict=True
            )
        }

    def _blocks(self, flat: torch.Tensor, i: int) -> Iterator[torch.Tensor]:
        o, k = self.offsets[i], self.sizes[i]
        for a in range(o, o + k, self.BLOCK):
            yield flat[a : min(a + self.BLOCK, o + k)]

    def per_tensor(self, flat: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(self.names), dtype=torch.float64, device=flat.device)
        if self._index is not None:
            return out.index_add_(0, self._index[0], flat.double())
        for i in range(len(self.names)):
            for b in self._blocks(flat, i):
                out[i] += b.double().sum()
        return out

    def per_unit(self, flat: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(self.num_units, dtype=torch.float64, device=flat.device)
        if self._index is not None:
            return out.index_add_(0, self._index[1], flat.double())
        for i, d, base in self._unit_parts:
            shape = self.shapes[i]
            t = flat[self.offsets[i] : self.offsets[i + 1]].view(shape)
            if not shape:
                out[base] += t.double()
                continue
            other = [k for k in range(len(shape)) if k != d]
            per_unit = max(1, self.sizes[i] // max(1, shape[d]))
            step = max(1, self.BLOCK // per_unit)
            for a in range(0, shape[d], step):
                n = min(step, shape[d] - a)
                part = t.narrow(d, a, n).double()
                out[base + a : base + a + n] += part.sum(dim=other) if other else part
        return out

    def sign_summary(self, flat: torch.Tensor) -> torch.Tensor:
        """(3·L,) float64: per tensor, the count of A < 0, the count of A > 0, and max |A|."""
        n = len(self.names)
        if self._index is not None:
            index = self._index[0]
            neg = torch.zeros(n, dtype=torch.float64, device=flat.device)
            pos = torch.zeros(n, dtype=torch.float64, device=flat.device)
            top = torch.zeros(n, dtype=flat.dtype, device=flat.device)
            neg.index_add_(0, index, (flat < 0).double())
            pos.index_add_(0, index, (flat > 0).double())
            top.scatter_reduce_(0, index, flat.abs(), "amax")
            return torch.cat([neg, pos, top.double()])
        out = torch.zeros(3 * n, dtype=torch.float64, device=flat.device)
        for i in range(n):
            for b in self._blocks(flat, i):
                out[i] += torch.count_nonzero(b < 0)
                out[n + i] += torch.count_nonzero(b > 0)
                top = torch.linalg.vector_norm(b, float("inf")).double()
                out[2 * n + i] = torch.maximum(out[2 * n + i], top)
        return out

    def split_units(self, values: np.ndarray) -> dict[str, np.ndarray]:
        out, at = {}, 0
        for g in self.units:
            out[g.name] = values[at : at + g.size]
            at += g.size
        return out


def rounding_level(tensor_max: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Which tensors' LCA on a step is rounding noise: every |A| of the tensor lies below
    √eps(dtype) × the step's largest |A|.

    A parameter whose gradient is structurally zero (a convolution's bias right before
    BatchNorm, which subtracts it again) still gets a gradient of rounding size, so its A has a
    random sign: measured on ResNet-20 with Adam in float32 its largest |A| was 3–6·10⁻⁶ of the
    step's largest, with nothing of the kind in any tensor that really moves the loss (a whole
    tensor, not single entries, is judged, because single real entries can be that small).
    Such tensors count as neither helped nor hurt.
    """
    top = float(tensor_max.max()) if tensor_max.size else 0.0
    return tensor_max <= math.sqrt(torch.finfo(dtype).eps) * top


@dataclass
class _Segment:
    lca: torch.Tensor  # flat A
    loss_end: float
    grad_end: torch.Tensor | None  # flat ∇L(θ_end), reused as the next segment's start
    splits: int
    evaluations: int
    # (1-panel, 2-panel) Simpson A when an error estimate was asked for, else None.
    panels_1_2: tuple[torch.Tensor, torch.Tensor] | None = None
    # The held-out (validation) measurement set along the same path, when one is measured.
    val_lca: torch.Tensor | None = None
    val_loss_end: float | None = None
    val_grad_end: torch.Tensor | None = None
    val_evaluations: int = 0


def _integrate_flat(
    measurer: Measurer,
    space: FlatSpace,
    start: torch.Tensor,
    end: torch.Tensor,
    method: str,
    *,
    loss_start: float,
    grad_start: torch.Tensor | None,
    tolerance: float,
    estimate: bool = False,
    val: Measurer | None = None,
    val_loss_start: float | None = None,
    val_grad_start: torch.Tensor | None = None,
    adapt_on: str = "sum",
    param_tolerance: float = DEFAULT_PARAM_TOLERANCE,
    consume_start: bool = False,
) -> _Segment:
    """LCA of one flat segment; with ``estimate`` also Simpson's 1- and 2-panel results, whose
    difference estimates the per-parameter error (2 more evaluations unless already taken).

    A fixed rule with nothing else asked for takes the lean path (``_integrate_lean``): the same
    operations in the same order, with fewer parameter-sized buffers alive at once. There,
    ``consume_start`` lets it overwrite ``grad_start`` (the caller hands it over).

    With ``val`` (a second measurement set, the held-out split) the same nodes of the same path
    are measured on it too, and an adaptive method refines until *both* conservation errors are
    within ``tolerance`` (the LCA paper's rule). ``adapt_on="parameters"`` also requires the
    per-parameter estimate ‖A_coarse − A_fine‖ / ‖A_fine‖ between the last two refinement
    levels to be within ``param_tolerance`` (on every measured set); the finer result is kept.
    """
    if _takes_lean_path(method, estimate, val):
        return _integrate_lean(
            measurer, start, end, integrate.rule(method), grad_start, consume_start
        )
    rule = integrate.rule(method)
    evals0 = measurer.evaluations
    val_evals0 = val.evaluations if val is not None else 0
    delta = end - start
    grads: dict = {}
    vgrads: dict = {}

    def point(s) -> torch.Tensor:
        return start if s == 0 else end if s == 1 else torch.add(start, delta, alpha=float(s))

    def grad_at(s) -> torch.Tensor:
        return measurer.flat_grad(point(s))

    def vgrad_at(s) -> torch.Tensor:
        assert val is not None
        return val.flat_grad(point(s))

    if rule.uses_start or integrate.is_adaptive(method):
        grads[Fraction(0)] = grad_start if grad_start is not None else grad_at(0)
        if val is not None:
            vgrads[Fraction(0)] = val_grad_start if val_grad_start is not None else vgrad_at(0)
    # The end point is always measured: its loss closes the segment, its gradient opens the next.
    need_end_grad = rule.uses_start or rule.uses_end
    loss_end, g_end = measurer.flat_loss_and_grad(end, need_grad=need_end_grad)
    if need_end_grad:
        grads[Fraction(1)] = g_end
    val_loss_end, vg_end = None, None
    if val is not None:
        val_loss_end, vg_end = val.flat_loss_and_grad(end, need_grad=need_end_grad)
        if need_end_grad:
            vgrads[Fraction(1)] = vg_end

    def run(r: integrate.Rule, table: dict | None = None, at=None) -> torch.Tensor:
        table = grads if table is None else table
        at = grad_at if at is None else at
        acc = None
        for s, w in zip(r.nodes, r.weights, strict=True):
            if s not in table:
                table[s] = at(s)
            acc = table[s] * w if acc is None else acc.add_(table[s], alpha=w)
        return acc.mul_(delta)

    def run_val(r: integrate.Rule) -> torch.Tensor | None:
        return None if val is None else run(r, vgrads, vgrad_at)

    def conserved(a: torch.Tensor, lo: float, hi: float | None) -> bool:
        return not abs((hi - lo) - float(a.double().sum())) > tolerance

    lca, vlca = run(rule), run_val(rule)
    splits = 1
    if integrate.is_adaptive(method):
        prev = vprev = None
        for panels in integrate.refinements(method):
            ok = conserved(lca, loss_start, loss_end) and (
                vlca is None or conserved(vlca, val_loss_start, val_loss_end)
            )
            if ok and adapt_on == "parameters":
                ok = prev is not None and panel_error(prev, lca)[0] <= param_tolerance
                if ok and vlca is not None:
                    ok = panel_error(vprev, vlca)[0] <= param_tolerance
            if ok:
                break
            prev, vprev = lca, vlca
            fine = integrate.composite_simpson(panels)
            lca, vlca = run(fine), run_val(fine)
            splits = panels
    panels_1_2 = None
    if estimate:
        if Fraction(0) not in grads:
            grads[Fraction(0)] = grad_start if grad_start is not None else grad_at(0)
        if Fraction(1) not in grads:
            grads[Fraction(1)] = grad_at(1)
        one = lca if rule is integrate.SIMPSON and splits == 1 else run(integrate.SIMPSON)
        panels_1_2 = (one, run(integrate.composite_simpson(2)))
    return _Segment(
        lca,
        loss_end,
        g_end if need_end_grad else None,
        splits,
        measurer.evaluations - evals0,
        panels_1_2,
        val_lca=vlca,
        val_loss_end=val_loss_end,
        val_grad_end=vg_end if need_end_grad else None,
        val_evaluations=(val.evaluations - val_evals0) if val is not None else 0,
    )


def _takes_lean_path(method: str, estimate: bool, val: Measurer | None) -> bool:
    """Whether ``_integrate_flat`` integrates this segment with ``_integrate_lean``."""
    return not integrate.is_adaptive(method) and not estimate and val is None


def _integrate_lean(
    measurer: Measurer,
    start: torch.Tensor,
    end: torch.Tensor,
    rule: integrate.Rule,
    grad_start: torch.Tensor | None,
    consume_start: bool,
) -> _Segment:
    """A fixed rule's LCA, Δ · Σ_k w_k ∇L(θ_start + s_k Δ), holding as few parameter-sized
    buffers at once as the arithmetic allows (issue 15, ``benchmarks/memory.py``).

    The general path keeps Δ, every node's gradient and a fresh weighted sum until the end: for
    Simpson, 8 buffers besides θ_start and ∇L(θ_start). Here each interior gradient is added to
    the sum and dropped at once, one scratch buffer holds Δ and then each interior point in turn
    (Δ is recomputed, the same subtraction, where it is needed again), and the sum is built in
    ∇L(θ_start)'s own storage when the caller hands it over (``consume_start``) or in the first
    gradient this call made. The operations and their order are those of the general path
    (``acc = g₀·w₀``, then ``acc.add_(g_k, alpha=w_k)`` node by node, then ``acc.mul_(Δ)``, points
    ``torch.add(θ_start, Δ, alpha=s)``), so every value is bit for bit the same.
    """
    evals0 = measurer.evaluations
    need_end_grad = rule.uses_start or rule.uses_end
    loss_end, g_end = measurer.flat_loss_and_grad(end, need_grad=need_end_grad)
    acc: torch.Tensor | None = None
    scratch: torch.Tensor | None = None  # Δ, then a point on the segment, then Δ again

    def delta() -> torch.Tensor:
        nonlocal scratch
        scratch = end - start if scratch is None else torch.sub(end, start, out=scratch)
        return scratch

    for s, w in zip(rule.nodes, rule.weights, strict=True):
        own = True  # whether the gradient at this node may be overwritten
        if s == 0:
            g = grad_start
            own = consume_start
            if g is None:
                g, own = measurer.flat_grad(start), True
        elif s == 1:
            g, own = g_end, False  # the next segment's start gradient: kept as it is
        else:
            d = delta()
            g = measurer.flat_grad(torch.add(start, d, alpha=float(s), out=d))
        if acc is None:
            acc = g.mul_(w) if own else g * w
        else:
            acc.add_(g, alpha=w)
        del g
    assert acc is not None
    acc.mul_(delta())
    del scratch
    return _Segment(
        acc, loss_end, g_end if need_end_grad else None, 1, measurer.evaluations - evals0
    )


def panel_error(
    one: torch.Tensor, two: torch.Tensor, keep: torch.Tensor | None = None
) -> tuple[float, float]:
    """(‖A₁ − A₂‖ / ‖A₂‖, fraction of parameters where A₁ and A₂ have the same sign) between
    1-panel and 2-panel Simpson: the per-parameter error estimate of rk4 on one step.

    The sign fraction counts parameters where either result is non-zero; ``keep`` (bool, flat)
    restricts both figures to some parameters (e.g. leaving out rounding-level tensors).
    """
    if keep is not None:
        one, two = one[keep], two[keep]
    one, two = one.double(), two.double()
    norm = float(two.norm())
    rel = float((one - two).norm()) / norm if norm > 0 else 0.0
    moved = (one != 0) | (two != 0)
    count = int(moved.sum())
    same = int((torch.sign(one[moved]) == torch.sign(two[moved])).sum()) if count else 0
    return rel, (same / count if count else 1.0)


@dataclass
class SegmentResult:
    """LCA of one segment as per-tensor dicts (the dict-level face of the flat core)."""

    per_param: Params
    loss_end: float
    grad_end: Params | None
    splits: int
    evaluations: int
    per_tensor: np.ndarray  # float64, model order


def integrate_segment(
    measurer: Measurer,
    start: Params,
    end: Params,
    method: str = "rk4",
    *,
    loss_start: float,
    grad_start: Params | None = None,
    tolerance: float = integrate.DEFAULT_TOLERANCE,
) -> SegmentResult:
    """LCA of start → end with ``method``, reusing ``grad_start`` when the rule needs it."""
    model = measurer.model
    space = FlatSpace.of(model, measurer.device)
    dtype = measurer.dtype
    seg = _integrate_flat(
        measurer,
        space,
        space.flatten(start, dtype),
        space.flatten(end, dtype),
        method,
        loss_start=loss_start,
        grad_start=None if grad_start is None else space.flatten(grad_start, dtype),
        tolerance=tolerance,
    )
    return SegmentResult(
        per_param=space.unflatten(seg.lca),
        loss_end=seg.loss_end,
        grad_end=None if seg.grad_end is None else space.unflatten(seg.grad_end),
        splits=seg.splits,
        evaluations=seg.evaluations,
        per_tensor=space.per_tensor(seg.lca).cpu().numpy(),
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
    if rule.uses_start or integrate.is_adaptive(method):
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


def model_layout(
    model: nn.Module,
    *,
    method: str = "rk4",
    dtype: str = "float32",
    measure_size: int = 0,
    series: dict[str, tuple[str, tuple[int, ...]]] | None = None,
    events: dict[str, tuple[str, ...]] | None = None,
    arrays: dict[str, tuple[str, tuple[int, ...], float]] | None = None,
) -> Layout:
    """The layout of a run of ``model`` (its tensors and units), e.g. of a model built on the
    meta device, to size or write a run file before (or without) training anything."""
    named = list(model.named_parameters())
    return Layout(
        names=tuple(n for n, _ in named),
        shapes=tuple(tuple(p.shape) for _, p in named),
        units=tuple(unit_layout(model)),
        method=method,
        dtype=dtype,
        measure_size=measure_size,
        series=dict(series or {}),
        events=dict(events or {}),
        arrays=dict(arrays or {}),
    )


KIND_STEP, KIND_INTERVENTION = 0, 1

# Per-step series of the per-parameter error estimate (Tracker(error_every=k)): the relative
# norm ‖A₁ − A₂‖/‖A₂‖ and the sign-agreement fraction of 1- vs 2-panel Simpson; NaN on steps
# that were not sampled. Stored by the writer like any declared series (/series/lca/...).
ERROR_REL = "lca/panel_error_rel"
ERROR_SIGNS = "lca/panel_sign_agreement"
ERROR_SERIES: dict[str, tuple[str, tuple[int, ...]]] = {
    ERROR_REL: ("f8", ()),
    ERROR_SIGNS: ("f8", ()),
}

# LCA of the held-out loss (Tracker(val_data=...)): the same path measured on a second, held-out
# measurement set. Per-step series (stored at /series/lca_val/...): the held-out loss at each
# segment's end, ΣA_val, ΔL_val − ΣA_val, the helped and hurt fractions, and the per-tensor sums.
# Fixed arrays (stored at /lca_val/...): L_val(θ_0) and each weight's running Σ_t A_val (flat, in
# model order), overwritten every segment.
VAL_LOSS = "lca_val/loss"
VAL_LCA = "lca_val/lca"
VAL_ERROR = "lca_val/error"
VAL_HELPED = "lca_val/helped"
VAL_HURT = "lca_val/hurt"
VAL_LAYERS = "lca_val/layers"
VAL_LOSS0 = "lca_val/loss0"
VAL_TOTAL = "lca_val/total"


def val_series(num_tensors: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The per-step series a tracker with a held-out measurement set declares."""
    one: tuple[int, ...] = ()
    return {
        VAL_LOSS: ("f8", one),
        VAL_LCA: ("f8", one),
        VAL_ERROR: ("f8", one),
        VAL_HELPED: ("f8", one),
        VAL_HURT: ("f8", one),
        VAL_LAYERS: ("f8", (num_tensors,)),
    }


def val_arrays(num_params: int) -> dict[str, tuple[str, tuple[int, ...], float]]:
    """The fixed arrays a tracker with a held-out measurement set declares."""
    return {VAL_LOSS0: ("f8", (), math.nan), VAL_TOTAL: ("f8", (num_params,), 0.0)}


def tracker_declarations(
    num_tensors: int,
    num_params: int,
    series: dict[str, tuple[str, tuple[int, ...]]] | None = None,
    arrays: dict[str, tuple[str, tuple[int, ...], float]] | None = None,
    *,
    val: bool = False,
    error_every: int = 0,
) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, tuple[str, tuple[int, ...], float]]]:
    """(series, arrays) of a Tracker's layout: the caller's, plus the held-out set's (``val``)
    and the per-parameter error estimate's (``error_every`` > 0). One place, so that a size
    estimate made before anything trains (``lca.jobs.estimate_bytes``) counts what a run writes."""
    series = dict(series or {})
    arrays = dict(arrays or {})
    if val:
        series.update(val_series(num_tensors))
        arrays.update(val_arrays(num_params))
    if error_every > 0:
        series.update(ERROR_SERIES)
    return series, arrays


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
    helped: float  # fraction of parameters with A < 0 (rounding-level tensors left out)
    hurt: float  # fraction with A > 0 (likewise)
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
        error_every: int = 0,
        val_data=None,
        adapt_on: str = "sum",
        param_tolerance: float = DEFAULT_PARAM_TOLERANCE,
    ) -> None:
        integrate.rule(method)  # validates the name
        if adapt_on not in integrate.ADAPT_ON:
            raise ValueError(
                f"adapt_on must be one of {', '.join(integrate.ADAPT_ON)}, not {adapt_on!r}."
            )
        self.adapt_on = adapt_on
        self.param_tolerance = float(param_tolerance)
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
        # The held-out measurement set (validation split), measured along the same path.
        self.val_measurer: Measurer | None = (
            None
            if val_data is None
            else Measurer(
                model, loss_fn, val_data, chunk_size=chunk_size, dtype=dtype, device=device
            )
        )
        series, arrays = tracker_declarations(
            len(params),
            sum(p.numel() for p in params.values()),
            series,
            arrays,
            val=self.val_measurer is not None,
            error_every=error_every,
        )
        self.layout = Layout(
            names=tuple(params),
            shapes=tuple(tuple(p.shape) for p in params.values()),
            units=tuple(self.units),
            method=method,
            dtype=str(dtype).replace("torch.", ""),
            measure_size=self.measurer.size,
            series=series,
            events=dict(events or {}),
            arrays=arrays,
        )
        self.space = FlatSpace(
            self.layout.names, self.layout.shapes, self.units, self.measurer.device
        )
        # Give the pages a step freed back to the OS after each segment (lca.memory): only for
        # models whose step buffers are big enough for it to matter; settable per tracker.
        self.release_memory = self.space.numel * dtype.itemsize >= RELEASE_MIN_BYTES
        self.keep_cumulative = keep_cumulative
        # Every error_every-th optimizer step (the 1st, (k+1)-th, …) also gets Simpson's 1- vs
        # 2-panel per-parameter error estimate in ERROR_SERIES; 0: never.
        self.error_every = int(error_every)
        self._cumulative: torch.Tensor | None = None
        self.cumulative: Params = {}  # name -> running ΣA (views of one flat vector)
        self.history: list[dict[str, float]] = []  # small per-segment scalars, for notebooks
        self.last: StepRecord | None = None
        self.train_steps = 0
        self.loss0: float | None = None
        self._theta: torch.Tensor | None = None  # flat θ at the end of the last segment
        self._grad: torch.Tensor | None = None  # flat ∇L there (the next segment's start)
        self._loss: float | None = None
        self._val_loss: float | None = None  # held-out loss and gradient at the last θ
        self._val_grad: torch.Tensor | None = None
        self._val_cumulative: torch.Tensor | None = None  # running Σ A_val, flat
        self._t0 = time.perf_counter()
        self._closed = False

    # -- state ------------------------------------------------------------------------------
    def _snapshot(self) -> torch.Tensor:
        """θ now, flat, as the forward pass uses it (through ``effective``), a copy."""
        params = {n: p.detach() for n, p in self.model.named_parameters()}
        if self.effective is not None:
            params = self.effective(params)
        return self.space.flatten(params, self.measurer.dtype)

    def start(self) -> None:
        """Measure L(θ_0) and open the record; called by the first step if not before."""
        if self._theta is not None:
            return
        self._theta = self._snapshot()
        rule = integrate.rule(self.method)
        need_grad = rule.uses_start or integrate.is_adaptive(self.method)
        self._loss, self._grad = self.measurer.flat_loss_and_grad(self._theta, need_grad=need_grad)
        self.loss0 = self._loss
        if not math.isfinite(self._loss):
            raise NonFiniteLossError(f"The initial loss is {self._loss}; nothing was recorded.")
        if self.val_measurer is not None:
            self._val_loss, self._val_grad = self.val_measurer.flat_loss_and_grad(
                self._theta, need_grad=need_grad
            )
        if self.writer is not None:
            self.writer.begin(self.layout, self._loss)
            if self.val_measurer is not None and hasattr(self.writer, "set_array"):
                self.writer.set_array(VAL_LOSS0, np.float64(self._val_loss))

    def params_at_last_segment(self) -> Params:
        """θ where the last segment ended (name -> view), e.g. for saving weights."""
        return self.space.unflatten(self._theta)

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
            if not torch.equal(now, self._theta):
                self._segment(now, KIND_INTERVENTION, "outside", {})
            del now  # not kept through the step: a θ-sized buffer (4 B per parameter)
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

    def _segment(self, end: torch.Tensor, kind: int, label: str, row: dict[str, object]) -> None:
        t0 = time.perf_counter()
        estimate = (
            kind == KIND_STEP
            and self.error_every > 0
            and (self.train_steps - 1) % self.error_every == 0
        )
        # ∇L(θ_start) is handed over: the lean path builds this step's A in its storage. If the
        # step fails after that, the next one measures ∇L(θ_start) again (the same values).
        grad_start, self._grad = self._grad, None
        try:
            seg = _integrate_flat(
                self.measurer,
                self.space,
                self._theta,
                end,
                self.method,
                loss_start=self._loss,
                grad_start=grad_start,
                tolerance=self.tolerance,
                estimate=estimate,
                val=self.val_measurer,
                val_loss_start=self._val_loss,
                val_grad_start=self._val_grad,
                adapt_on=self.adapt_on,
                param_tolerance=self.param_tolerance,
                consume_start=True,
            )
        except BaseException:
            if not _takes_lean_path(self.method, estimate, self.val_measurer):
                self._grad = grad_start  # untouched on the general path
            raise
        del grad_start
        index = len(self.history)
        if not math.isfinite(seg.loss_end):
            raise NonFiniteLossError(
                f"The loss became {seg.loss_end} at step {self.train_steps}; "
                f"the {index} segments before it are kept."
            )
        lca = seg.lca
        count = self.layout.num_params
        # Everything the host needs from this step, in one device-to-host copy.
        n_layers = len(self.layout.names)
        summary = (
            torch.cat(
                [
                    self.space.per_tensor(lca),
                    self.space.per_unit(lca),
                    self.space.sign_summary(lca),
                ]
            )
            .cpu()
            .numpy()
        )
        per_tensor = summary[:n_layers]
        per_unit = self.space.split_units(summary[n_layers : -3 * n_layers])
        neg, pos, tensor_max = summary[-3 * n_layers :].reshape(3, n_layers)
        # Tensors at rounding level (structurally zero gradients) neither help nor hurt.
        noise = rounding_level(tensor_max, lca.dtype)
        helped, hurt = int(neg[~noise].sum()), int(pos[~noise].sum())
        if seg.panels_1_2 is not None:
            keep = None
            if noise.any():
                keep = torch.from_numpy(~noise).to(lca.device)[self.space.tensor_index]
            rel, same = panel_error(*seg.panels_1_2, keep)
            row = {**row, ERROR_REL: rel, ERROR_SIGNS: same}
        if seg.val_lca is not None:
            row = {**row, **self._val_row(seg, count)}
        if self.keep_cumulative:
            if self._cumulative is None:
                self._cumulative = lca.clone()
                self.cumulative = self.space.unflatten(self._cumulative)
            else:
                self._cumulative.add_(lca)
        now = time.perf_counter()
        record = StepRecord(
            index=index,
            kind=kind,
            train_step=self.train_steps,
            label=label,
            loss_start=self._loss,
            loss_end=seg.loss_end,
            per_param=self.space.unflatten(lca),
            per_tensor=per_tensor,
            per_unit=per_unit,
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
        if seg.val_lca is not None:
            self._val_grad, self._val_loss = seg.val_grad_end, seg.val_loss_end
            self.history[-1]["val_lca"] = float(row[VAL_LCA])
            self.history[-1]["val_error"] = float(row[VAL_ERROR])
        self.last = record
        if self.writer is not None:
            if self._val_cumulative is not None and hasattr(self.writer, "set_array"):
                self.writer.set_array(VAL_TOTAL, self._val_cumulative)
            self.writer.append(record)
        if self.release_memory:
            release_free_memory()

    def _val_row(self, seg: _Segment, count: int) -> dict[str, object]:
        """The held-out set's per-step series of one segment (and its running per-weight sum)."""
        vlca = seg.val_lca
        assert vlca is not None and seg.val_loss_end is not None and self._val_loss is not None
        n_layers = len(self.layout.names)
        summary = (
            torch.cat([self.space.per_tensor(vlca), self.space.sign_summary(vlca)]).cpu().numpy()
        )
        per_tensor = summary[:n_layers]
        neg, pos, tensor_max = summary[n_layers:].reshape(3, n_layers)
        noise = rounding_level(tensor_max, vlca.dtype)
        total = math.fsum(per_tensor.tolist())
        if self._val_cumulative is None:
            self._val_cumulative = vlca.double().clone()
        else:
            self._val_cumulative.add_(vlca.double())
        return {
            VAL_LOSS: seg.val_loss_end,
            VAL_LCA: total,
            VAL_ERROR: (seg.val_loss_end - self._val_loss) - total,
            VAL_HELPED: float(neg[~noise].sum()) / count,
            VAL_HURT: float(pos[~noise].sum()) / count,
            VAL_LAYERS: per_tensor,
        }

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
        self.close(exit_status(exc_type))
