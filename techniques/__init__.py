"""Efficiency techniques, each a small plugin (see ``techniques/base.py``), found by name.

techniques.names()                       registered names
techniques.parse_spec("prune-magnitude:sparsity=0.5,start=20")  -> {"name": ..., ...}
techniques.create({"name": "wus", "window": 5})                  -> Technique
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import (
    Context,
    Declarations,
    LCAResults,
    MeasuredSegment,
    Option,
    RunFileWriter,
    Technique,
    TechniqueError,
    is_measuring,
    measuring,
    real_forward,
    while_measuring,
)

__all__ = [
    "Context",
    "Declarations",
    "LCAResults",
    "MeasuredSegment",
    "Option",
    "RunFileWriter",
    "Technique",
    "TechniqueError",
    "create",
    "describe",
    "get",
    "is_measuring",
    "measuring",
    "names",
    "parse_spec",
    "real_forward",
    "validate",
    "while_measuring",
]

# Modules that define techniques; each registers its classes with @register on import.
_MODULES = ("skip", "prune", "freeze", "precision", "quantize", "regularize",
            "fp8", "fixedpoint", "loss_scaling", "bnn", "conntra")
_REGISTRY: dict[str, type[Technique]] = {}
_loaded = False


def register(cls: type[Technique]) -> type[Technique]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _MODULES:
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{mod}":
                raise


def names() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def get(name: str) -> type[Technique]:
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise TechniqueError(
            f"Unknown technique {name!r}; choose one of: {', '.join(names()) or 'none'}."
        ) from None


def describe(name: str) -> str:
    cls = get(name)
    return cls.description + (
        " (reconstructed: the paper's exact criterion is not public)" if cls.reconstructed else ""
    )


def create(spec: dict[str, Any]) -> Technique:
    spec = dict(spec)
    name = spec.pop("name", None)
    if not isinstance(name, str):
        raise TechniqueError(f"A technique needs a name, got {name!r}.")
    return get(name)(**spec)


def validate(spec: dict[str, Any]) -> None:
    create(spec)


def parse_spec(text: str) -> dict[str, Any]:
    """``NAME[:key=value,...]`` (the CLI's --technique) to a spec dict; values stay strings."""
    name, _, rest = text.strip().partition(":")
    spec: dict[str, Any] = {"name": name.strip()}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise TechniqueError(
                f"Technique option {item!r} in {text!r} must look like key=value, "
                "e.g. prune-magnitude:sparsity=0.5,start=20."
            )
        spec[key.strip().replace("-", "_")] = value.strip()
    validate(spec)
    return spec
