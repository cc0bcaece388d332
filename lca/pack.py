"""``lca train --pack N``: N models of one config, seeds seed … seed+N−1, trained in one process.

Each model is its own training loop (``lca.train.build``) with its own Tracker and run file
``OUT-i.h5``; the loops advance in lock-step, one optimizer step each in turn, so the files
grow together and a sweep over seeds can be watched and compared (Compare page) while it runs.
Each loop keeps its own torch random-number state across the interleaving, so every packed
model is step for step the model that ``lca train --seed seed+i`` trains alone.

Stacked training (``stack=True``, the default, for models without techniques, BatchNorm or
dropout): each step's N minibatch gradients come from one ``torch.func.vmap``-ed
forward/backward over the N stacked parameter sets (Liu et al.'s packing), then each model's own
optimizer steps and its own Tracker measures the LCA. The LCA measurement itself is **not**
stacked: each Tracker measures on its own, so the pack saves the training forward/backward
overhead, not the measurement's; ``benchmarks/pack.py`` measures what that gives. Stacked
gradients round differently from one model's own backward (batched matmuls), so a stacked
model equals the model trained alone to float tolerance, not bit for bit (``stack=False``
gives bit-identical models).
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

from .allocate import NonFiniteLossError
from .config import RunConfig
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

__all__ = ["StackedStep", "pack_configs", "pack_path", "run_pack", "stackable"]


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


@using_config_threads
def run_pack(
    config: RunConfig,
    *,
    out: str | Path | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    overwrite: bool = False,
    stack: bool = True,
) -> list[RunResult]:
    """Train the pack; one RunResult per model, in pack order.

    A model whose loss stops being finite ends alone (status ``failed``, its steps kept); the
    others go on. Ctrl-C or ``should_stop()`` ends every model with status ``interrupted``.
    ``progress(step, total, mean train loss of the models still training)`` after each step.
    ``stack``: one vmap-ed forward/backward for all N when ``stackable`` (else each its own).
    """
    configs = pack_configs(config, out)
    loops: list[Loop] = []
    states: list[_RandomState] = []
    ended: dict[int, tuple[str, str]] = {}
    stacked: StackedStep | None = None
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
        for step in range(config.steps):
            if should_stop is not None and should_stop():
                for i in range(len(loops)):
                    ended.setdefault(i, ("interrupted", f"Stopped by the user after {step} steps."))
                break
            losses = []
            if stacked is not None:
                stacked.compute([i for i in range(len(loops)) if i not in ended])
            for i, loop in enumerate(loops):
                if i in ended:
                    continue
                with states[i].active():
                    try:
                        losses.append(loop.step(step))
                    except NonFiniteLossError as e:
                        ended[i] = ("failed", _failure_message(e, loop.tracker))
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
