"""Stanza (layer separation, Wu, Xu, Li & Xiong) and the plain data-parallel baseline, with LCA.

Stanza, ``--stanza K``, K+1 processes:

* ranks 0 … K−1 ("conv ranks") hold the convolutional layers only. Each takes its own shard of
  the step's global minibatch, runs the conv layers, **sends its features and labels to rank K**,
  receives the loss gradient with respect to those features, backpropagates it through the
  conv layers, and the conv ranks **all-reduce their conv gradients** among themselves (data
  parallel over the shards) before their optimizer step;
* rank K ("FC rank") holds the fully connected layers only. It concatenates the K feature
  batches, computes the loss on the whole global minibatch, updates the FC weights and **sends
  each conv rank the gradient of the loss with respect to its features**. With staleness τ > 0
  those activation gradients are computed with the FC weights of step t − τ (the paper's
  staleness; its exact protocol is not public, see SEED-TECHNIQUES §5.4 and §8); the FC weights'
  own gradient always uses the current weights. τ = 0 is data parallel's result exactly (up to
  float rounding: the same global-minibatch gradient, summed in another order).

Data parallel, ``--data-parallel K``, K processes: every rank holds the whole model, takes the
same shard as the conv rank of the same number, and one all-reduce of every gradient (summed,
then divided by K) precedes the optimizer step. ``--batch-size`` is per rank in both modes (what
DDP users expect), so a step's global minibatch is K × batch-size examples, the same ones in both.

Bytes are *measured*: every tensor handed to ``send``/``recv``/``all_reduce`` through
:class:`Traffic` adds its ``numel × element_size`` to this rank's sent and received counters
(an all-reduce counts its buffer once as sent and once as received: what the rank hands to the
collective and gets back; gloo's ring moves about 2(K−1)/K of that over the wire per rank).
Training traffic ("train") is kept apart from what recording LCA costs ("record": the conv
weights sent to the writer, the loss for the progress bar), so the comparison is the
algorithms'.

LCA: one run file per mode, written by one rank (the FC rank in Stanza, rank 0 in data parallel)
that holds the whole model: in Stanza conv rank 0 sends it the conv weights after every step.
It measures LCA alone on the fixed measurement set (the other ranks wait), so every run file has
per-layer LCA of the full model, the loss curve and the bytes exchanged (``/parallel/…``, see
docs/FORMAT.md), and a Stanza run and its data-parallel baseline sit side by side on the Compare
page.

Launch: under ``torchrun --nproc-per-node K+1 -m lca train --stanza K …`` every process runs its
own rank (:func:`run_rank`); without torchrun, ``python -m lca train --stanza K …`` spawns the
K+1 processes itself on this machine (:class:`Launch`, torch.multiprocessing, a free local
port; CPU ranks over gloo unless ``--device cuda`` asks for one GPU per rank) and ends them all
when it ends.
"""

from __future__ import annotations

import collections
import json
import math
import os
import signal
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.func import functional_call

from . import distributed
from .config import RunConfig
from .models import LeNet, SmallCNN

__all__ = [
    "INFO_BYTES",
    "Launch",
    "Part",
    "StanzaError",
    "Traffic",
    "check",
    "mode_of",
    "run_rank",
    "split_model",
    "world_for",
]

INFO_BYTES = 4096  # fixed length of the /parallel/info JSON string
BYTES_SENT = "parallel/bytes_sent"
BYTES_RECEIVED = "parallel/bytes_received"
INFO = "parallel/info"


class StanzaError(ValueError):
    """A Stanza or data-parallel run that cannot start: one sentence naming the fix."""


# ---------------------------------------------------------------------------------------------
# The model split: conv part (features) and FC part (classifier), sharing the model's modules.


class Part(nn.Module):
    """Some of a model's submodules under their own names (so parameter names are the full
    model's, e.g. ``conv1.weight``) with the forward pass of that part of the model."""

    def __init__(
        self, model: nn.Module, names: tuple[str, ...], forward: Callable[[Any, Any], Any]
    ) -> None:
        super().__init__()
        for n in names:
            self.add_module(n, getattr(model, n))
        self._forward = forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(self, x)


def _cnn_features(m: Any, x: torch.Tensor) -> torch.Tensor:
    x = m.pool(m.act(m.conv1(x)))
    return m.pool(m.act(m.conv2(x))).flatten(1)


def _small_cnn_classifier(m: Any, x: torch.Tensor) -> torch.Tensor:
    return m.out(x)


def _lenet_classifier(m: Any, x: torch.Tensor) -> torch.Tensor:
    return m.out(m.act(m.fc1(x)))


_CONVS = ("conv1", "conv2", "act", "pool")
#: Model class -> (conv submodules, conv forward, FC submodules, FC forward).
_SPLITS: dict[type, tuple[tuple[str, ...], Callable, tuple[str, ...], Callable]] = {
    SmallCNN: (_CONVS, _cnn_features, ("out",), _small_cnn_classifier),
    LeNet: (_CONVS, _cnn_features, ("fc1", "out", "act"), _lenet_classifier),
}
SPLIT_MODELS = ("cnn-small", "lenet")


def split_model(model: nn.Module) -> tuple[Part, Part]:
    """(conv part, FC part) of a zoo model; ``fc(conv(x))`` is ``model(x)``."""
    spec = _SPLITS.get(type(model))
    if spec is None:
        raise StanzaError(
            f"Stanza separates a model's convolutional layers from its fully connected ones, "
            f"and {type(model).__name__} has no such split here; use --model "
            f"{' or '.join(SPLIT_MODELS)}."
        )
    conv_names, conv_fwd, fc_names, fc_fwd = spec
    return Part(model, conv_names, conv_fwd), Part(model, fc_names, fc_fwd)


# ---------------------------------------------------------------------------------------------
# Which mode, how many processes, and what cannot be combined with it.


def mode_of(config: RunConfig) -> str | None:
    """ "stanza", "data-parallel" or None (neither)."""
    if config.stanza > 0:
        return "stanza"
    if config.data_parallel > 0:
        return "data-parallel"
    return None


def world_for(config: RunConfig) -> int:
    """Processes the run needs: K+1 for Stanza, K for data parallel."""
    return config.stanza + 1 if config.stanza > 0 else config.data_parallel


def check(config: RunConfig, world: int | None = None) -> None:
    """Refuse, before any process starts, what these modes cannot do (one sentence each)."""
    if config.stanza > 0 and config.data_parallel > 0:
        raise StanzaError(
            "--stanza and --data-parallel are two ways to train; choose one of them per run."
        )
    if config.staleness > 0 and config.stanza == 0:
        raise StanzaError("--staleness applies to Stanza only; add --stanza K or drop it.")
    mode = mode_of(config)
    if mode is None:
        return
    flag = f"--{mode} {config.stanza or config.data_parallel}"
    if config.pack > 1:
        raise StanzaError(f"{flag} trains one model over several processes; drop --pack.")
    if config.techniques:
        raise StanzaError(
            f"{flag} does not run techniques (they act on one process's training loop); "
            "drop --technique."
        )
    if config.save_weights:
        raise StanzaError(f"{flag} does not save weights for recomputation; drop --save-weights.")
    if config.model not in SPLIT_MODELS:
        raise StanzaError(
            f"{flag} needs a model with convolutional and fully connected layers; use --model "
            f"{' or '.join(SPLIT_MODELS)}, not {config.model}."
        )
    if world is not None and world != world_for(config):
        need = world_for(config)
        roles = (
            f"{config.stanza} conv ranks and 1 FC rank"
            if mode == "stanza"
            else f"{config.data_parallel} ranks"
        )
        raise StanzaError(
            f"{flag} needs {need} processes ({roles}) but {world} were started; use "
            f"torchrun --nproc-per-node {need}."
        )


# ---------------------------------------------------------------------------------------------
# Measured communication.


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@dataclass
class Traffic:
    """send/recv/all_reduce that count the bytes of the tensors they move, by kind."""

    sent: dict[str, int] = field(default_factory=lambda: collections.defaultdict(int))
    received: dict[str, int] = field(default_factory=lambda: collections.defaultdict(int))
    per_step: list[tuple[int, int]] = field(default_factory=list)  # ("train" sent, received)
    _mark: tuple[int, int] = (0, 0)

    def send(self, t: torch.Tensor, dst: int, kind: str = "train") -> None:
        dist.send(t.contiguous(), dst)
        self.sent[kind] += nbytes(t)

    def recv(self, t: torch.Tensor, src: int, kind: str = "train") -> None:
        dist.recv(t, src)
        self.received[kind] += nbytes(t)

    def all_reduce(self, t: torch.Tensor, group: Any = None, kind: str = "train") -> None:
        dist.all_reduce(t, group=group)
        self.sent[kind] += nbytes(t)
        self.received[kind] += nbytes(t)

    def end_step(self) -> None:
        """Close the step: its training bytes (sent, received) are appended to ``per_step``."""
        now = (self.sent["train"], self.received["train"])
        self.per_step.append((now[0] - self._mark[0], now[1] - self._mark[1]))
        self._mark = now


# ---------------------------------------------------------------------------------------------
# One rank.


@dataclass
class RankResult:
    """What one rank did; the writer's also has the run's loss and accuracy."""

    rank: int
    role: str  # conv | fc | replica
    status: str
    message: str
    steps: int
    params: dict[str, torch.Tensor]  # final values of the parameters this rank trains
    bytes_per_step: list[tuple[int, int]]  # this rank's training bytes (sent, received)
    record_bytes: tuple[int, int]  # what recording cost it (sent, received)
    seconds_train: float  # its summed step time (LCA measurement excluded)
    path: str | None = None
    loss0: float | None = None
    loss_final: float | None = None
    test_acc: float | None = None
    # On the writer: mean training bytes per step (sent, received) summed over every rank.
    step_bytes: tuple[float, float] | None = None


class _NonFinite(RuntimeError):
    """The global minibatch's loss stopped being finite (one sentence)."""


def _flat_grads(params: list[nn.Parameter]) -> torch.Tensor:
    return torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
    )


def _set_grads(params: list[nn.Parameter], flat: torch.Tensor) -> None:
    for p, g in zip(params, distributed.unflatten(flat, list(params)), strict=True):
        p.grad = g.clone()


class _Params:
    """build_optimizer takes anything with ``parameters()``: the parameters one rank trains."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        self._params = params

    def parameters(self) -> list[nn.Parameter]:
        return self._params


@dataclass
class _Rank:
    """One process's share of the run: its role, its parameters, its data and its traffic."""

    config: RunConfig
    mode: str
    k: int
    rank: int
    world: int
    device: torch.device
    ds: Any
    model: nn.Module
    conv: Part
    fc: Part
    conv_group: Any
    traffic: Traffic = field(default_factory=Traffic)

    def __post_init__(self) -> None:
        c = self.config
        self.role = (
            "replica" if self.mode == "data-parallel" else ("fc" if self.rank == self.k else "conv")
        )
        self.writer_rank = writer_rank(c)
        self.conv_params = list(self.conv.parameters())
        self.fc_params = list(self.fc.parameters())
        self.mine = {
            "conv": self.conv_params,
            "fc": self.fc_params,
            "replica": list(self.model.parameters()),
        }[self.role]
        from .train import build_optimizer, minibatches

        self.optimizer = build_optimizer(c, _Params(self.mine))  # type: ignore[arg-type]
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.train_x = self.ds.x_train.to(self.device)
        self.train_y = self.ds.y_train.to(self.device)
        self.batches = minibatches(self.ds.num_train, self.k * c.batch_size, c.seed + 2)
        self.loss_fn = nn.CrossEntropyLoss()
        with torch.no_grad():
            self.feat_dim = self.conv(self.train_x[:1]).shape[1]
        # θ_FC of the last τ+1 steps: [0] is θ_FC(max(0, t − τ)), [-1] the current weights
        self.fc_history: collections.deque = collections.deque(maxlen=c.staleness + 1)
        if self.role == "fc":
            self._keep_fc()

    def _keep_fc(self) -> None:
        self.fc_history.append({n: p.detach().clone() for n, p in self.fc.named_parameters()})

    def shard(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's slice of the step's global minibatch (the same in both modes)."""
        b = self.config.batch_size
        mine = idx[self.rank * b : (self.rank + 1) * b]
        return self.train_x[mine], self.train_y[mine]

    def gradients(self, step: int) -> float | None:
        """This step's gradients of the parameters this rank trains; the global minibatch's
        loss where this rank knows it (FC rank, data-parallel ranks)."""
        from .train import schedule_factor

        factor = schedule_factor(self.config, step)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            g["lr"] = base * factor
        idx = next(self.batches)  # every rank draws it: the stream stays the same everywhere
        self.optimizer.zero_grad(set_to_none=True)
        if self.role == "conv":
            self._conv_gradients(*self.shard(idx))
            return None
        if self.role == "fc":
            return self._fc_gradients()
        return self._replica_gradients(*self.shard(idx))

    def _conv_gradients(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Features and labels to the FC rank, their gradient back, conv gradients all-reduced
        (each rank's is its share of the global minibatch's gradient, so the sum is the whole)."""
        feats = self.conv(x)
        self.traffic.send(feats.detach(), self.k)
        self.traffic.send(y, self.k)
        grad_feats = torch.empty_like(feats)
        self.traffic.recv(grad_feats, self.k)
        feats.backward(grad_feats)
        flat = _flat_grads(self.conv_params)
        self.traffic.all_reduce(flat, group=self.conv_group)
        _set_grads(self.conv_params, flat)

    def _fc_gradients(self) -> float:
        """The loss of the whole global minibatch; FC gradients with the current weights, the
        activation gradients returned to the conv ranks with the weights of step t − τ."""
        b = self.config.batch_size
        feats = [torch.empty(b, self.feat_dim, device=self.device) for _ in range(self.k)]
        labels = [torch.empty(b, dtype=torch.int64, device=self.device) for _ in range(self.k)]
        for r in range(self.k):
            self.traffic.recv(feats[r], r)
            self.traffic.recv(labels[r], r)
        f = torch.cat(feats).requires_grad_(True)
        y = torch.cat(labels)
        if len(self.fc_history) == 1:  # τ = 0, or the first step: the same weights, one backward
            loss = self.loss_fn(self.fc(f), y)
            loss.backward()
            grad_f = f.grad
        else:
            stale = self.loss_fn(functional_call(self.fc, self.fc_history[0], (f,)), y)
            (grad_f,) = torch.autograd.grad(stale, f)
            loss = self.loss_fn(self.fc(f.detach()), y)
            loss.backward()
        for r, g in enumerate(grad_f.split(b)):
            self.traffic.send(g, r)
        return float(loss.detach())

    def _replica_gradients(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """This shard's gradient, all-reduced over every rank (sum / K)."""
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        params = list(self.model.parameters())
        flat = _flat_grads(params)
        self.traffic.all_reduce(flat)
        flat.div_(self.k)
        _set_grads(params, flat)
        value = loss.detach().reshape(1).clone()
        self.traffic.all_reduce(value, kind="record")  # the global minibatch's loss, to record
        return float(value) / self.k

    def update(self, recording: bool) -> None:
        """The optimizer step; in a recorded Stanza run conv rank 0's new conv weights go to
        the FC rank (the writer), which takes them here, inside its tracked step."""
        self.optimizer.step()
        if self.role == "fc":
            self._keep_fc()
        if not (recording and self.mode == "stanza"):
            return
        if self.rank == 0:
            flat = distributed.flatten([p.detach() for p in self.conv_params])
            self.traffic.send(flat, self.k, kind="record")
        elif self.role == "fc":
            like = [p.detach() for p in self.conv_params]
            size = sum(p.numel() for p in like)
            flat = torch.empty(size, dtype=like[0].dtype, device=self.device)
            self.traffic.recv(flat, 0, kind="record")
            with torch.no_grad():
                for p, v in zip(self.conv_params, distributed.unflatten(flat, like), strict=True):
                    p.copy_(v)

    def trained(self) -> dict[str, torch.Tensor]:
        """Final values of the parameters this rank trains, by the model's names."""
        ids = {id(p) for p in self.mine}
        named = self.model.named_parameters()
        return {n: p.detach().cpu().clone() for n, p in named if id(p) in ids}


def run_rank(
    config: RunConfig,
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int, float], None] | None = None,
) -> RankResult:
    """Run this process's rank of a Stanza or data-parallel run (the process group is joined
    from torchrun's environment and left at the end)."""
    from .setup import resolve_device, seed_everything
    from .train import TrainingError

    mode = mode_of(config)
    if mode is None:
        raise StanzaError("run_rank needs --stanza K or --data-parallel K.")
    seed_everything(config.seed)
    try:
        ctx = distributed.setup(resolve_device(config.device))
    except distributed.DistributedError as e:
        raise TrainingError(str(e)) from None
    if ctx is None:
        raise StanzaError(
            f"--{mode} runs in several processes; start it with torchrun, or without "
            "torchrun through python -m lca train, which spawns them."
        )
    done = False
    try:
        check(config, ctx.world)
        me = _build_rank(config, mode, ctx)
        path = out if out is not None else config.out
        result = _train(me, path, overwrite, progress)
        done = result.status == "complete"  # the ranks ended the run together
        return result
    finally:
        distributed.teardown(ctx, clean=done)


def _build_rank(config: RunConfig, mode: str, ctx: distributed.Dist) -> _Rank:
    """Data, the whole model (the same θ_0 on every rank), its split and this rank's share."""
    from .setup import build_data_and_model
    from .train import fit_to_data

    ds, model = build_data_and_model(config)
    config = fit_to_data(config, ds.num_train)
    k = config.stanza or config.data_parallel
    if k * config.batch_size > ds.num_train:
        raise StanzaError(
            f"A step takes {k} × {config.batch_size} = {k * config.batch_size} examples but the "
            f"training split has {ds.num_train}; lower --batch-size to at most "
            f"{ds.num_train // k}."
        )
    model.to(ctx.device)
    distributed.broadcast_module(model)  # one θ_0 everywhere, whatever the init did
    conv, fc = split_model(model)
    # every rank takes part in making a group, members or not
    conv_group = dist.new_group(list(range(k))) if mode == "stanza" else None
    return _Rank(config, mode, k, ctx.rank, ctx.world, ctx.device, ds, model, conv, fc, conv_group)


def _train(
    me: _Rank,
    path: str | Path | None,
    overwrite: bool,
    progress: Callable[[int, int, float], None] | None,
) -> RankResult:
    """The steps of one rank; the writer (when recording) measures LCA around each update."""
    from .train import TrainingError

    config = me.config
    recording = path is not None
    is_writer = me.rank == me.writer_rank
    tracker = writer = None
    if is_writer and recording:
        tracker, writer = _open_tracker(config, me.model, me.ds, path, overwrite, me.world)
    evals: list[tuple[int, float, float]] = []
    status, message, done, seconds_train = "complete", "", 0, 0.0
    train_loss = float("nan")
    try:
        if tracker is not None:
            try:
                tracker.start()
            except (ValueError, OSError) as e:  # too large, no space: one sentence
                raise TrainingError(str(e)) from None
            evals.append(_log_eval(me, writer, 0, float("nan")))
        for step in range(config.steps):
            t0 = time.perf_counter()
            loss = me.gradients(step)
            seconds = time.perf_counter() - t0
            if tracker is not None:
                with tracker.step() as row:
                    t1 = time.perf_counter()
                    me.update(recording)
                    seconds += time.perf_counter() - t1
                    row.update(
                        {
                            "steps/train_loss": loss,
                            "steps/seconds_train": seconds,
                            "steps/lr": me.optimizer.param_groups[0]["lr"],
                        }
                    )
            else:
                t1 = time.perf_counter()
                me.update(recording)
                seconds += time.perf_counter() - t1
            me.traffic.end_step()
            seconds_train += seconds
            done = step + 1
            if not is_writer:
                continue
            train_loss = loss if loss is not None else train_loss
            if not math.isfinite(train_loss):
                raise _NonFinite(
                    f"The training loss became {train_loss} at step {step + 1}, so the run "
                    "stopped with every step before it kept; lower the learning rate."
                )
            if tracker is not None and (done % config.eval_every == 0 or done == config.steps):
                evals.append(_log_eval(me, writer, done, train_loss))
            if progress is not None:
                progress(done, config.steps, train_loss)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated)
        status, message = "interrupted", f"{getattr(e, 'what', 'Interrupted')} after {done} steps."
    except _NonFinite as e:
        status, message = "failed", str(e)
    except BaseException:
        if tracker is not None:
            _close_quietly(tracker, "failed")
        raise
    gathered = None  # every rank's per-step bytes on the writer, in rank order
    if status == "complete":
        gathered = distributed.gather_objects(me.traffic.per_step, dst=me.writer_rank)
    if tracker is not None:
        _write_parallel_records(writer, me, gathered, seconds_train, done)
        tracker.close(status)
    result = RankResult(
        rank=me.rank,
        role=me.role,
        status=status,
        message=message or f"Finished {done} steps.",
        steps=done,
        params=me.trained(),
        bytes_per_step=list(me.traffic.per_step),
        record_bytes=(me.traffic.sent["record"], me.traffic.received["record"]),
        seconds_train=seconds_train,
        path=str(path) if tracker is not None else None,
    )
    if gathered is not None:
        result.step_bytes = _mean_step_bytes(gathered)
    if tracker is not None:
        result.loss0 = tracker.loss0
        result.loss_final = tracker.last.loss_end if tracker.last else tracker.loss0
    if is_writer:
        if result.loss_final is None and math.isfinite(train_loss):
            result.loss_final = train_loss
        result.test_acc = evals[-1][2] if evals else None
    return result


def _log_eval(me: _Rank, writer: Any, step: int, train_loss: float) -> tuple[int, float, float]:
    """Accuracy of the whole model (the writer has every weight) into the run's /eval table."""
    from .train import EVAL_MAX_EXAMPLES, accuracy

    n, model = EVAL_MAX_EXAMPLES, me.model
    params = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    tr, _ = accuracy(model, params, me.train_x[:n], me.train_y[:n])
    x_test, y_test = me.ds.x_test[:n].to(me.device), me.ds.y_test[:n].to(me.device)
    te, te_loss = accuracy(model, params, x_test, y_test)
    writer.add_event("eval", [step, tr, te, te_loss, train_loss])
    return step, tr, te


def _open_tracker(config: RunConfig, model: nn.Module, ds: Any, path, overwrite: bool, world: int):
    """The writer's Tracker on the whole model, with the loop's series and the parallel arrays."""
    from .allocate import Tracker
    from .setup import measurement_set, val_measurement_set
    from .store import Writer
    from .train import EVAL_COLUMNS

    writer = Writer(
        path,
        record=config.record,
        config=config.to_dict(),
        max_bytes=config.max_bytes,
        expected_steps=config.steps,
        overwrite=overwrite,
    )
    tracker = Tracker(
        model,
        nn.CrossEntropyLoss(),
        measurement_set(ds, config),
        method=config.method,
        writer=writer,
        tolerance=config.tolerance,
        chunk_size=config.measure_batch,
        dtype=torch.float64 if config.measure_dtype == "float64" else torch.float32,
        device=next(model.parameters()).device,
        series={
            "steps/train_loss": ("f8", ()),
            "steps/seconds_train": ("f8", ()),
            "steps/lr": ("f8", ()),
        },
        events={"eval": EVAL_COLUMNS},
        arrays={
            BYTES_SENT: ("i8", (config.steps, world), -1),
            BYTES_RECEIVED: ("i8", (config.steps, world), -1),
            INFO: (f"S{INFO_BYTES}", (), b""),
        },
        error_every=config.error_every,
        val_data=val_measurement_set(ds, config) if config.measure_val else None,
        adapt_on=config.adapt_on,
        param_tolerance=config.param_tolerance,
    )
    return tracker, writer


def _write_parallel_records(
    writer: Any, me: _Rank, gathered: list | None, seconds: float, steps: int
) -> None:
    """Per-step bytes of every rank and the run's parallel facts (JSON) into the run file."""
    config, world = me.config, me.world
    info: dict[str, Any] = {
        "mode": me.mode,
        "k": me.k,
        "staleness": config.staleness if me.mode == "stanza" else 0,
        "world": world,
        "writer_rank": me.writer_rank,
        "roles": ["conv"] * me.k + ["fc"] if me.mode == "stanza" else ["replica"] * world,
        "batch_per_rank": config.batch_size,
        "steps_per_second": steps / seconds if seconds > 0 else None,
    }
    if gathered is not None:
        sent = np.full((config.steps, world), -1, dtype=np.int64)
        received = np.full((config.steps, world), -1, dtype=np.int64)
        for r, rows in enumerate(gathered):
            for s, (a, b) in enumerate(rows[: config.steps]):
                sent[s, r], received[s, r] = a, b
        writer.set_array(BYTES_SENT, sent)
        writer.set_array(BYTES_RECEIVED, received)
        info["bytes_sent_per_step"], info["bytes_received_per_step"] = _mean_step_bytes(gathered)
    writer.set_array(INFO, json.dumps(info).encode()[:INFO_BYTES])


def _close_quietly(tracker: Any, status: str) -> None:
    try:
        tracker.close(status)
    except Exception:  # noqa: BLE001 - the original error matters more
        pass


# ---------------------------------------------------------------------------------------------
# Spawning the processes locally (no torchrun): tests, benchmarks, the CLI without torchrun.


def _child(
    rank: int,
    world: int,
    port: int,
    config_json: str,
    out: str | None,
    overwrite: bool,
    result_dir: str,
    threads: int,
) -> None:
    """One spawned rank: torchrun's environment, then :func:`run_rank`; its RankResult (or the
    error, as text) is saved to ``result_dir/rank-N.pt``."""
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(threads)
    # Only the parent answers Ctrl-C; it ends the ranks with SIGTERM (Launch.close), which each
    # handles like Ctrl-C once (status "interrupted", the file closed), also when the parent
    # itself is killed (Linux: the parent-death signal).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _terminated)
    _term_with_parent()
    target = Path(result_dir) / f"rank-{rank}.pt"
    try:
        result = run_rank(RunConfig.from_json(config_json), out, overwrite=overwrite)
        torch.save({"ok": result.__dict__}, target)
    except BaseException as e:  # noqa: BLE001 - reported to the parent as one sentence
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        trace = traceback.format_exc()
        torch.save({"error": text, "type": type(e).__name__, "trace": trace}, target)
        raise SystemExit(1) from None


class _Stopped(KeyboardInterrupt):
    """A spawned rank ended by its parent (Ctrl-C, the app's Stop, or the parent's end)."""

    what = "Stopped"


def _terminated(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: never inside the clean-up
    raise _Stopped


def _term_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies (elsewhere: nothing)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Launch:
    """The run's processes on this machine, spawned with torch.multiprocessing (gloo, a free
    local port). ``with Launch(config, out) as launch: results = launch.wait(timeout)``; leaving
    the block ends every process still alive, whatever happened."""

    def __init__(
        self,
        config: RunConfig,
        out: str | Path | None = None,
        *,
        overwrite: bool = False,
        threads: int = 1,
    ) -> None:
        from .serve import free_port

        check(config)
        if mode_of(config) is None:
            raise StanzaError("Launch needs --stanza K or --data-parallel K.")
        if config.device == "auto":  # spawned ranks share this machine: CPU and gloo
            config = config.replace(device="cpu")
        self.world = world_for(config)
        self._dir = tempfile.TemporaryDirectory(prefix="lca-stanza-")
        ctx = torch.multiprocessing.get_context("spawn")
        port = free_port()
        self.processes = [
            ctx.Process(
                target=_child,
                args=(
                    r,
                    self.world,
                    port,
                    config.to_json(),
                    None if out is None else str(out),
                    overwrite,
                    self._dir.name,
                    threads,
                ),
                daemon=True,
            )
            for r in range(self.world)
        ]
        for p in self.processes:
            p.start()

    def wait(self, timeout: float = 600.0) -> list[RankResult]:
        """Join every rank (``timeout`` seconds each, only a guard against a hung peer); the
        ranks' results in rank order, or the first rank's error as one sentence."""
        for p in self.processes:
            p.join(timeout)
        hung = [r for r, p in enumerate(self.processes) if p.is_alive()]
        results: list[RankResult] = []
        errors: list[str] = []
        for r in range(self.world):
            f = Path(self._dir.name) / f"rank-{r}.pt"
            if not f.exists():
                continue
            saved = torch.load(f, weights_only=False)
            if "ok" in saved:
                results.append(RankResult(**saved["ok"]))
            else:
                errors.append(saved["error"])
        if errors:
            raise StanzaError(errors[0])
        if hung:
            raise StanzaError(
                f"Rank {hung[0]} did not finish within {timeout:.0f} s; it was stopped."
            )
        if len(results) != self.world:
            codes = [p.exitcode for p in self.processes]
            raise StanzaError(f"A rank ended without a result (exit codes {codes}).")
        return results

    def close(self) -> None:
        """End every process still alive (terminate, then kill) and remove the result files."""
        for p in self.processes:
            if p.is_alive():
                p.terminate()
        for p in self.processes:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join(30)
        self._dir.cleanup()

    def __enter__(self) -> Launch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _mean_step_bytes(per_rank: list[list[tuple[int, int]]]) -> tuple[float, float]:
    steps = min(len(rows) for rows in per_rank)
    if steps == 0:
        return 0.0, 0.0
    sent = sum(a for rows in per_rank for a, _ in rows[:steps])
    received = sum(b for rows in per_rank for _, b in rows[:steps])
    return sent / steps, received / steps


def writer_result(results: list[RankResult]) -> RankResult:
    """The rank that wrote the run file (the FC rank in Stanza, rank 0 in data parallel)."""
    fc = [r for r in results if r.role == "fc"]
    return fc[0] if fc else results[0]


def bytes_per_step(results: list[RankResult]) -> tuple[float, float]:
    """Mean training bytes per step (sent, received), summed over every rank."""
    return _mean_step_bytes([r.bytes_per_step for r in results])


def writer_rank(config: RunConfig) -> int:
    """The rank that writes the run file: the FC rank (K) in Stanza, rank 0 in data parallel."""
    return config.stanza if config.stanza > 0 else 0
