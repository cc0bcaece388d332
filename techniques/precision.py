"""Mixed precision: the training forward pass under ``torch.autocast``.

bfloat16 has float32's exponent range, so on CPU (and wherever bf16 is chosen) no loss scaling
is needed. float16 underflows small gradients, so it comes with ``torch.amp.GradScaler``: the
loss is multiplied by a scale before backward, the gradients are unscaled before the step, and a
step whose gradients overflowed is skipped by the scaler, which then halves the scale. That skip
is visible only as a drop of ``get_scale()`` after ``update()``, which is what ``skipped`` records.

LCA is unaffected by the training precision: autocast wraps only the training forward pass, and
the tracker measures the loss and its gradients in float32 (or float64) on the weights themselves.
A step the scaler skipped leaves every weight unchanged, so its LCA is exactly 0.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch

from . import register
from .base import Context, Declarations, Option, Technique, TechniqueError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@register
class MixedPrecision(Technique):
    """Autocast the training forward; fp16 adds a GradScaler."""

    name = "amp"
    roles = ("backward", "arithmetic")
    description = (
        "Mixed precision: the training forward runs in bfloat16 (CPU) or float16 with loss "
        "scaling (CUDA); LCA is still measured in float32."
    )
    options: dict[str, Option] = {
        "dtype": Option(
            "auto",
            "auto (bf16 on CPU, fp16 on CUDA), bf16 or fp16",
            str,
            choices=("auto", "bf16", "fp16"),
        ),
        "init_scale": Option(
            2.0**16, "initial loss scale of the GradScaler (fp16 only)", float, minimum=1.0
        ),
        "growth_interval": Option(
            2000, "steps without overflow before the scale doubles (fp16 only)", int, minimum=1
        ),
    }

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self._dtype_name = ""
        self._dtype = torch.bfloat16
        self._device_type = "cpu"
        self.scaler: torch.amp.GradScaler | None = None
        self._scale = 1.0
        self._skipped = False
        self._steps = 0
        self._skips = 0

    def declare(self, ctx: Context) -> Declarations:
        return Declarations(series={"scale": ("f8", ()), "skipped": ("i1", ())})

    def setup(self, ctx: Context) -> None:
        self._device_type = ctx.device.type
        choice = self.opts["dtype"]
        if choice == "auto":
            choice = "fp16" if self._device_type == "cuda" else "bf16"
        self._dtype_name, self._dtype = choice, DTYPES[choice]
        if not torch.amp.is_autocast_available(self._device_type):
            raise TechniqueError(
                f"Technique 'amp' cannot autocast on device {self._device_type!r}; use cpu or cuda."
            )
        if choice == "fp16":
            self.scaler = torch.amp.GradScaler(
                self._device_type,
                init_scale=self.opts["init_scale"],
                growth_interval=self.opts["growth_interval"],
            )
            self._scale = float(self.scaler.get_scale())

    def autocast(self, ctx: Context) -> AbstractContextManager | None:
        return torch.autocast(device_type=self._device_type, dtype=self._dtype)

    def backward(self, ctx: Context, loss: torch.Tensor) -> bool:
        if self.scaler is None:
            return False
        self.scaler.scale(loss).backward()
        return True

    def optimizer_step(self, ctx: Context) -> bool:
        self._skipped = False
        if self.scaler is None:
            return False
        before = float(self.scaler.get_scale())
        self.scaler.step(ctx.optimizer)
        self.scaler.update()
        after = float(self.scaler.get_scale())
        self._scale = before  # the scale this step's gradients were computed with
        self._skipped = after < before  # the scaler found inf/NaN gradients and did not step
        return True

    def after_step(self, ctx: Context, row: dict[str, object]) -> None:
        row[self.path("scale")] = self._scale
        row[self.path("skipped")] = int(self._skipped)
        self._steps += 1
        self._skips += int(self._skipped)
        self._skipped = False
        if self.scaler is not None:
            self._scale = float(self.scaler.get_scale())

    def summary(self) -> dict[str, Any]:
        return {
            "dtype": self._dtype_name,
            "device": self._device_type,
            "grad_scaler": self.scaler is not None,
            "steps": self._steps,
            "steps_skipped_by_scaler": self._skips,
            "final_scale": self._scale,
        }
