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
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

import data
import techniques as techniques_registry

from . import distributed, models
from .allocate import KIND_STEP, NonFiniteLossError, Tracker
from .config import RunConfig
from .posthoc import WeightSavingTracker, declarations_for
from .threads import using_config_threads

EVAL_COLUMNS = ("train_step", "train_acc", "test_acc", "test_loss", "train_loss")
EVAL_MAX_EXAMPLES = 5000  # accuracy is measured on at most this many examples per split
SUMMARIES_PATH = "technique_summaries"  # JSON: technique name -> its summary() dict
SUMMARIES_BYTES = 1 << 16  # its fixed length: no variable-length strings in an SWMR file


class TrainingError(RuntimeError):
    """A run could not start (bad data folder, too large to record, …): one sentence."""


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


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; ``cuda`` without a GPU is one clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device = 'cuda' was asked for but no CUDA GPU is available; use auto.")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def build_data_and_model(config: RunConfig) -> tuple[data.Dataset, nn.Module]:
    """The run's dataset and a freshly initialised model (seed first for the same weights)."""
    try:
        ds = data.load(
            config.dataset,
            subset=config.subset,
            seed=config.seed,
            data_dir=config.data_dir,
            **config.dataset_options,
        )
        model = models.build(config.model, ds.input_shape, ds.num_classes, **config.model_options)
    except ValueError as e:  # DataError, ModelError: all one sentence
        raise TrainingError(str(e)) from None
    return ds, model


def measurement_set(ds: data.Dataset, config: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed measurement set: the training split, a seeded subset when capped."""
    n = ds.num_train
    if config.measure_size is None or config.measure_size >= n:
        return ds.x_train, ds.y_train
    g = torch.Generator().manual_seed(config.seed + 1)
    idx = torch.randperm(n, generator=g)[: config.measure_size].sort().values
    return ds.x_train[idx], ds.y_train[idx]


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
) -> RunResult:
    """Train and record one run. ``out`` (or ``config.out``) is the run file; None records nothing.

    ``progress(step, total, train_loss)`` is called after every step; ``should_stop()`` is polled
    between steps (the app's Stop button), ending the run with status ``interrupted``.
    """
    t_start = time.perf_counter()
    seed_everything(config.seed)
    device = resolve_device(config.device)
    try:  # under torchrun: every rank trains the same steps, the measurement set is sharded
        dist_ctx = distributed.setup(device)
    except distributed.DistributedError as e:
        raise TrainingError(str(e)) from None
    if dist_ctx is not None:
        device = dist_ctx.device
    main = dist_ctx is None or dist_ctx.is_main  # only rank 0 writes the run file
    ds, model = build_data_and_model(config)
    try:
        plugins = [techniques_registry.create(spec) for spec in config.techniques]
    except ValueError as e:  # TechniqueError: one sentence
        raise TrainingError(str(e)) from None
    model.to(device)
    if dist_ctx is not None:
        distributed.broadcast_module(model)  # one θ_0 on every rank, whatever the init did
    loss_fn = nn.CrossEntropyLoss()
    optimizer = build_optimizer(config, model)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    train_x, train_y = ds.x_train.to(device), ds.y_train.to(device)
    test_x, test_y = ds.x_test.to(device), ds.y_test.to(device)
    mx, my = measurement_set(ds, config)
    ctx = techniques_registry.Context(
        model=model,
        optimizer=optimizer,
        loss_fn=loss_fn,
        device=device,
        total_steps=config.steps,
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
    )

    def forward_params() -> dict[str, torch.Tensor]:
        params: dict[str, torch.Tensor] = dict(model.named_parameters())
        for p in plugins:
            params = p.forward_params(params)
        return params

    def effective(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for p in plugins:
            params = p.effective(params)
        return params

    def evaluate_all() -> tuple[float, float, float]:
        params = {**effective(dict(model.named_parameters())), **dict(model.named_buffers())}
        tr, _ = accuracy(model, params, train_x[:EVAL_MAX_EXAMPLES], train_y[:EVAL_MAX_EXAMPLES])
        te, te_loss = accuracy(
            model, params, test_x[:EVAL_MAX_EXAMPLES], test_y[:EVAL_MAX_EXAMPLES]
        )
        return tr, te, te_loss

    ctx.evaluate = lambda: evaluate_all()[:2]
    try:
        for p in plugins:
            p.setup(ctx)
    except ValueError as e:  # TechniqueError: e.g. a layer name the model does not have
        raise TrainingError(str(e)) from None

    series: dict[str, tuple[str, tuple[int, ...]]] = {
        "steps/train_loss": ("f8", ()),
        "steps/seconds_train": ("f8", ()),
        "steps/lr": ("f8", ()),
    }
    events: dict[str, tuple[str, ...]] = {"eval": EVAL_COLUMNS}
    arrays: dict[str, tuple[str, tuple[int, ...], float]] = {}
    if plugins:  # what each technique did and saved, as JSON, written when the run ends
        arrays[SUMMARIES_PATH] = (f"S{SUMMARIES_BYTES}", (), b"")
    for p in plugins:
        decl = p.declare(ctx)
        series.update({p.path(k): v for k, v in decl.series.items()})
        events.update({p.path(k): v for k, v in decl.events.items()})
        arrays.update({p.path(k): v for k, v in decl.arrays.items()})

    path = out if out is not None else config.out
    if not main:
        path = None
    writer = None
    if path is not None:
        from .store import Writer

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        writer = Writer(
            path,
            record=config.record,
            config=config.to_dict(),
            max_bytes=config.max_bytes,
            expected_steps=config.steps + _expected_interventions(plugins, config.steps),
            overwrite=True,
        )
    dtype = torch.float64 if config.measure_dtype == "float64" else torch.float32
    tracker_cls = Tracker
    if config.save_weights:  # θ_0 and θ after every segment, for `python -m lca allocate`
        w_series, w_arrays = declarations_for(model, dtype)
        series.update(w_series)
        arrays.update(w_arrays)
        tracker_cls = WeightSavingTracker
    tracker = tracker_cls(
        model,
        loss_fn,
        (mx, my),
        method=config.method,
        writer=writer,
        tolerance=config.tolerance,
        chunk_size=config.measure_batch,
        dtype=dtype,
        device=device,
        effective=effective if plugins else None,
        series=series,
        events=events,
        arrays=arrays,
        error_every=config.error_every,
    )
    if dist_ctx is not None:
        tracker.measurer.distribute(True)  # this rank's contiguous slice of the fixed chunks
    ctx.tracker, ctx.writer = tracker, writer

    status, message = "complete", ""
    train_loss = float("nan")
    batches = minibatches(len(train_x), config.batch_size, config.seed + 2)
    try:
        try:
            tracker.start()  # L_0 and its gradient; the writer checks the size and opens the file
        except (ValueError, OSError) as e:  # RunTooLargeError, RunFileError: one sentence
            raise TrainingError(str(e)) from None
        _log_eval(ctx, writer, evaluate_all, 0, float("nan"))
        for step in range(config.steps):
            if should_stop is not None and should_stop():
                status, message = "interrupted", f"Stopped by the user after {step} steps."
                break
            ctx.step = step
            for p in plugins:
                if p.wants_intervention(ctx):
                    with tracker.intervention(p.name) as row:
                        p.intervene(ctx, row)
            t0 = time.perf_counter()
            idx = batches.__next__()
            xb, yb = train_x[idx], train_y[idx]
            ctx.batch = (xb, yb)
            lr_now = schedule_factor(config, step) * ctx.lr_factor
            for g, base in zip(optimizer.param_groups, base_lrs, strict=True):
                g["lr"] = base * lr_now
            model.train()
            with contextlib.ExitStack() as stack:
                for p in plugins:
                    cm = p.autocast(ctx)
                    if cm is not None:
                        stack.enter_context(cm)
                params = forward_params()
                outputs = functional_call(model, params, (xb,)) if plugins else model(xb)
                loss = loss_fn(outputs.float(), yb)
            train_loss = float(loss.detach())
            if not math.isfinite(train_loss):
                raise NonFiniteLossError(
                    f"The training loss became {train_loss} at step {step + 1}, so the run "
                    "stopped with every step before it kept; lower the learning rate."
                )
            for p in plugins:
                term = p.loss_term(ctx, params)
                if term is not None:
                    loss = loss + term
            optimizer.zero_grad(set_to_none=True)
            if not any(p.backward(ctx, loss) for p in plugins):
                loss.backward()
            for p in plugins:
                p.before_step(ctx)
            if dist_ctx is not None:  # rank 0's gradient everywhere: θ stays identical on
                distributed.broadcast_grads(model)  # every rank even with GPU nondeterminism
            seconds_train = time.perf_counter() - t0
            with tracker.step() as row:
                t1 = time.perf_counter()
                if not any(p.optimizer_step(ctx) for p in plugins):
                    optimizer.step()
                for p in plugins:
                    p.after_step(ctx, row)
                seconds_train += time.perf_counter() - t1
                row.update(
                    {
                        "steps/train_loss": train_loss,
                        "steps/seconds_train": seconds_train,
                        "steps/lr": optimizer.param_groups[0]["lr"],
                    }
                )
            ctx.step = step + 1
            if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
                _log_eval(ctx, writer, evaluate_all, step + 1, train_loss)
            if progress is not None:
                progress(step + 1, config.steps, train_loss)
    except NonFiniteLossError as e:
        status, message = "failed", _failure_message(e, tracker)
    except KeyboardInterrupt:
        status, message = "interrupted", f"Interrupted after {_steps_kept(tracker)} steps."
    except TrainingError:
        _close_quietly(tracker, "failed")
        raise
    except BaseException:
        _close_quietly(tracker, "failed")
        raise
    summaries = {p.name: p.summary() for p in plugins}
    if writer is not None and plugins:
        with contextlib.suppress(Exception):  # a summary must never cost the run its status
            writer.set_array(SUMMARIES_PATH, summaries_json(summaries))
    tracker.close(status)
    last_acc = ctx.accuracy[-1] if ctx.accuracy else (0, None, None)
    kept = _steps_kept(tracker)
    return RunResult(
        status=status,
        message=message or f"Finished {kept} steps.",
        path=str(path) if path is not None else None,
        steps=kept,
        loss0=tracker.loss0,
        loss_final=tracker.last.loss_end if tracker.last else tracker.loss0,
        train_acc=last_acc[1],
        test_acc=last_acc[2],
        tracker=tracker,
        summaries=summaries,
        seconds=time.perf_counter() - t_start,
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
        text = json.dumps({
            k: {kk: vv for kk, vv in clean(v).items() if not isinstance(vv, dict | list)}
            for k, v in summaries.items()
        }).encode()[:SUMMARIES_BYTES]
    return text


def _expected_interventions(plugins: list, steps: int) -> int:
    # Interventions are rare (prune events); a generous bound keeps the size estimate honest.
    return min(steps, 64) if plugins else 0


def _log_eval(ctx, writer, evaluate_all, step: int, train_loss: float) -> None:
    train_acc, test_acc, test_loss = evaluate_all()
    ctx.accuracy.append((step, train_acc, test_acc))
    if writer is not None:
        writer.add_event("eval", [step, train_acc, test_acc, test_loss, train_loss])


def _steps_kept(tracker: Tracker) -> int:
    """Optimizer steps whose segment was recorded.

    Not ``tracker.train_steps``: the tracker counts a step before measuring it, so a step cut
    short by a NaN loss or Ctrl-C would be counted although the file does not have it.
    """
    return sum(1 for h in tracker.history if h["kind"] == KIND_STEP)


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
