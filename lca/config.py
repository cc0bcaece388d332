"""The run configuration: one validated dataclass behind the CLI, TOML files and the app.

A run file stores its config as JSON, so a run can always be repeated or compared. Every bad
value is refused with one sentence naming the field, the value and what is allowed, before any
work starts.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

import data
import techniques

from . import models
from .integrate import ADAPT_ON, METHOD_HELP, METHODS
from .spec import Spec, setting

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "linear")
RECORD_MODES = ("full", "units", "layers")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "float64")
FLOAT32_MAX = 3.4e38


class ConfigError(ValueError):
    """A config value is not allowed; the message names the field, the value and the choices."""


def _dataset_names() -> list[str]:
    return data.names()


def _model_names() -> list[str]:
    return models.names()


# Each field is one line of facts: default, type, help, allowed values, and how the CLI (flag)
# and the Train form (label, widget: section, step, format, when) ask for it. The CLI flags
# (lca/cli.py) and the form (pages/train.py) are built from these; ``validate`` checks them.
# widget "section": the form section that shows the field (none: not on the form), two fields
# per column in field order; "zero_is_none": 0 stands for None (the form and the CLI);
# "when": (field, value) the field matters only for; "caption": value -> a line shown below.
@dataclass
class RunConfig:
    """Everything that defines a run (the file's ``config`` attribute is this, as JSON)."""

    dataset: str = setting(
        "digits",
        str,
        "toy 2-D and scikit-learn sets are built in; MNIST, Fashion-MNIST and "
        "CIFAR-10 are read from the data folder",
        choices=_dataset_names,
        label="Dataset",
    )
    dataset_options: dict[str, Any] = setting(
        {}, dict, "dataset option, e.g. noise=0.2 (repeatable)", flag="--dataset-option"
    )
    data_dir: str | None = setting(
        None,
        str,
        "folder with MNIST / Fashion-MNIST / CIFAR-10 files (default: $LCA_DATA_DIR)",
        optional=True,
        from_text=True,
        label="Data folder",
    )
    subset: int | None = setting(
        None,
        int,
        "keep this many training examples (default: all)",
        minimum=1,
        optional=True,
        label="Training examples to use (0 = all)",
        widget={"zero_is_none": True, "step": 100},
    )
    model: str = setting("mlp", str, "", choices=_model_names, label="Model")
    model_options: dict[str, Any] = setting(
        {}, dict, "model option, e.g. hidden=[64,32] (repeatable)", flag="--model-option"
    )
    optimizer: str = setting(
        "momentum",
        str,
        "training optimizer",
        choices=OPTIMIZERS,
        label="Optimizer",
        widget={"section": "Optimizer"},
    )
    lr: float = setting(
        0.05,
        float,
        "learning rate",
        above=0,
        maximum=FLOAT32_MAX,
        label="Learning rate",
        widget={"section": "Optimizer"},
    )
    momentum: float = setting(
        0.9,
        float,
        "momentum of --optimizer momentum",
        minimum=0,
        below=1,
        label="Momentum",
        widget={
            "section": "Optimizer",
            "max": 0.999,
            "format": "%.4g",
            "when": ("optimizer", "momentum"),
        },
    )
    weight_decay: float = setting(
        0.0,
        float,
        "L2 weight decay of the optimizer",
        minimum=0,
        label="Weight decay",
        widget={"section": "Optimizer"},
    )
    schedule: str = setting(
        "constant",
        str,
        "learning-rate schedule",
        choices=SCHEDULES,
        label="Learning-rate schedule",
        widget={"section": "Optimizer"},
    )
    batch_size: int = setting(
        64,
        int,
        "training minibatch size",
        minimum=1,
        label="Batch size",
        widget={"section": "Optimizer"},
    )
    steps: int = setting(
        200,
        int,
        "optimizer steps",
        minimum=1,
        label="Steps",
        widget={"section": "Optimizer", "step": 10},
    )
    seed: int = setting(
        0,
        int,
        "seed of the data split, init and batches",
        minimum=0,
        label="Seed",
        widget={"section": "Optimizer"},
    )
    measure_size: int | None = setting(
        2000,
        int,
        "examples in the measurement set (0 = the whole training split)",
        minimum=1,
        optional=True,
        label="Measurement-set size (0 = whole training split)",
        widget={"section": "LCA measurement", "zero_is_none": True, "step": 100},
    )
    measure_batch: int = setting(
        2048,
        int,
        "chunk size of the measurement set (examples per forward pass)",
        minimum=1,
        label="Measurement chunk",
        widget={"section": "LCA measurement", "step": 256},
    )
    method: str = setting(
        "rk4",
        str,
        "LCA integrator: " + "; ".join(f"{k}: {v}" for k, v in METHOD_HELP.items()),
        choices=METHODS,
        label="LCA method",
        widget={"section": "LCA measurement", "caption": METHOD_HELP},
    )
    tolerance: float = setting(
        1e-3,
        float,
        "rk4-adaptive / rk4-paper: |ΔL − ΣA| allowed per step",
        above=0,
        label="Tolerance",
        widget={
            "section": "LCA measurement",
            "format": "%.2e",
            "when": ("method", ("rk4-adaptive", "rk4-paper")),
        },
    )
    measure_dtype: str = setting(
        "float32",
        str,
        "precision LCA is measured in",
        choices=DTYPES,
        label="Measurement precision",
        widget={"section": "LCA measurement"},
    )
    techniques: list[dict[str, Any]] = setting(
        [], list, "efficiency technique (repeatable)", item=dict, flag="--technique"
    )
    record: str = setting(
        "full",
        str,
        "full: every parameter; units: per neuron/channel; layers: per tensor",
        choices=RECORD_MODES,
        label="Record",
        widget={"section": "LCA measurement"},
    )
    device: str = setting(
        "auto",
        str,
        "auto: CUDA when available, else CPU",
        choices=DEVICES,
        label="Device",
        widget={"section": "LCA measurement"},
    )
    eval_every: int = setting(
        20,
        int,
        "steps between train/test accuracy checks",
        minimum=1,
        label="Accuracy check every (steps)",
        widget={"section": "LCA measurement", "step": 5},
    )
    max_bytes: int | None = setting(
        None,
        int,
        "refuse, before it starts, a run whose file would exceed this many bytes "
        "(the free disk space is always checked)",
        minimum=1,
        optional=True,
    )
    save_weights: bool = setting(
        False, bool, "also save θ at every step, so `python -m lca allocate` can recompute the LCA"
    )
    out: str | None = setting(
        None,
        str,
        "run file to write (default runs/<dataset>-<model>-<time>.h5)",
        optional=True,
        from_text=True,
    )
    threads: int | str = setting(
        "auto",
        int,
        "CPU threads (auto: the cores available, shared by the app's running jobs)",
        minimum=1,
        keywords=("auto",),
        from_text=True,
        label="CPU threads",
        widget={"section": "LCA measurement"},
    )
    error_every: int = setting(
        0,
        int,
        "every K-th step also estimate the per-parameter error (1- vs 2-panel Simpson, "
        "2 more gradients on those steps; 0 = off)",
        minimum=0,
        label="Per-weight error estimate every (steps, 0 = off)",
        widget={"section": "LCA measurement"},
    )
    measure_val: bool = setting(
        False,
        bool,
        "also measure LCA of the held-out loss (the test split, capped like the measurement "
        "set) along the same path: which weights helped the held-out loss; doubles LCA's cost",
        label="Held-out LCA",
        widget={"section": "LCA measurement"},
    )
    adapt_on: str = setting(
        "sum",
        str,
        "rk4-adaptive / rk4-paper refine a step until: sum = |ΔL − ΣA| ≤ tolerance; "
        "parameters = that and the per-weight difference of the last two refinements "
        "‖A_coarse − A_fine‖/‖A_fine‖ ≤ param tolerance",
        choices=ADAPT_ON,
        label="Refine on",
        widget={"section": "LCA measurement", "when": ("method", ("rk4-adaptive", "rk4-paper"))},
    )
    param_tolerance: float = setting(
        1e-2,
        float,
        "adapt on parameters: relative per-weight difference allowed per step",
        above=0,
        label="Per-weight tolerance",
        widget={
            "section": "LCA measurement",
            "format": "%.2e",
            "when": ("method", ("rk4-adaptive", "rk4-paper")),
        },
    )
    pack: int = setting(
        1,
        int,
        "train N models of this config with seeds seed, seed+1, … in one process, in "
        "lock-step, each with its own LCA and run file OUT-0.h5 … OUT-(N-1).h5",
        minimum=1,
        label="Models trained together (pack)",
        widget={"section": "Optimizer"},
    )
    pack_index: int | None = setting(
        None,
        int,
        "this model's place in its pack (set by --pack; recorded in each file)",
        minimum=0,
        optional=True,
    )
    stanza: int = setting(
        0,
        int,
        "Stanza (layer separation): train the conv layers on K ranks (data parallel over data "
        "shards) and the fully connected layers on rank K; K+1 processes, under torchrun or "
        "spawned locally (0 = off)",
        minimum=0,
        label="Stanza: conv ranks K (0 = off)",
        widget={"section": "Distributed training"},
    )
    staleness: int = setting(
        0,
        int,
        "Stanza only: the activation gradients returned to the conv ranks use FC weights this "
        "many steps old (0 = exactly data parallel)",
        minimum=0,
        label="Stanza: staleness τ (steps)",
        widget={"section": "Distributed training"},
    )
    data_parallel: int = setting(
        0,
        int,
        "plain data parallel on K ranks (all-reduce of every gradient), the baseline Stanza is "
        "compared with; under torchrun or spawned locally (0 = off)",
        minimum=0,
        label="Data parallel: ranks K (0 = off)",
        widget={"section": "Distributed training"},
    )

    def __post_init__(self) -> None:
        self.validate()

    # -- validation --------------------------------------------------------------------------
    @classmethod
    def specs(cls) -> dict[str, Spec]:
        """Every field's Spec, in field order (the CLI and the form are built from these)."""
        return {f.name: f.metadata["spec"] for f in dataclasses.fields(cls)}

    def validate(self) -> RunConfig:
        for name, spec in self.specs().items():
            if name != "techniques":
                spec.parse(getattr(self, name), name, ConfigError)
        self._check_techniques()
        if self.stanza or self.data_parallel or self.staleness:  # lca/stanza.py's own rules
            from .stanza import check

            try:
                check(self)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        return self

    def _check_techniques(self) -> None:
        if not isinstance(self.techniques, list):
            raise ConfigError(f"techniques must be a list of tables, not {self.techniques!r}.")
        for i, spec in enumerate(self.techniques):
            if not isinstance(spec, dict) or "name" not in spec:
                raise ConfigError(
                    f'techniques[{i}] must be a table with a name, e.g. {{name = "wus"}}, '
                    f"not {spec!r}."
                )
            try:
                techniques.validate(spec)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        try:  # every pair of techniques composes or is refused before training
            techniques.validate_all(self.techniques)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        values = dict(values)
        if "technique" in values:  # TOML's natural [[technique]] spelling
            values.setdefault("techniques", [])
            values["techniques"] = list(values["techniques"]) + list(values.pop("technique"))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"Unknown config field {unknown[0]!r}; allowed fields: {', '.join(sorted(known))}."
            )
        try:
            return cls(**values)
        except TypeError as e:
            raise ConfigError(f"Bad config: {e}.") from None

    @classmethod
    def from_toml(cls, path: str | Path) -> RunConfig:
        p = Path(path)
        try:
            values = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"Config file {p} does not exist; check the path given to --config."
            ) from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"Config file {p} is not valid TOML: {e}.") from None
        return cls.from_dict(values)

    @classmethod
    def from_file(cls, path: str | Path) -> RunConfig:
        """A config file given to --config: JSON when its name ends in .json (what the app's
        jobs write: ``to_json``), else TOML (what people write)."""
        p = Path(path)
        if p.suffix.lower() != ".json":
            return cls.from_toml(p)
        try:
            return cls.from_json(p.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"Config file {p} does not exist; check the path given to --config."
            ) from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"Config file {p} is not valid JSON: {e}.") from None

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes`` applied (and validated); None values are ignored."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return RunConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return cls.from_dict(json.loads(text))
