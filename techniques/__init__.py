"""Efficiency techniques, each a small plugin (see ``techniques/base.py``), found by name.

techniques.names()                       registered names
techniques.parse_spec("prune-magnitude:sparsity=0.5,start=20")  -> {"name": ..., ...}
techniques.create({"name": "wus", "window": 5})                  -> Technique
techniques.validate_all([spec, spec, ...])  before training: each spec, then every pair
                                            composes or is refused in one sentence
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
    "validate_all",
    "while_measuring",
    "conflict",
    "ROLES",
]

# Modules that define techniques; each registers its classes with @register on import.
_MODULES = (
    "skip",
    "prune",
    "freeze",
    "precision",
    "quantize",
    "regularize",
    "fp8",
    "fixedpoint",
    "loss_scaling",
    "bnn",
    "conntra",
    "feedback",
    "symmetry",
)
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


# What each role means, worded to finish "Techniques 'a' and 'b' cannot be combined: both ...".
# A technique adopts a role with one line, e.g. ``roles = ("weight-format",)``.
ROLES: dict[str, str] = {
    "weight-format": "decide the number format of the weights the forward pass uses "
    "(weight quantizers)",
    "backward": "run the backward pass themselves (loss scaling, feedback alignment)",
    "arithmetic": "set the arithmetic precision of the forward pass",
    "feedback": "replace the backpropagated error of the hidden layers",
    "update-skipping": "decide on their own schedule which weight updates to skip",
}


# Hooks whose answer is taken from the first technique that says True: two overriding them
# would silently lose the second's behaviour, so such a pair is refused.
_EXCLUSIVE_HOOKS = {
    "backward": "run the backward pass themselves",
    "optimizer_step": "step the optimizer themselves",
}


def _overrides(cls: type[Technique], hook: str) -> bool:
    return getattr(cls, hook) is not getattr(Technique, hook)


def conflict(a: type[Technique], b: type[Technique]) -> str | None:
    """Why techniques ``a`` and ``b`` cannot run together (one sentence), or None."""
    if a.name == b.name:
        return (
            f"Technique {a.name!r} is listed twice; both would write /techniques/{a.name}/, "
            "so list it once."
        )
    why = a.conflicts.get(b.name) or b.conflicts.get(a.name)
    if why:
        return f"Techniques {a.name!r} and {b.name!r} cannot be combined: {why}; keep one."
    for hook, what in _EXCLUSIVE_HOOKS.items():  # a safety net for techniques without roles:
        if _overrides(a, hook) and _overrides(b, hook):  # only the first one's hook would run
            return (
                f"Techniques {a.name!r} and {b.name!r} cannot be combined: both {what}; keep one."
            )
    shared = [r for r in a.roles if r in b.roles]
    if shared:
        return (
            f"Techniques {a.name!r} and {b.name!r} cannot be combined: both "
            f"{ROLES.get(shared[0], shared[0])}; keep one."
        )
    return None


def validate_all(specs: list[dict[str, Any]]) -> None:
    """Every spec is valid and every pair composes; else one sentence naming the conflict."""
    classes = []
    for spec in specs:
        validate(spec)
        classes.append(get(spec["name"]))
    for i, a in enumerate(classes):
        for b in classes[i + 1 :]:
            why = conflict(a, b)
            if why:
                raise TechniqueError(why)


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
