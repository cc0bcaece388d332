"""The instrumented training loop: config -> data -> model -> optimizer -> techniques -> tracker.

One plain loop, nanoGPT style. Techniques act only through the hooks of ``techniques/base.py``;
the tracker allocates every optimizer step and every intervention; the writer makes the run
file that the app reads while the loop is still going. A NaN loss, Ctrl-C or an error ends the
run with a status in the file and every step before it kept.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from techniques import Context, while_measuring

from . import distributed
from .allocate import KIND_STEP, NonFiniteLossError, Tracker
from .collapse import (
    COLLAPSE_COLUMNS,
    COLLAPSE_TABLE,
    classifier_layer,
    collapse_measures,
    penultimate_features,
)
from .config import RunConfig
from .hooks import Hooks
from .posthoc import WeightSavingTracker, declarations_for
from .setup import (  # noqa: F401 - re-exported: callers import them from lca.train
    TrainingError,
    build_data_and_model,
    measurement_set,
    resolve_device,
    seed_everything,
    val_measurement_set,
)
from .threads import using_config_threads

EVAL_COLUMNS = ("train_step", "train_acc", "test_acc", "test_loss", "train_loss")
EVAL_MAX_EXAMPLES = 5000  # accuracy is measured on at most this many examples per split
SUMMARIES_PATH = "technique_summaries"  # JSON: technique name -> its summary() dict
SUMMARIES_BYTES = 1 << 16  # its fixed length: no variable-length strings in an SWMR file


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``docker stop``, systemd) while training: handled like Ctrl-C (status
    "interrupted", every whole step kept), so it is a KeyboardInterrupt; the CLI raises it."""

    what = "Stopped by SIGTERM"


class RunNotice(UserWarning):
    """A setting adjusted to the data, with the one sentence saying so (the CLI prints it)."""


def fit_to_data(config: RunConfig, num_train: int) -> RunConfig:
    """``config`` with settings that cannot make sense for ``num_train`` examples adjusted, each
    with a one-line RunNotice: a batch larger than the data becomes the whole data, a
    measurement set larger than the data becomes the whole training split. The file records
    the values actually used."""
    import warnings

    changes: dict[str, Any] = {}
    if config.batch_size > num_train:
        changes["batch_size"] = num_train
        warnings.warn(
            RunNotice(
                f"The batch size {config.batch_size} is larger than the {num_train:,} training "
                f"examples, so every step uses all {num_train:,} (batch size {num_train:,})."
            ),
            stacklevel=2,
        )
    if config.measure_size is not None and config.measure_size > num_train:
        changes["measure_size"] = None
    # The default cap (2,000) is larger than the small built-in sets by design; only a size the
    # user chose is worth a notice.
    if "measure_size" in changes and config.measure_size != RunConfig().measure_size:
        warnings.warn(
            RunNotice(
                f"The measurement set of {config.measure_size:,} is larger than the {num_train:,} "
                f"training examples, so LCA is measured on all {num_train:,} of them."
            ),
            stacklevel=2,
        )
    if not changes:
        return config
    return RunConfig.from_dict({**config.to_dict(), **changes})


@dataclass
class RunResult:
    """What a finished (or stopped) run produced."""

    status: str  # complete | failed | interrupted
    message: str
    path: str | None
    steps: int
    loss0: float | None
    loss_final: float | None
    train_acc: float | None
    test_acc: float | None
    tracker: Tracker | None = None
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0


def build_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = model.parameters()
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "momentum":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def schedule_factor(config: RunConfig, step: int) -> float:
    """Learning-rate multiplier at ``step`` for the configured schedule."""
    frac = step / max(1, config.steps)
    if config.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * frac))
    if config.schedule == "linear":
        return max(0.0, 1 - frac)
    if config.schedule == "step":
        return 0.1 ** int(frac * 3)  # ×0.1 at one third and two thirds of the run
    return 1.0


def minibatches(n: int, batch: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless seeded epochs of shuffled minibatch indices (the last short batch is dropped)."""
    g = torch.Generator().manual_seed(seed)
    batch = min(batch, n)
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - batch + 1, batch):
            yield perm[i : i + batch]


@torch.no_grad()
def accuracy(
    model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> tuple[float, float]:
    """(accuracy, mean loss) in eval mode with the weights the forward pass uses."""
    if len(x) == 0:
        return float("nan"), float("nan")
    was = model.training
    model.eval()
    correct, loss, chunk = 0, 0.0, 1024
    try:
        for i in range(0, len(x), chunk):
            out = functional_call(model, params, (x[i : i + chunk],))
            correct += int((out.argmax(1) == y[i : i + chunk]).sum())
            loss += float(nn.functional.cross_entropy(out, y[i : i + chunk], reduction="sum"))
    finally:
        model.train(was)
    return correct / len(x), loss / len(x)


@using_config_threads  # config.threads torch threads while training, restored after
def run(
    config: RunConfig,
    *,
    out: str | Path | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    overwrite: bool = False,
) -> RunResult:
    """Train and record one run. ``out`` (or ``config.out``) is the run file; None records nothing.

    ``progress(step, total, train_loss)`` is called after every step; ``should_stop()`` is polled
    between steps (the app's Stop button), ending the run with status ``interrupted``. An
    existing run file is replaced only with ``overwrite`` (and never while a writer holds it).
    """
    loop = build(config, out, overwrite=overwrite)
    status, message = "complete", ""
    try:
        loop.start()
        for step in range(config.steps):
            if should_stop is not None and should_stop():
                status, message = "interrupted", f"Stopped by the user after {step} steps."
                break
            train_loss = loop.step(step)
            if progress is not None:
                progress(step + 1, config.steps, train_loss)
    except NonFiniteLossError as e:
        status, message = "failed", _failure_message(e, loop.tracker)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated) through the CLI
        what = getattr(e, "what", "Interrupted")
        status, message = "interrupted", f"{what} after {_steps_kept(loop.tracker)} steps."
    except BaseException:
        _close_quietly(loop.tracker, "failed")
        raise
    result = loop.finish(status, message)
    # Under torchrun, ranks that completed the run meet at a barrier before leaving the group.
    distributed.teardown(loop.dist_ctx, clean=status == "complete")
    return result


# ---------------------------------------------------------------------------------------------
# Build: device, data, model, techniques, then the run file and the tracker.


def build(config: RunConfig, out: str | Path | None = None, *, overwrite: bool = False) -> Loop:
    """Everything the run needs before its first step; nothing is measured or written yet."""
    t_start = time.perf_counter()
    seed_everything(config.seed)
    device = resolve_device(config.device)
    try:  # under torchrun: every rank trains the same steps, the measurement set is sharded
        dist_ctx = distributed.setup(device)
    except distributed.DistributedError as e:
        raise TrainingError(str(e)) from None
    if dist_ctx is not None:
        device = dist_ctx.device
    ds, model = build_data_and_model(config)
    config = fit_to_data(config, ds.num_train)
    hooks = Hooks.from_specs(config.techniques)
    model.to(device)
    if dist_ctx is not None:
        distributed.broadcast_module(model)  # one θ_0 on every rank, whatever the init did
    optimizer = build_optimizer(config, model)
    ctx = Context(
        model=model,
        optimizer=optimizer,
        loss_fn=nn.CrossEntropyLoss(),
        device=device,
        total_steps=config.steps,
        train_x=ds.x_train.to(device),
        train_y=ds.y_train.to(device),
        test_x=ds.x_test.to(device),
        test_y=ds.y_test.to(device),
    )
    loop = Loop(
        config=config,
        ctx=ctx,
        hooks=hooks,
        dist_ctx=dist_ctx,
        t_start=t_start,
        base_lrs=[g["lr"] for g in optimizer.param_groups],
        batches=minibatches(ds.num_train, config.batch_size, config.seed + 2),
    )
    ctx.evaluate = lambda: loop.accuracies()[:2]
    hooks.setup(ctx)
    main = dist_ctx is None or dist_ctx.is_main  # only rank 0 writes the run file
    loop.path = (out if out is not None else config.out) if main else None
    ctx.writer = _open_writer(config, loop.path, hooks, overwrite)
    measure = measurement_set(ds, config)
    if ctx.writer is not None:  # neural collapse at each evaluation, on the measurement set
        loop.collapse_layer = classifier_layer(model, ds.num_classes)
        loop.collapse_set = (
            measure[0][:EVAL_MAX_EXAMPLES].to(device),
            measure[1][:EVAL_MAX_EXAMPLES].to(device),
        )
    ctx.tracker = _build_tracker(
        config,
        ctx,
        hooks,
        measure,
        collapse=loop.collapse_layer is not None,
        val=val_measurement_set(ds, config) if config.measure_val else None,
    )
    ctx.tracker.measurer.chunk_loss = while_measuring(ctx.tracker.measurer.chunk_loss)
    if dist_ctx is not None:
        ctx.tracker.measurer.distribute(True)  # this rank's contiguous slice of the fixed chunks
    vm = ctx.tracker.val_measurer  # the held-out set (measure_val), measured the same way
    if vm is not None:
        vm.chunk_loss = while_measuring(vm.chunk_loss)
        if dist_ctx is not None:
            vm.distribute(True)
    return loop


def _declarations(ctx: Context, hooks: Hooks, collapse: bool = False) -> tuple[dict, dict, dict]:
    """(series, events, arrays) the run file holds: the loop's own and each technique's."""
    series: dict[str, tuple[str, tuple[int, ...]]] = {
        "steps/train_loss": ("f8", ()),
        "steps/seconds_train": ("f8", ()),
        "steps/lr": ("f8", ()),
    }
    events: dict[str, tuple[str, ...]] = {"eval": EVAL_COLUMNS}
    if collapse:
        events[COLLAPSE_TABLE] = COLLAPSE_COLUMNS
    arrays: dict[str, tuple[str, tuple[int, ...], float]] = {}
    if hooks:  # what each technique did and saved, as JSON, written when the run ends
        arrays[SUMMARIES_PATH] = (f"S{SUMMARIES_BYTES}", (), b"")
    for p in hooks:
        decl = p.declare(ctx)
        series.update({p.path(k): v for k, v in decl.series.items()})
        events.update({p.path(k): v for k, v in decl.events.items()})
        arrays.update({p.path(k): v for k, v in decl.arrays.items()})
    return series, events, arrays


def _open_writer(config: RunConfig, path: str | Path | None, hooks: Hooks, overwrite: bool):
    """The run file's writer (None when nothing is recorded); it opens at ``tracker.start``.
    An existing file is replaced only with ``overwrite`` (the Writer makes the folder)."""
    if path is None:
        return None
    # Imported here: the store pulls in h5py, which a run that records nothing never needs.
    from .store import Writer

    return Writer(
        path,
        record=config.record,
        config=config.to_dict(),
        max_bytes=config.max_bytes,
        expected_steps=config.steps + _expected_interventions(hooks.plugins, config.steps),
        overwrite=overwrite,
    )


def _build_tracker(
    config: RunConfig, ctx: Context, hooks: Hooks, measure, collapse: bool = False, val=None
) -> Tracker:
    """The tracker that measures every segment on the fixed measurement set ``measure``."""
    series, events, arrays = _declarations(ctx, hooks, collapse)
    dtype = torch.float64 if config.measure_dtype == "float64" else torch.float32
    tracker_cls = Tracker
    if config.save_weights:  # θ_0 and θ after every segment, for `python -m lca allocate`
        w_series, w_arrays = declarations_for(ctx.model, dtype)
        series.update(w_series)
        arrays.update(w_arrays)
        tracker_cls = WeightSavingTracker
    return tracker_cls(
        ctx.model,
        ctx.loss_fn,
        measure,
        method=config.method,
        writer=ctx.writer,
        tolerance=config.tolerance,
        chunk_size=config.measure_batch,
        dtype=dtype,
        device=ctx.device,
        effective=hooks.effective if hooks else None,
        series=series,
        events=events,
        arrays=arrays,
        error_every=config.error_every,
        val_data=val,
        adapt_on=config.adapt_on,
        param_tolerance=config.param_tolerance,
    )


# ---------------------------------------------------------------------------------------------
# Step and finish.


@dataclass
class Loop:
    """One run while it trains: the techniques' context (model, optimizer, tracker, writer, …)
    and what the loop itself keeps between steps."""

    config: RunConfig
    ctx: Context
    hooks: Hooks
    dist_ctx: Any
    t_start: float
    base_lrs: list[float]
    batches: Iterator[torch.Tensor]
    path: str | Path | None = None
    collapse_layer: str | None = None  # the classifier whose input features collapse measures
    collapse_set: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def tracker(self) -> Tracker:
        return self.ctx.tracker

    def start(self) -> None:
        """Measure L_0 and its gradient (the writer checks the size and opens the file)."""
        try:
            self.tracker.start()
        except (ValueError, OSError) as e:  # RunTooLargeError, RunFileError: one sentence
            raise TrainingError(str(e)) from None
        self.hooks.begin(self.ctx)  # the run file is open: fixed arrays known up front
        self.log_eval(0, float("nan"))

    def step(self, step: int) -> float:
        """One optimizer step (after any intervention), measured; returns the training loss."""
        ctx, config = self.ctx, self.config
        ctx.step = step
        self.hooks.intervene(ctx, self.tracker)
        self.hooks.before_forward(ctx)  # per-step state changes, outside the step's timer
        t0 = time.perf_counter()
        loss, train_loss = self.forward(step)
        self.backward(loss)
        seconds_train = time.perf_counter() - t0
        with self.tracker.step() as row:
            t1 = time.perf_counter()
            self.hooks.optimizer_step(ctx)
            self.hooks.after_step(ctx, row)
            seconds_train += time.perf_counter() - t1
            row.update(
                {
                    "steps/train_loss": train_loss,
                    "steps/seconds_train": seconds_train,
                    "steps/lr": ctx.optimizer.param_groups[0]["lr"],
                }
            )
        ctx.step = step + 1
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            self.log_eval(step + 1, train_loss)
        return train_loss

    def forward(self, step: int) -> tuple[torch.Tensor, float]:
        """The minibatch's loss with the techniques' weights, casts and loss terms."""
        ctx, hooks = self.ctx, self.hooks
        idx = next(self.batches)
        xb, yb = ctx.train_x[idx], ctx.train_y[idx]
        ctx.batch = (xb, yb)
        lr_now = schedule_factor(self.config, step) * ctx.lr_factor
        for g, base in zip(ctx.optimizer.param_groups, self.base_lrs, strict=True):
            g["lr"] = base * lr_now
        ctx.model.train()
        with hooks.autocast(ctx):
            params = hooks.forward_params(dict(ctx.model.named_parameters()))
            outputs = functional_call(ctx.model, params, (xb,)) if hooks else ctx.model(xb)
            loss = ctx.loss_fn(outputs.float(), yb)
        train_loss = float(loss.detach())
        if not math.isfinite(train_loss):
            raise NonFiniteLossError(
                f"The training loss became {train_loss} at step {step + 1}, so the run "
                "stopped with every step before it kept; lower the learning rate."
            )
        return hooks.add_loss_terms(ctx, params, loss), train_loss

    def backward(self, loss: torch.Tensor) -> None:
        """Gradients, as the techniques shape them, the same on every rank."""
        ctx = self.ctx
        ctx.optimizer.zero_grad(set_to_none=True)
        self.hooks.backward(ctx, loss)
        self.hooks.before_step(ctx)
        if self.dist_ctx is not None:  # rank 0's gradient everywhere: θ stays identical on
            distributed.broadcast_grads(ctx.model)  # every rank even with GPU nondeterminism

    def accuracies(self) -> tuple[float, float, float]:
        """(train accuracy, test accuracy, test loss) with the weights the forward pass uses."""
        ctx, n = self.ctx, EVAL_MAX_EXAMPLES
        model = ctx.model
        params = {
            **self.hooks.effective(dict(model.named_parameters())),
            **dict(model.named_buffers()),
        }
        tr, _ = accuracy(model, params, ctx.train_x[:n], ctx.train_y[:n])
        te, te_loss = accuracy(model, params, ctx.test_x[:n], ctx.test_y[:n])
        return tr, te, te_loss

    def log_eval(self, step: int, train_loss: float) -> None:
        train_acc, test_acc, test_loss = self.accuracies()
        self.ctx.accuracy.append((step, train_acc, test_acc))
        if self.ctx.writer is not None:
            self.ctx.writer.add_event("eval", [step, train_acc, test_acc, test_loss, train_loss])
            self.log_collapse(step)

    def log_collapse(self, step: int) -> None:
        """The neural-collapse measures of the classifier's input features on the measurement
        set (skipped when it holds fewer than two classes)."""
        if self.collapse_layer is None or self.collapse_set is None:
            return
        model = self.ctx.model
        params = {
            **self.hooks.effective(dict(model.named_parameters())),
            **dict(model.named_buffers()),
        }
        x, y = self.collapse_set
        feats = penultimate_features(model, params, self.collapse_layer, x)
        weight = params.get(f"{self.collapse_layer}.weight")
        bias = params.get(f"{self.collapse_layer}.bias")
        if weight is None:  # a technique replaced the classifier's weight: nothing to compare
            return
        try:
            measures = collapse_measures(feats, y, weight, bias)
        except ValueError:
            return
        self.ctx.writer.add_event(COLLAPSE_TABLE, measures.row(step))

    def finish(self, status: str, message: str) -> RunResult:
        """Write the techniques' summaries, close the file with ``status``, report."""
        tracker, writer = self.tracker, self.ctx.writer
        summaries = self.hooks.summaries()
        if writer is not None and self.hooks:
            with contextlib.suppress(Exception):  # a summary must never cost the run its status
                writer.set_array(SUMMARIES_PATH, summaries_json(summaries))
        tracker.close(status)
        last_acc = self.ctx.accuracy[-1] if self.ctx.accuracy else (0, None, None)
        kept = _steps_kept(tracker)
        return RunResult(
            status=status,
            message=message or f"Finished {kept} steps.",
            path=str(self.path) if self.path is not None else None,
            steps=kept,
            loss0=tracker.loss0,
            loss_final=tracker.last.loss_end if tracker.last else tracker.loss0,
            train_acc=last_acc[1],
            test_acc=last_acc[2],
            tracker=tracker,
            summaries=summaries,
            seconds=time.perf_counter() - self.t_start,
        )


def summaries_json(summaries: dict[str, dict[str, Any]]) -> bytes:
    """Technique summaries as JSON bytes (NaN as null), trimmed to fit the declared array."""

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, np.generic):
            return clean(v.item())
        return v

    text = json.dumps(clean(summaries), default=str).encode()
    if len(text) > SUMMARIES_BYTES:  # keep only the scalar entries of each summary
        text = json.dumps(
            {
                k: {kk: vv for kk, vv in clean(v).items() if not isinstance(vv, dict | list)}
                for k, v in summaries.items()
            }
        ).encode()[:SUMMARIES_BYTES]
    return text


def _expected_interventions(plugins: list, steps: int) -> int:
    # Interventions are rare (prune events); a generous bound keeps the size estimate honest.
    return min(steps, 64) if plugins else 0


def _steps_kept(tracker: Tracker) -> int:
    """Optimizer steps whose segment was recorded.

    Not ``tracker.train_steps``: the tracker counts a step before measuring it, so a step cut
    short by a NaN loss or Ctrl-C would be counted although the file does not have it. Only the
    segments the writer took count: a signal can land between the tracker's history and the
    writer's row (history entry i is row i).
    """
    history = tracker.history
    rows = getattr(tracker.writer, "num_steps", None)
    if isinstance(rows, int):
        history = history[:rows]
    return sum(1 for h in history if h["kind"] == KIND_STEP)


def _failure_message(error: NonFiniteLossError, tracker: Tracker) -> str:
    """The error as one sentence that also names the fix (the tracker's own says only what
    happened): a loss that blows up during training wants a lower learning rate, a loss that is
    not finite before the first step points at the data or the model."""
    text = str(error).rstrip(".")
    if "learning rate" in text:
        return text + "."
    if tracker.train_steps == 0:
        return f"{text}; check the dataset and the model options."
    return f"{text}; lower the learning rate."


def _close_quietly(tracker: Tracker, status: str) -> None:
    with contextlib.suppress(Exception):
        tracker.close(status)
