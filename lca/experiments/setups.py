"""The runs the experiments train, defined once so that experiments share them.

Why shared: the same fc-mnist-on-digits run answers "how many parameters help", "which layers
help", "are layers synchronized" and is the unpruned/unfrozen baseline; defining each setup once
makes the configs identical, so the run cache trains it once.

Sizes: the default size keeps ``python -m lca experiment all`` to minutes on 2 shared CPU cores
with the bundled digits (8×8, 1,438 training images, all of them the measurement set, as in the
paper); ``tiny`` shrinks everything to seconds for the tests. MNIST / CIFAR-10 setups are used only
when the user's data folder has them (nothing is downloaded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import RunConfig
from .common import ExperimentContext, dataset_available


@dataclass(frozen=True)
class Setup:
    """A named run: label (used in file names and tables) and its config."""

    label: str
    config: RunConfig
    note: str = ""


def _digits(
    ctx: ExperimentContext,
    model: str,
    *,
    steps: int,
    tiny_steps: int,
    record: str = "full",
    **overrides: Any,
) -> RunConfig:
    values: dict[str, Any] = {
        "dataset": "digits",
        "model": model,
        "steps": ctx.size(steps, tiny_steps),
        "measure_size": ctx.size(None, 128),  # the whole training split (1,438) as in the paper
        "optimizer": "momentum",
        "lr": 0.05,
        "momentum": 0.9,
        "batch_size": 64,
        "seed": 0,
        "method": "rk4",
        "record": record,
        "device": "cpu",  # reproducible numbers; these models are too small to gain on a GPU
        "eval_every": ctx.size(25, 4),
        **overrides,
    }
    return RunConfig.from_dict(values)


def fc_mnist_digits(ctx: ExperimentContext, **overrides: Any) -> Setup:
    """The paper's 784-100-50-10 net, here on 8×8 digits (64-100-50-10, 12,060 parameters)."""
    cfg = _digits(ctx, "fc-mnist", steps=400, tiny_steps=16, **overrides)
    return Setup("digits-fc-mnist", cfg, "64-100-50-10 on 8×8 digits (paper: 784-100-50-10)")


def lenet_digits(ctx: ExperimentContext, **overrides: Any) -> Setup:
    """The paper's LeNet on 8×8 digits: same layers, flatten 40·2·2 = 160 (88,970 parameters)."""
    cfg = _digits(ctx, "lenet", steps=200, tiny_steps=10, **overrides)
    return Setup("digits-lenet", cfg, "paper's LeNet on 8×8 digits (fc1 sees 40×2×2)")


def resnet20_digits(ctx: ExperimentContext, **overrides: Any) -> Setup:
    """ResNet-20 at width 4 (paper: 16) with the paper's optimizer (SGD 0.1, momentum 0.9,
    batch 250), few steps: the full-width net for 4,500 steps does not fit the time budget."""
    cfg = _digits(
        ctx,
        "resnet20",
        steps=250,
        tiny_steps=10,
        model_options={"width": ctx.size(4, 2)},
        lr=0.1,
        batch_size=ctx.size(250, 64),
        **overrides,
    )
    return Setup(
        "digits-resnet20", cfg, "ResNet-20 width 4 on 8×8 digits (paper: width 16 on CIFAR-10)"
    )


def integrator_setup(
    ctx: ExperimentContext, model: str, method: str, dtype: str = "float32", tolerance: float = 1e-3
) -> Setup:
    """The MLP / small CNN of the integrator table; only the LCA method (dtype, adaptive
    tolerance) varies, so every method allocates the very same training trajectory."""
    cfg = _digits(
        ctx,
        model,
        steps=150,
        tiny_steps=8,
        record="layers",
        method=method,
        measure_dtype=dtype,
        tolerance=tolerance,
    )
    suffix = "" if dtype == "float32" else "-f64"
    if tolerance != 1e-3:
        suffix += f"-tol{tolerance:.0e}"
    return Setup(f"digits-{model}-{method}{suffix}", cfg)


def mnist_setups(ctx: ExperimentContext) -> list[Setup]:
    """fc-mnist and LeNet on (a subset of) real MNIST, when the data folder has it."""
    if not dataset_available("mnist", ctx.data_dir):
        return []
    out = []
    for model, record, steps in (("fc-mnist", "full", 1000), ("lenet", "units", 500)):
        cfg = RunConfig.from_dict(
            {
                "dataset": "mnist",
                "data_dir": ctx.data_dir,
                "subset": ctx.size(10000, 200),
                "model": model,
                "steps": ctx.size(steps, 6),
                "measure_size": ctx.size(2000, 64),
                "optimizer": "momentum",
                "lr": 0.05,
                "momentum": 0.9,
                "batch_size": 64,
                "seed": 0,
                "method": "rk4",
                "record": record,
                "device": "auto",
                "eval_every": ctx.size(50, 3),
            }
        )
        out.append(Setup(f"mnist-{model}", cfg, f"{model} on an MNIST subset"))
    return out


def cifar_setups(ctx: ExperimentContext) -> list[Setup]:
    """ResNet-20 (width 16, the paper's net) on a CIFAR-10 subset, when the data folder has it."""
    if not dataset_available("cifar10", ctx.data_dir):
        return []
    cfg = RunConfig.from_dict(
        {
            "dataset": "cifar10",
            "data_dir": ctx.data_dir,
            "subset": ctx.size(5000, 100),
            "model": "resnet20",
            "model_options": {"width": ctx.size(16, 2)},
            "steps": ctx.size(400, 4),
            "measure_size": ctx.size(1000, 32),
            "optimizer": "momentum",
            "lr": 0.1,
            "momentum": 0.9,
            "batch_size": ctx.size(250, 32),
            "seed": 0,
            "method": "rk4",
            "record": "units",
            "device": "auto",
            "eval_every": ctx.size(50, 2),
        }
    )
    return [Setup("cifar10-resnet20", cfg, "ResNet-20 on a CIFAR-10 subset")]


# The LCA paper's MNIST protocol (REFERENCE.md §1), for ``--scale paper --dataset NAME``:
# 55,000 training examples (the paper holds 5,000 of the 60,000 out for validation; we keep a
# seeded 55,000), the whole training split as the measurement set in equal chunks of 1,000,
# and the paper's adaptive rule at 1e-3. The optimizer, schedule and step counts of the paper's
# MNIST runs are not in our reference, so they are ours: the quick scale's momentum SGD (lr
# 0.05, momentum 0.9, batch 64, constant) and PAPER_STEPS.
PAPER_TRAIN = 55_000
PAPER_CHUNK = 1_000
PAPER_STEPS = {"fc-mnist": 1_000, "lenet": 500}
PAPER_RECORD = {"fc-mnist": "full", "lenet": "units"}  # LeNet full: 1.6 GB per 500 steps
PAPER_DATASETS = ("fashion-mnist", "mnist")


def _for_model(value: int | dict[str, int] | None, model: str) -> int | None:
    """A reduction given for both models (int) or per model ({model: int})."""
    return value.get(model) if isinstance(value, dict) else value


def paper_setups(ctx: ExperimentContext, **overrides: Any) -> list[Setup]:
    """fc-mnist (84,060 parameters) and LeNet (808,970) on 28×28 images at the paper's protocol,
    when ``--scale paper`` was asked for; ``ctx.paper_steps`` / ``ctx.paper_measure`` shrink the
    runs (a reduced run, labelled as such)."""
    if ctx.scale != "paper" or ctx.dataset is None:
        return []
    out = []
    for model in ("fc-mnist", "lenet"):
        steps = ctx.size(_for_model(ctx.paper_steps, model) or PAPER_STEPS[model], 6)
        measure = ctx.size(_for_model(ctx.paper_measure, model), 64)
        reduced = steps < PAPER_STEPS[model] or measure is not None
        cfg = RunConfig.from_dict(
            {
                "dataset": ctx.dataset,
                "data_dir": ctx.data_dir,
                "subset": ctx.size(PAPER_TRAIN, 200),
                "model": model,
                "steps": steps,
                "measure_size": measure,  # None: the whole training split
                "measure_batch": ctx.size(PAPER_CHUNK, 32),
                "optimizer": "momentum",
                "lr": 0.05,
                "momentum": 0.9,
                "batch_size": 64,
                "seed": 0,
                "method": "rk4-paper",
                "tolerance": 1e-3,
                "measure_val": True,  # the paper's rule: training and validation within 1e-3
                "record": PAPER_RECORD[model],
                "device": "auto",
                "eval_every": ctx.size(50, 3),
                **overrides,
            }
        )
        label = f"paper-{ctx.dataset}-{model}" + ("-reduced" if reduced else "")
        note = f"{model} on {ctx.dataset} at the paper's protocol" + (
            f", reduced to {steps} steps and a measurement set of {measure or PAPER_TRAIN:,}"
            if reduced
            else ""
        )
        out.append(Setup(label, cfg, note))
    return out
