"""The run configuration: one validated dataclass behind the CLI, TOML files and the app.

A run file stores its config as JSON, so a run can always be repeated or compared. Every bad
value is refused with one sentence naming the field, the value and what is allowed, before any
work starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from .integrate import METHODS

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "linear")
RECORD_MODES = ("full", "units", "layers")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "float64")
FLOAT32_MAX = 3.4e38


class ConfigError(ValueError):
    """A config value is not allowed; the message names the field, the value and the choices."""


@dataclass
class RunConfig:
    """Everything that defines a run (the file's ``config`` attribute is this, as JSON)."""

    dataset: str = "digits"
    dataset_options: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    subset: int | None = None
    model: str = "mlp"
    model_options: dict[str, Any] = field(default_factory=dict)
    optimizer: str = "momentum"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    batch_size: int = 64
    steps: int = 200
    seed: int = 0
    measure_size: int | None = 2000  # cap on the measurement set (None: whole training split)
    measure_batch: int = 2048  # chunk size of the measurement set
    method: str = "rk4"
    tolerance: float = 1e-3
    measure_dtype: str = "float32"
    techniques: list[dict[str, Any]] = field(default_factory=list)
    record: str = "full"
    device: str = "auto"
    eval_every: int = 20
    max_bytes: int | None = None
    save_weights: bool = False
    out: str | None = None
    threads: int | str = "auto"  # torch CPU threads; auto: the cores shared by running app jobs
    error_every: int = 0  # every k-th step: per-parameter error estimate (1- vs 2-panel); 0 off

    def __post_init__(self) -> None:
        self.validate()

    # -- validation --------------------------------------------------------------------------
    def validate(self) -> RunConfig:
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("record", self.record, RECORD_MODES)
        _choice("device", self.device, DEVICES)
        _choice("method", self.method, METHODS)
        _choice("measure_dtype", self.measure_dtype, DTYPES)
        _positive_int("steps", self.steps)
        _positive_int("batch_size", self.batch_size)
        _positive_int("measure_batch", self.measure_batch)
        _positive_int("eval_every", self.eval_every)
        if self.subset is not None:
            _positive_int("subset", self.subset)
        if self.measure_size is not None:
            _positive_int("measure_size", self.measure_size)
        if self.max_bytes is not None:
            _positive_int("max_bytes", self.max_bytes)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, not {self.seed!r}.")
        _positive_float("lr", self.lr)
        if self.lr > FLOAT32_MAX:
            raise ConfigError(f"lr must be at most {FLOAT32_MAX:.1e} (float32), not {self.lr!r}.")
        _positive_float("tolerance", self.tolerance)
        if self.threads != "auto" and (not isinstance(self.threads, int)
                                       or isinstance(self.threads, bool) or self.threads < 1):
            raise ConfigError(f"threads must be auto or a positive integer, not {self.threads!r}.")
        if not isinstance(self.error_every, int) or isinstance(self.error_every, bool) or (
                self.error_every < 0):
            raise ConfigError(
                f"error_every must be 0 (off) or a positive integer, not {self.error_every!r}."
            )
        _unit_interval("momentum", self.momentum)
        _non_negative_float("weight_decay", self.weight_decay)
        for key in ("dataset_options", "model_options"):
            if not isinstance(getattr(self, key), dict):
                raise ConfigError(
                    f"{key} must be a table of key = value, not {getattr(self, key)!r}."
                )
        self._check_names()
        return self

    def _check_names(self) -> None:
        import data

        from . import models

        _choice("dataset", self.dataset, tuple(data.names()))
        _choice("model", self.model, tuple(models.names()))
        if not isinstance(self.techniques, list):
            raise ConfigError(f"techniques must be a list of tables, not {self.techniques!r}.")
        import techniques

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


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(
            f"{name} = {value!r} is not allowed; choose one of: {', '.join(allowed)}."
        )


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, not {value!r}.")


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, not {value!r}.")
    return float(value)


def _positive_float(name: str, value: Any) -> None:
    if _number(name, value) <= 0:
        raise ConfigError(f"{name} must be greater than 0, not {value!r}.")


def _non_negative_float(name: str, value: Any) -> None:
    if _number(name, value) < 0:
        raise ConfigError(f"{name} must be 0 or more, not {value!r}.")


def _unit_interval(name: str, value: Any) -> None:
    v = _number(name, value)
    if not 0 <= v < 1:
        raise ConfigError(f"{name} must be in [0, 1), not {value!r}.")
