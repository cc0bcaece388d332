"""Random LCA records for a run layout: what the writer's benchmark and the size tests feed a
``Writer`` to measure its time and its file without training anything.

The values are noise (float32, per weight) with the sums the tracker would derive from them
(per tensor and per unit in float64), so a file written from them has every dataset a real run
of that layout has, at real sizes.
"""

from __future__ import annotations

import numpy as np
import torch

from .allocate import KIND_STEP, Layout, StepRecord, sum_units


def random_record(
    layout: Layout,
    index: int,
    generator: torch.Generator,
    *,
    scale: float = 1e-6,
    loss: float = 2.3,
) -> StepRecord:
    """Optimizer step ``index`` of a run of ``layout``: per-weight LCA ~ N(0, scale²), its
    per-tensor and per-unit sums, and a loss that stays at ``loss``."""
    per_param = {
        n: torch.randn(s, generator=generator) * scale
        for n, s in zip(layout.names, layout.shapes, strict=True)
    }
    return StepRecord(
        index=index,
        kind=KIND_STEP,
        train_step=index + 1,
        label="",
        loss_start=loss,
        loss_end=loss,
        per_param=per_param,
        per_tensor=np.array([float(a.double().sum()) for a in per_param.values()]),
        per_unit=sum_units(per_param, list(layout.units)),
        helped=0.5,
        hurt=0.5,
        splits=1,
        evaluations=2,
        seconds_lca=0.0,
        wall=0.0,
    )


__all__ = ["random_record"]
