"""``lca train --pack N``: N models of one config, seeds seed … seed+N−1, trained in one process.

Each model is its own training loop (``lca.train.build``) with its own Tracker and run file
``OUT-i.h5``; the loops advance in lock-step, one optimizer step each in turn, so the files
grow together and a sweep over seeds can be watched and compared (Compare page) while it runs.
Each loop keeps its own torch random-number state across the interleaving, so every packed
model is step for step the model that ``lca train --seed seed+i`` trains alone.

What this is not (yet): Liu et al.'s stacked packing, where the N parameter sets are stacked
(``torch.func.stack_module_state``) and one ``vmap``-ed forward/backward serves all N. Here the
N models share the process, the data loading and the warm-up, but each forward, backward and
LCA measurement runs on its own; ``benchmarks/pack.py`` measures what that gives.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from .allocate import NonFiniteLossError
from .config import RunConfig
from .threads import using_config_threads
from .train import Loop, RunResult, _close_quietly, _failure_message, _steps_kept, build

__all__ = ["pack_configs", "pack_path", "run_pack"]


def pack_path(out: str | Path, index: int) -> Path:
    """``runs/sweep.h5`` -> ``runs/sweep-3.h5`` for the pack's model ``index``."""
    out = Path(out)
    return out.with_name(f"{out.stem}-{index}{out.suffix or '.h5'}")


def pack_configs(config: RunConfig, out: str | Path | None = None) -> list[RunConfig]:
    """The pack's N configs: seed + i, pack_index i, out ``pack_path(out, i)`` (None: no files)."""
    out = out if out is not None else config.out
    return [
        replace(config, seed=config.seed + i, pack_index=i,
                out=None if out is None else str(pack_path(out, i)))
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


@using_config_threads
def run_pack(
    config: RunConfig,
    *,
    out: str | Path | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    overwrite: bool = False,
) -> list[RunResult]:
    """Train the pack; one RunResult per model, in pack order.

    A model whose loss stops being finite ends alone (status ``failed``, its steps kept); the
    others go on. Ctrl-C or ``should_stop()`` ends every model with status ``interrupted``.
    ``progress(step, total, mean train loss of the models still training)`` after each step.
    """
    configs = pack_configs(config, out)
    loops: list[Loop] = []
    states: list[_RandomState] = []
    ended: dict[int, tuple[str, str]] = {}
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
        for step in range(config.steps):
            if should_stop is not None and should_stop():
                for i in range(len(loops)):
                    ended.setdefault(i, ("interrupted", f"Stopped by the user after {step} steps."))
                break
            losses = []
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
            ended.setdefault(i, ("interrupted",
                                 f"{what} after {_steps_kept(loop.tracker)} steps."))
    except BaseException:
        for loop in loops:
            if loop.ctx.tracker is not None:
                _close_quietly(loop.tracker, "failed")
        raise
    return [loop.finish(*ended.get(i, ("complete", ""))) for i, loop in enumerate(loops)]
