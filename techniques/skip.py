"""Weight update skipping (WUS) and WUS with a learning-rate scheduler (WUS+LR).

Safayenikoo & Akturk (2020) skip updating the weights while the accuracy improvement varies
only minutely; biases keep updating. Their exact criterion is not public, so this is a
*reconstruction* (REFERENCE §2): every ``window`` steps the accuracy is measured and compared
with the previous check; after ``warmup`` steps, ``patience`` consecutive checks whose change
|Δ| is below ``threshold`` start a skip window of ``skip_windows`` windows, after which the
weights train again and the accuracy is re-measured as a fresh baseline.

Why skipping drops the gradient (``grad = None``) and never zeroes it: with a zero gradient
SGD-momentum, weight decay, Adam and AdamW still move the weight (the momentum buffer / Adam's
moments keep pushing it) and still change the optimizer state. With ``grad = None`` every torch
optimizer leaves the weight *and its state* untouched, so the skipped weights are bit-identical
across the window and their LCA is exactly 0 there. ``no_grad`` additionally turns
``requires_grad`` off during skip windows so backward does not even compute the weight
gradients: that is where the time saving comes from. LCA is unaffected, because the measurer
builds its own leaves from the weights.

The accuracy check runs in ``before_forward`` (before each step's minibatch and forward pass),
i.e. before the loop starts the step's timer, so ``steps/seconds_train`` measures training only
and the skipped-vs-normal step times in the summary compare like with like. The check uses
``ctx.evaluate()`` (accuracy with the weights the forward pass uses, on at most 5,000 examples of
the training split by default) rather than the current minibatch, whose accuracy is far too noisy
to detect a plateau of a fraction of a percent.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from . import register
from .base import Context, Declarations, Option, Technique

SECONDS_KEY = "steps/seconds_train"  # the loop's per-step training time, filled after after_step


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


@register
class WeightUpdateSkipping(Technique):
    """Skip Linear/Conv weight updates for a while when the accuracy plateaus."""

    name = "wus"
    roles = ("update-skipping",)
    description = (
        "Weight update skipping: when the accuracy stops changing, Linear/Conv weights stop "
        "updating for a few windows while biases and norm layers keep training."
    )
    reconstructed = True
    options: dict[str, Option] = {
        "window": Option(10, "steps between accuracy checks", int, minimum=1),
        "threshold": Option(
            0.005,
            "accuracy change below which a window counts as a plateau (0.005 = 0.5 points)",
            float,
            minimum=0.0,
        ),
        "patience": Option(2, "consecutive plateau windows before skipping starts", int, minimum=1),
        "warmup": Option(50, "steps before the first plateau may count", int, minimum=0),
        "skip_windows": Option(
            2, "windows to skip weight updates for once triggered", int, minimum=1
        ),
        "accuracy": Option(
            "train",
            "split whose accuracy is watched: train or test",
            str,
            choices=("train", "test"),
        ),
        "no_grad": Option(
            True,
            "also turn requires_grad off on skipped weights so backward skips their "
            "gradient matmuls (this is what saves time)",
            bool,
        ),
    }

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self._targets: list[str] = []
        self._target_numel = 0
        self._total_numel = 0
        self._skipping = False
        self._skip_start = 0
        self._skip_until = 0
        self._disabled: list[str] = []  # weights whose requires_grad this technique turned off
        self._prev_acc: float | None = None
        self._last_check = 0
        self._calm = 0
        self._checks = 0
        self._windows: list[tuple[int, int]] = []
        self._steps = 0
        self._skipped = 0
        self._seconds: dict[bool, list[float]] = {False: [], True: []}
        self._pending: tuple[bool, dict[str, object]] | None = None
        self._ctx: Context | None = None
        self._last_acc = float("nan")

    # -- declarations --------------------------------------------------------------------------
    def declare(self, ctx: Context) -> Declarations:
        return Declarations(
            series={"skipping": ("i1", ())},
            events={"windows": ("start", "end"), "accuracy": ("step", "accuracy", "delta")},
        )

    # -- hooks -----------------------------------------------------------------------------------
    def setup(self, ctx: Context) -> None:
        self._ctx = ctx
        params = ctx.params()
        self._targets = [n for n in self.weight_names(ctx.model) if n in params]
        self._target_numel = sum(params[n].numel() for n in self._targets)
        self._total_numel = sum(p.numel() for p in params.values())

    def before_forward(self, ctx: Context) -> None:
        """The per-step decision point: end a skip window or run the window's accuracy check."""
        step = ctx.step
        if self._prev_acc is None:  # baseline at the first step
            self._prev_acc = self._measure(ctx)
            self._last_check = step
            self._checks += 1
            ctx.event(self, "accuracy", [step, self._prev_acc, float("nan")])
        elif self._skipping:
            if step >= self._skip_until:
                self._stop_skipping(ctx, step)
                self._check(ctx, step, resumed=True)
        elif step - self._last_check >= self.opts["window"]:
            self._check(ctx, step, resumed=False)

    def before_step(self, ctx: Context) -> None:
        if not self._skipping:
            return
        params = ctx.params()
        for n in self._targets:
            params[n].grad = None  # dropped, not zeroed: see the module docstring

    def after_step(self, ctx: Context, row: dict[str, object]) -> None:
        self._harvest()
        row[self.path("skipping")] = int(self._skipping)
        self._steps += 1
        self._skipped += int(self._skipping)
        self._pending = (self._skipping, row)
        if self._skipping and ctx.step + 1 >= ctx.total_steps:  # the run ends inside a window
            self._stop_skipping(ctx, ctx.step + 1)

    def summary(self) -> dict[str, Any]:
        self._harvest()
        normal, skipped = _mean(self._seconds[False]), _mean(self._seconds[True])
        windows = list(self._windows)
        if self._skipping:
            windows.append((self._skip_start, self._steps))  # interrupted inside a window
        out: dict[str, Any] = {
            "steps": self._steps,
            "steps_skipped": self._skipped,
            "fraction_steps_skipped": self._skipped / self._steps if self._steps else 0.0,
            # Share of all parameter-element updates that were skipped (weights only skip).
            "fraction_updates_skipped": (
                self._skipped * self._target_numel / (self._steps * self._total_numel)
                if self._steps and self._total_numel
                else 0.0
            ),
            "windows": len(windows),
            "accuracy_checks": self._checks,
            "last_accuracy": self._last_acc,
            "seconds_step_normal": normal,
            "seconds_step_skipped": skipped,
        }
        if self._seconds[False] and self._seconds[True] and normal > 0:
            total = sum(self._seconds[False]) + sum(self._seconds[True])
            out["time_saved_fraction"] = 1.0 - total / (normal * self._steps)
        return out

    # -- internals -------------------------------------------------------------------------------
    def _measure(self, ctx: Context) -> float:
        """Accuracy of the weights in use on the watched split."""
        if ctx.evaluate is not None:
            train_acc, test_acc = ctx.evaluate()
            acc = train_acc if self.opts["accuracy"] == "train" else test_acc
        else:  # a loop without an evaluator: plain accuracy of the model itself
            x, y = (
                (ctx.train_x, ctx.train_y)
                if self.opts["accuracy"] == "train"
                else (ctx.test_x, ctx.test_y)
            )
            was = ctx.model.training
            ctx.model.eval()
            with torch.no_grad():
                acc = float((ctx.model(x[:5000]).argmax(1) == y[:5000]).float().mean())
            ctx.model.train(was)
        self._last_acc = float(acc)
        return self._last_acc

    def _check(self, ctx: Context, step: int, *, resumed: bool) -> None:
        acc = self._measure(ctx)
        delta = acc - (self._prev_acc if self._prev_acc is not None else acc)
        self._prev_acc, self._last_check = acc, step
        self._checks += 1
        ctx.event(self, "accuracy", [step, acc, delta])
        if resumed:  # after a skip window the plateau must be seen afresh
            self._calm = 0
        elif step >= self.opts["warmup"] and abs(delta) < self.opts["threshold"]:
            self._calm += 1
        else:
            self._calm = 0
        self._on_check(ctx, step, acc)
        if self._calm >= self.opts["patience"]:
            self._start_skipping(ctx, step)

    def _on_check(self, ctx: Context, step: int, acc: float) -> None:
        """Extension point for WUS+LR (same accuracy signal)."""

    def _start_skipping(self, ctx: Context, step: int) -> None:
        self._skipping = True
        self._calm = 0
        self._skip_start = step
        self._skip_until = step + self.opts["skip_windows"] * self.opts["window"]
        if self.opts["no_grad"]:
            params = ctx.params()
            others_train = any(p.requires_grad for n, p in params.items() if n not in self._targets)
            if others_train:  # otherwise the loss would have no gradient at all
                for n in self._targets:
                    if params[n].requires_grad:
                        params[n].requires_grad_(False)
                        self._disabled.append(n)

    def _stop_skipping(self, ctx: Context, step: int) -> None:
        params = ctx.params()
        for n in self._disabled:
            params[n].requires_grad_(True)
        self._disabled = []
        self._skipping = False
        self._windows.append((self._skip_start, step))
        ctx.event(self, "windows", [self._skip_start, step])
        self._last_check = step

    def _harvest(self) -> None:
        """Read the loop's step time of the previous step (it fills the row after after_step)."""
        if self._pending is None:
            return
        skipping, row = self._pending
        seconds = row.get(SECONDS_KEY)
        if isinstance(seconds, int | float) and math.isfinite(seconds):
            self._seconds[skipping].append(float(seconds))
        self._pending = None


@register
class WeightUpdateSkippingLR(WeightUpdateSkipping):
    """WUS plus reduce-on-plateau of the learning rate, on the same accuracy checks."""

    name = "wus-lr"
    description = (
        "Weight update skipping plus a reduce-on-plateau learning rate driven by the same "
        "accuracy checks."
    )
    reconstructed = True
    options: dict[str, Option] = {
        **WeightUpdateSkipping.options,
        "factor": Option(
            0.5,
            "learning-rate multiplier applied on each plateau",
            float,
            minimum=0.01,
            maximum=1.0,
        ),
        "min_factor": Option(
            0.01, "lowest learning-rate multiplier", float, minimum=0.0, maximum=1.0
        ),
        "lr_patience": Option(
            2,
            "checks without an accuracy gain above threshold before the learning rate drops",
            int,
            minimum=1,
        ),
    }

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self._best = -math.inf
        self._bad = 0
        self._reductions = 0
        self._factor = 1.0

    def declare(self, ctx: Context) -> Declarations:
        decl = super().declare(ctx)
        decl.series["lr_factor"] = ("f8", ())
        decl.events["lr"] = ("step", "lr_factor")
        return decl

    def _on_check(self, ctx: Context, step: int, acc: float) -> None:
        if acc > self._best + self.opts["threshold"]:
            self._best, self._bad = acc, 0
            return
        self._bad += 1
        if self._bad < self.opts["lr_patience"] or step < self.opts["warmup"]:
            return
        self._bad = 0
        new = max(self.opts["min_factor"], ctx.lr_factor * self.opts["factor"])
        if new < ctx.lr_factor:
            ctx.lr_factor = new
            self._reductions += 1
            ctx.event(self, "lr", [step, new])

    def after_step(self, ctx: Context, row: dict[str, object]) -> None:
        super().after_step(ctx, row)
        self._factor = ctx.lr_factor
        row[self.path("lr_factor")] = ctx.lr_factor

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["lr_reductions"] = self._reductions
        out["final_lr_factor"] = self._factor
        return out
