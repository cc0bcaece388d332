"""``lca train --pack N``: N models of one config, seeds seed … seed+N−1, trained in one process.

Each model is its own training loop (``lca.train.build``) with its own Tracker and run file
``OUT-i.h5``; the loops advance in lock-step, one optimizer step each in turn, so the files
grow together and a sweep over seeds can be watched and compared (Compare page) while it runs.
Each loop keeps its own torch random-number state across the interleaving, so every packed
model is step for step the model that ``lca train --seed seed+i`` trains alone.

Stacked training (``stack=True``, the default, for models without techniques, BatchNorm or
dropout): each step's N minibatch gradients come from one ``torch.func.vmap``-ed
forward/backward over the N stacked parameter sets (Liu et al.'s packing), then each model's own
optimizer steps. The LCA measurement is stacked too (``stack_measurement=True``): every model's
optimizer step is taken first (its new θ kept aside, the old one put back), then the
measurement-set loss and gradient at each quadrature node (Simpson: the end point and the
midpoint) come for all N models from one vmap-ed call per measurement chunk
(``StackedMeasurement``); the per-model results are handed to each model's own Tracker through
a ``Prefilled`` stand-in for its Measurer, and each Tracker then records its step as usual, in
its own run file. Nodes the stacked call did not provide (adaptive refinements, the error
estimate's extra nodes) are measured by the model's own Measurer. A step's ``seconds_lca`` in
the file then counts only the bookkeeping: the stacked evaluations happen before it.
Stacked gradients round differently from one model's own backward (batched matmuls), so a
stacked model equals the model trained alone to float tolerance, not bit for bit
(``stack=False`` gives bit-identical models).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from . import integrate
from .allocate import NonFiniteLossError
from .config import RunConfig
from .measure import Measurer, measurement_mode, no_tf32
from .threads import using_config_threads
from .train import (
    Loop,
    RunResult,
    _close_quietly,
    _failure_message,
    _steps_kept,
    build,
    schedule_factor,
)

__all__ = [
    "Prefilled",
    "StackedMeasurement",
    "StackedStep",
    "pack_configs",
    "pack_path",
    "run_pack",
    "stackable",
]


def pack_path(out: str | Path, index: int) -> Path:
    """``runs/sweep.h5`` -> ``runs/sweep-3.h5`` for the pack's model ``index``."""
    out = Path(out)
    return out.with_name(f"{out.stem}-{index}{out.suffix or '.h5'}")


def pack_configs(config: RunConfig, out: str | Path | None = None) -> list[RunConfig]:
    """The pack's N configs: seed + i, pack_index i, out ``pack_path(out, i)`` (None: no files)."""
    out = out if out is not None else config.out
    return [
        replace(
            config,
            seed=config.seed + i,
            pack_index=i,
            out=None if out is None else str(pack_path(out, i)),
        )
        for i in range(config.pack)
    ]


class _RandomState:
    """One loop's torch RNG state, swapped in while that loop steps (dropout, techniques)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.cpu_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state(device) if self.cuda else None
        self.device = device

    @contextlib.contextmanager
    def active(self):
        torch.set_rng_state(self.cpu_state)
        if self.cuda:
            torch.cuda.set_rng_state(self.cuda_state, self.device)
        try:
            yield
        finally:
            self.cpu_state = torch.get_rng_state()
            if self.cuda:
                self.cuda_state = torch.cuda.get_rng_state(self.device)


def stackable(loops: list[Loop]) -> bool:
    """Whether one vmap-ed forward/backward can serve these loops: no techniques, one process,
    the same parameter shapes, and no BatchNorm (running statistics) or dropout (random)."""
    if not loops or any(loop.hooks or loop.dist_ctx is not None for loop in loops):
        return False
    shapes = {
        tuple((n, tuple(p.shape)) for n, p in loop.ctx.model.named_parameters()) for loop in loops
    }
    unstackable = (nn.modules.batchnorm._BatchNorm, nn.Dropout)
    return len(shapes) == 1 and not any(
        isinstance(m, unstackable) for loop in loops for m in loop.ctx.model.modules()
    )


class StackedStep:
    """Each loop's minibatch loss and gradient for one step from one vmap-ed call; the loops'
    ``forward``/``backward`` then hand these over instead of computing their own."""

    def __init__(self, loops: list[Loop]) -> None:
        self.loops = loops
        self.template = loops[0].ctx.model
        self.names = [n for n, _ in self.template.named_parameters()]
        self.losses: torch.Tensor | None = None
        self.grads: dict[str, torch.Tensor] = {}
        for i, loop in enumerate(loops):
            loop.forward = lambda step, i=i, loop=loop: self.forward(loop, i, step)
            loop.backward = lambda loss, loop=loop, i=i: self.backward(loop, i)

    def compute(self, active: list[int]) -> None:
        """The gradients of the loops ``active`` (their next minibatches drawn here)."""
        params = {
            n: torch.stack(
                [dict(self.loops[i].ctx.model.named_parameters())[n].detach() for i in active]
            )
            for n in self.names
        }
        xs, ys = [], []
        for i in active:
            ctx = self.loops[i].ctx
            idx = next(self.loops[i].batches)
            ctx.batch = (ctx.train_x[idx], ctx.train_y[idx])
            xs.append(ctx.batch[0])
            ys.append(ctx.batch[1])
        model, loss_fn = self.template, self.loops[0].ctx.loss_fn
        model.train()

        def loss_of(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return loss_fn(functional_call(model, p, (x,)).float(), y)

        grads, losses = vmap(grad_and_value(loss_of), randomness="error")(
            params, torch.stack(xs), torch.stack(ys)
        )
        self.slot = {i: k for k, i in enumerate(active)}
        self.grads, self.losses = grads, losses

    def forward(self, loop: Loop, i: int, step: int) -> tuple[torch.Tensor, float]:
        ctx = loop.ctx
        lr_now = schedule_factor(loop.config, step) * ctx.lr_factor
        for g, base in zip(ctx.optimizer.param_groups, loop.base_lrs, strict=True):
            g["lr"] = base * lr_now
        ctx.model.train()
        loss = self.losses[self.slot[i]]
        train_loss = float(loss)
        if not math.isfinite(train_loss):
            raise NonFiniteLossError(
                f"The training loss became {train_loss} at step {step + 1}, so the run "
                "stopped with every step before it kept; lower the learning rate."
            )
        return loss, train_loss

    def backward(self, loop: Loop, i: int) -> None:
        loop.ctx.optimizer.zero_grad(set_to_none=True)
        k = self.slot[i]
        for n, p in loop.ctx.model.named_parameters():
            p.grad = self.grads[n][k].clone()


class Prefilled:
    """A Measurer stand-in that answers from values computed ahead (by a stacked call) when
    asked at exactly the same point (bit for bit), and asks the real Measurer otherwise.

    Each answer counts as one evaluation of the real Measurer, so the Tracker's bookkeeping
    (evaluations per segment) is what it would be without stacking.
    """

    def __init__(self, inner: Measurer) -> None:
        self.inner = inner
        self._ready: list[tuple[torch.Tensor, float, torch.Tensor]] = []

    def __getattr__(self, name: str):  # everything else is the real Measurer's
        return getattr(self.inner, name)

    def put(self, point: torch.Tensor, loss: float, grad: torch.Tensor) -> None:
        self._ready.append((point, loss, grad))

    def clear(self) -> None:
        self._ready.clear()

    def _take(self, point: torch.Tensor) -> tuple[float, torch.Tensor] | None:
        for k, (p, loss, grad) in enumerate(self._ready):
            if p.shape == point.shape and torch.equal(p, point):
                del self._ready[k]
                return loss, grad
        return None

    def flat_loss_and_grad(
        self, flat: torch.Tensor, *, need_grad: bool = True
    ) -> tuple[float, torch.Tensor | None]:
        hit = self._take(flat)
        if hit is None:
            return self.inner.flat_loss_and_grad(flat, need_grad=need_grad)
        if need_grad:
            self.inner.evaluations += 1
        else:
            self.inner.loss_evaluations += 1
        return hit[0], (hit[1] if need_grad else None)

    def flat_grad(self, flat: torch.Tensor) -> torch.Tensor:
        hit = self._take(flat)
        if hit is None:
            return self.inner.flat_grad(flat)
        self.inner.evaluations += 1
        return hit[1]


class StackedMeasurement:
    """The measurement-set loss and gradient of N models at N points in one vmap-ed call per
    measurement chunk, as each model's own Measurer would compute them (same chunks, same
    per-chunk weights, loss·weight differentiated, float64 loss sum)."""

    def __init__(self, loops: list[Loop]) -> None:
        self.loops = loops
        self.proxies: list[Prefilled] = []
        for loop in loops:
            proxy = Prefilled(loop.tracker.measurer)
            loop.tracker.measurer = proxy
            self.proxies.append(proxy)
        first = self.proxies[0].inner
        self.template = loops[0].ctx.model
        self.loss_fn = first.loss_fn
        self.layout = first._flat_layout
        self.weights = first._weights
        self.rule = integrate.rule(loops[0].tracker.method)
        self._data: tuple[tuple[int, ...], list] | None = None  # (active, stacked chunks)

    def _stacked_chunks(self, active: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each chunk's inputs and targets of the ``active`` models, stacked (kept while the
        same models are active: the measurement set never changes)."""
        key = tuple(active)
        if self._data is None or self._data[0] != key:
            ms = [self.proxies[i].inner for i in active]
            chunks = [
                (
                    torch.stack([m._chunks[c][0] for m in ms]),
                    torch.stack([m._chunks[c][1] for m in ms]),
                )
                for c in range(len(self.weights))
            ]
            self._data = (key, chunks)
        return self._data[1]

    @staticmethod
    def usable(loops: list[Loop]) -> bool:
        """Whether every model measures the same number of equally sized chunks (the same
        config up to the seed, so it does) with the same rule and dtype."""
        ms = [loop.tracker.measurer for loop in loops]
        shapes = {
            (
                tuple((tuple(x.shape), tuple(y.shape)) for x, y in m._chunks),
                tuple(m._weights),
                m.dtype,
                loop.tracker.method,
            )
            for m, loop in zip(ms, loops, strict=True)
        }
        return len(shapes) == 1 and not any(m.sharded for m in ms)

    def evaluate(
        self, active: list[int], points: list[torch.Tensor]
    ) -> tuple[list[float], torch.Tensor]:
        """(loss per model, stacked flat gradients (len(active), P)) at ``points``."""
        model, loss_fn, layout = self.template, self.loss_fn, self.layout
        measurers = [self.proxies[i].inner for i in active]
        flats = torch.stack(points).detach()
        buffers = [m._buffers() for m in measurers]
        stacked_buffers = {n: torch.stack([b[n] for b in buffers]) for n in buffers[0]}
        total = torch.zeros(len(active), dtype=torch.float64, device=flats.device)
        grad = torch.zeros_like(flats)
        chunks = self._stacked_chunks(active)
        with no_tf32(), measurement_mode(model):
            for (xs, ys), w in zip(chunks, self.weights, strict=True):

                def weighted_loss(flat, bufs, x, y, w=w):  # noqa: ANN001, ANN202
                    views = {n: flat[o : o + k].view(shape) for n, o, k, shape in layout}
                    return loss_fn(functional_call(model, {**views, **bufs}, (x,)), y) * w

                g, loss = vmap(grad_and_value(weighted_loss), randomness="error")(
                    flats, stacked_buffers, xs, ys
                )
                grad.add_(g)
                total.add_(loss.detach().double())
        return total.tolist(), grad

    def prefill(self, active: list[int], ends: dict[int, torch.Tensor]) -> None:
        """Compute, for every model in ``active``, what its Tracker will ask for on the
        segment from its last θ to ``ends[i]``: loss and gradient at the end point and the
        gradient at the rule's interior nodes, one stacked call per node."""
        starts = {i: self.loops[i].tracker._theta for i in active}
        nodes = [s for s in self.rule.nodes if s != 0 and s != 1] + [1]
        for s in nodes:
            points = []
            for i in active:
                start, end = starts[i], ends[i]
                # the very expression _integrate_flat evaluates, so the points match bit for bit
                points.append(end if s == 1 else torch.add(start, end - start, alpha=float(s)))
            losses, grads = self.evaluate(active, points)
            for k, i in enumerate(active):
                self.proxies[i].put(points[k], losses[k], grads[k])

    def clear(self) -> None:
        for p in self.proxies:
            p.clear()


class PreStepped:
    """Takes every model's optimizer step ahead of its Tracker (new θ kept aside, old θ put
    back), so the stacked measurement knows all N segments before any Tracker measures; the
    loop's own optimizer step then only puts the new θ in place."""

    def __init__(self, loops: list[Loop], stacked: StackedStep) -> None:
        self.loops = loops
        self.stacked = stacked
        self.new: dict[int, list[torch.Tensor]] = {}
        for i, loop in enumerate(loops):
            loop.hooks.optimizer_step = lambda ctx, i=i: self.apply(i)  # this loop's hooks only

    @torch.no_grad()
    def step_ahead(self, active: list[int], step: int) -> dict[int, torch.Tensor]:
        """Each finite model's optimizer step; returns its new θ as its Tracker will read it."""
        ends: dict[int, torch.Tensor] = {}
        self.new.clear()
        for i in active:
            loop = self.loops[i]
            k = self.stacked.slot[i]
            if not math.isfinite(float(self.stacked.losses[k])):
                continue  # the loop's own forward reports it and ends this model
            ctx = loop.ctx
            lr_now = schedule_factor(loop.config, step) * ctx.lr_factor
            for g, base in zip(ctx.optimizer.param_groups, loop.base_lrs, strict=True):
                g["lr"] = base * lr_now
            params = list(ctx.model.parameters())
            names = [n for n, _ in ctx.model.named_parameters()]
            old = [p.detach().clone() for p in params]
            for n, p in zip(names, params, strict=True):
                p.grad = self.stacked.grads[n][k].clone()
            ctx.optimizer.step()
            self.new[i] = [p.detach().clone() for p in params]
            ends[i] = loop.tracker._snapshot()  # θ_{t+1} exactly as the Tracker will read it
            for p, o in zip(params, old, strict=True):
                p.copy_(o)
        return ends

    @torch.no_grad()
    def apply(self, i: int) -> None:
        for p, v in zip(self.loops[i].ctx.model.parameters(), self.new.pop(i), strict=True):
            p.copy_(v)


@using_config_threads
def run_pack(
    config: RunConfig,
    *,
    out: str | Path | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    overwrite: bool = False,
    stack: bool = True,
    stack_measurement: bool = True,
) -> list[RunResult]:
    """Train the pack; one RunResult per model, in pack order.

    A model whose loss stops being finite ends alone (status ``failed``, its steps kept); the
    others go on. Ctrl-C or ``should_stop()`` ends every model with status ``interrupted``.
    ``progress(step, total, mean train loss of the models still training)`` after each step.
    ``stack``: one vmap-ed forward/backward for all N when ``stackable`` (else each its own);
    ``stack_measurement``: with ``stack``, the LCA measurement stacked too.
    """
    configs = pack_configs(config, out)
    loops: list[Loop] = []
    states: list[_RandomState] = []
    ended: dict[int, tuple[str, str]] = {}
    stacked: StackedStep | None = None
    measure: StackedMeasurement | None = None
    ahead: PreStepped | None = None
    try:
        for c in configs:
            loop = build(c, c.out, overwrite=overwrite)
            loops.append(loop)
            states.append(_RandomState(loop.ctx.device))
        for i, loop in enumerate(loops):
            with states[i].active():
                try:
                    loop.start()
                except NonFiniteLossError as e:
                    ended[i] = ("failed", _failure_message(e, loop.tracker))
        if stack and stackable(loops):
            stacked = StackedStep(loops)
            if stack_measurement and StackedMeasurement.usable(loops):
                measure = StackedMeasurement(loops)
                ahead = PreStepped(loops, stacked)
        for step in range(config.steps):
            if should_stop is not None and should_stop():
                for i in range(len(loops)):
                    ended.setdefault(i, ("interrupted", f"Stopped by the user after {step} steps."))
                break
            losses = []
            if stacked is not None:
                active = [i for i in range(len(loops)) if i not in ended]
                stacked.compute(active)
                if measure is not None and ahead is not None:
                    ends = ahead.step_ahead(active, step)
                    if ends:
                        measure.prefill(list(ends), ends)
            for i, loop in enumerate(loops):
                if i in ended:
                    continue
                with states[i].active():
                    try:
                        losses.append(loop.step(step))
                    except NonFiniteLossError as e:
                        ended[i] = ("failed", _failure_message(e, loop.tracker))
            if measure is not None:
                measure.clear()  # nothing left over for a model that ended on this step
            if len(ended) == len(loops):
                break
            if progress is not None and losses:
                progress(step + 1, config.steps, sum(losses) / len(losses))
    except KeyboardInterrupt as e:
        what = getattr(e, "what", "Interrupted")
        for i, loop in enumerate(loops):
            ended.setdefault(i, ("interrupted", f"{what} after {_steps_kept(loop.tracker)} steps."))
    except BaseException:
        for loop in loops:
            if loop.ctx.tracker is not None:
                _close_quietly(loop.tracker, "failed")
        raise
    return [loop.finish(*ended.get(i, ("complete", ""))) for i, loop in enumerate(loops)]
